"""A dispatcher for Numba's parallel loops while fluidlite plans run: the caller and resident workers
that stay awake between loops.

Numba's TBB layer builds a task arena for every parallel loop, and TBB's workers fall asleep within
about 20 us of idling. An LSTM step runs a hundred two-thread products of about 60 us each, with a
one-thread cell between them, and each cost about 14 us more on TBB than the same work on one thread
(a loop with an empty body took 2.6 us back to back and 21 us after a 20 us pause; docs/experiments.md).

Here `parallel_for` posts the loop to a control block that the workers watch: a loop of n threads is n
shares, contiguous runs of Numba's chunks. The caller runs share 0, and the first n - 1 workers claim
the others; the caller then claims whatever no worker took yet, so a worker that is slow to come
(asleep, descheduled) never stalls a loop. A worker spins (`pause`) for about SPIN_CYCLES after its
last loop, then sleeps on a futex until the next one. The dispatcher is installed as Numba's
`numba_parallel_for` and `get_thread_id` symbols, so cached kernels link to it as they load.
It takes a loop only while a plan has products split over the pool (the C global of
fluidlite/_blas.py), only when the calling thread is not already running one of its loops, and only
while the pool is alive. Otherwise the loop goes to TBB as before: code of other libraries outside
plans, a second thread's plan while the first holds the pool, a forked child. A nested loop from
inside one of its loops runs inline on that thread.

Thread ids for parfor reductions are 0 for the caller and 1..n-1 for the workers, as under TBB.
Linux x86-64 only (futex, `pause`); elsewhere TBB keeps every loop.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
import time

from llvmlite import binding, ir
import numba
from numba import cfunc, njit, types
from numba.extending import intrinsic

CTRL_SYMBOL = "fluidlite_pool_ctrl"
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_P8 = ir.IntType(8).as_pointer()
LINE = 8  # int64 slots per 64-byte line: slots written by different threads never share a line
MAX_WORKERS = 15
MAX_ARRAYS = 64  # a loop over more arrays goes to TBB

# control block slots (int64)
GEN = 0  # loop generation: the caller bumps it to post a loop (its low 32 bits are the futex word)
SLEEPING = 1 * LINE  # a worker may be asleep on GEN
BUSY = 2 * LINE  # 1 while a caller holds the pool
OWNER = 3 * LINE  # pthread_self of that caller
JOB = 4 * LINE  # fn, args, dims, steps, data, inner_ndim, array_count
GEN_MASK = (1 << 46) - 1  # generations wrap here: NEXT holds one shifted by 16 bits
ALIVE = 5 * LINE  # 1 while the workers run (0 in a forked child)
LOOPS = ALIVE + 1  # loops the pool ran (tests)
WORKERS = ALIVE + 2
SPIN = ALIVE + 3
TBB_FOR = ALIVE + 4
TBB_TID = ALIVE + 5
SPLIT = ALIVE + 6  # address of fluidlite/_blas.py's split global
NEXT = 6 * LINE  # the posted loop: generation << 16 | threads << 8 | shares claimed (claims of another loop fail)
FINISHED = 7 * LINE  # shares of the posted loop finished
HELD = 8 * LINE  # HELD + LINE * w: 1 keeps worker w out of loops (tests: a worker that never comes)
TID = HELD + MAX_WORKERS * LINE  # TID + LINE * w: pthread_self of worker w
SCRATCH = TID + MAX_WORKERS * LINE  # SCRATCH + SCRATCH_SLOTS * t: thread t's shifted pointers and counts
SCRATCH_SLOTS = 2 * MAX_ARRAYS + 16
SLOTS = SCRATCH + (MAX_WORKERS + 1) * SCRATCH_SLOTS

SPIN_CYCLES = 2_000_000  # about 0.5-1 ms: longer than the gaps between a step's parallel loops

# the control block, registered before the functions below compile (their code links to it)
_raw = (ctypes.c_int64 * (SLOTS + LINE))()
_ctrl = (ctypes.c_int64 * SLOTS).from_address((ctypes.addressof(_raw) + 63) // 64 * 64)
binding.add_symbol(CTRL_SYMBOL, ctypes.addressof(_ctrl))


def _ctrl_global(builder):
    gv = builder.module.globals.get(CTRL_SYMBOL)
    if gv is None:
        gv = ir.GlobalVariable(builder.module, _I64, CTRL_SYMBOL)  # external: registered above
    return gv


def _slot(builder, i):
    return builder.gep(_ctrl_global(builder), [i])


@intrinsic
def _ld(typingctx, i):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(builder, args[0]), "seq_cst", 8)
    return types.int64(types.int64), codegen


@intrinsic
def _st(typingctx, i, v):
    def codegen(context, builder, sig, args):
        builder.store_atomic(args[1], _slot(builder, args[0]), "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@intrinsic
def _cas(typingctx, i, old, new):
    def codegen(context, builder, sig, args):
        pair = builder.cmpxchg(_slot(builder, args[0]), args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(types.int64, types.int64, types.int64), codegen


@intrinsic
def _add(typingctx, i, v):
    """Atomically adds v to slot i."""
    def codegen(context, builder, sig, args):
        builder.atomic_rmw("add", _slot(builder, args[0]), args[1], "seq_cst")
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@intrinsic
def _addr(typingctx, i):
    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_slot(builder, args[0]), _I64)
    return types.int64(types.int64), codegen


@intrinsic
def _peek(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.load(builder.inttoptr(args[0], _I64.as_pointer()))
    return types.int64(types.int64), codegen


@intrinsic
def _peek32(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.sext(builder.load_atomic(builder.inttoptr(args[0], _I32.as_pointer()), "seq_cst", 4), _I64)
    return types.int64(types.int64), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _cycles(typingctx):
    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(_I64, []))
        return builder.call(fn, [])
    return types.int64(), codegen


def _extern(builder, name, ret, params, var_arg=False):
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, params, var_arg=var_arg), name)
    return fn


@intrinsic
def _self(typingctx):
    def codegen(context, builder, sig, args):
        return builder.call(_extern(builder, "pthread_self", _I64, []), [])
    return types.int64(), codegen


@intrinsic
def _futex(typingctx, addr, op, val):
    """syscall(SYS_futex, addr, op, val, NULL): op 128 waits while *addr == val, 129 wakes val threads."""
    def codegen(context, builder, sig, args):
        fn = _extern(builder, "syscall", _I64, [_I64], var_arg=True)
        return builder.call(fn, [ir.Constant(_I64, 202), *args, ir.Constant(_I64, 0)])
    return types.int64(types.int64, types.int64, types.int64), codegen


@intrinsic
def _call_loop(typingctx, fn, args, dims, steps, data):
    """fn(args, dims, steps, data): a Numba gufunc wrapper."""
    def codegen(context, builder, sig, a):
        fnty = ir.FunctionType(ir.VoidType(), [_P8] * 4)
        f = builder.inttoptr(a[0], fnty.as_pointer())
        builder.call(f, [builder.inttoptr(x, _P8) for x in a[1:]])
        return context.get_dummy_value()
    return types.void(*[types.int64] * 5), codegen


@intrinsic
def _call_tbb_for(typingctx, fn, a, b, c, d, e, f, g, h):
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [_P8] * 5 + [_I64] * 3)
        target = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(target, [builder.inttoptr(x, _P8) for x in args[1:6]] + list(args[6:]))
        return context.get_dummy_value()
    return types.void(*[types.int64] * 9), codegen


@intrinsic
def _call_tid(typingctx, fn):
    def codegen(context, builder, sig, args):
        f = builder.inttoptr(args[0], ir.FunctionType(_I32, []).as_pointer())
        return builder.call(f, [])
    return types.int32(types.int64), codegen


@njit(cache=True, inline="always")
def _run_share(t, n):
    """Run thread t's share of the posted loop (of n threads): its contiguous run of the loop's range."""
    fn, args, dims, steps, data = _ld(JOB), _ld(JOB + 1), _ld(JOB + 2), _ld(JOB + 3), _ld(JOB + 4)
    inner, arrays = _ld(JOB + 5), _ld(JOB + 6)
    count = _peek(dims)
    lo, hi = count * t // n, count * (t + 1) // n
    if lo >= hi:
        return
    base = SCRATCH + SCRATCH_SLOTS * t
    for j in range(arrays):
        _st(base + j, _peek(args + 8 * j) + _peek(steps + 8 * j) * lo)
    _st(base + MAX_ARRAYS, hi - lo)
    for j in range(1, inner + 1):
        _st(base + MAX_ARRAYS + j, _peek(dims + 8 * j))
    _call_loop(fn, _addr(base), _addr(base + MAX_ARRAYS), steps, data)


@njit(cache=True, inline="always")
def _serve(gen):
    """Claim and run shares of loop `gen` while any is unclaimed. The loop's thread count comes from the
    same word as the claim: the job slots may already hold the next loop's when a claim fails."""
    v = _ld(NEXT)
    while v >> 16 == gen and v & 0xFF < (v >> 8) & 0xFF:
        if _cas(NEXT, v, v + 1):
            _run_share(v & 0xFF, (v >> 8) & 0xFF)
            _add(FINISHED, 1)
        v = _ld(NEXT)


@cfunc(types.void(types.int64), cache=True)
def _worker(w):
    """Worker w's life: wait for a loop (spinning, then asleep), claim and run shares of it; until the
    process ends."""
    _st(TID + LINE * w, _self())
    seen = _ld(GEN)
    while True:
        start = _cycles()
        gen = _ld(GEN)
        while gen == seen:
            if _cycles() - start > _ld(SPIN):
                _st(SLEEPING, 1)
                if _ld(GEN) == seen:  # after announcing the sleep: a loop posted since is seen here
                    _futex(_addr(GEN), 128, seen & 0xFFFFFFFF)
                start = _cycles()
            else:
                _pause()
            gen = _ld(GEN)
        seen = gen
        # only the first n - 1 workers of a loop of n threads: reductions index their partial results by
        # thread id, up to the loop's thread count. A worker that woke late, after its loop, claims nothing.
        posted = _ld(NEXT)
        if posted >> 16 == gen and w + 1 < (posted >> 8) & 0xFF and _ld(HELD + LINE * w) == 0:
            _serve(gen)


@cfunc(types.void(*[types.int64] * 8), cache=True)
def _parallel_for(fn, args, dims, steps, data, inner, arrays, threads):
    me = _self()
    split = _peek32(_ld(SPLIT))
    if _ld(ALIVE) == 1 and split > 1 and arrays <= MAX_ARRAYS and inner < 16:
        if _ld(BUSY) == 1 and _ld(OWNER) == me:
            _call_loop(fn, args, dims, steps, data)  # nested in this caller's loop: inline, id 0 stays
            return
        for w in range(_ld(WORKERS)):
            if _ld(TID + LINE * w) == me:
                _call_loop(fn, args, dims, steps, data)  # nested in a worker's share: inline, its id stays
                return
        if _cas(BUSY, 0, 1):
            _st(OWNER, me)
            _st(LOOPS, _ld(LOOPS) + 1)
            n = min(threads, _ld(WORKERS) + 1)
            if n <= 1 or _peek(dims) <= 1:
                _call_loop(fn, args, dims, steps, data)
            else:
                # shares are claimed, not assigned: a worker that is slow to come (descheduled, asleep)
                # leaves its share to the caller instead of stalling the loop
                for k, v in enumerate((fn, args, dims, steps, data, inner, arrays)):
                    _st(JOB + k, v)
                gen = (_ld(GEN) + 1) & GEN_MASK
                _st(FINISHED, 0)
                _st(NEXT, gen << 16 | n << 8 | 1)  # share 0 is the caller's: each thread keeps its band's data in cache
                _st(GEN, gen)
                if _ld(SLEEPING) == 1:
                    _st(SLEEPING, 0)
                    _futex(_addr(GEN), 129, 1 << 30)
                _run_share(0, n)
                _add(FINISHED, 1)
                _serve(gen)
                while _ld(FINISHED) != n:
                    _pause()
            _st(OWNER, 0)
            _st(BUSY, 0)
            return
    _call_tbb_for(_ld(TBB_FOR), fn, args, dims, steps, data, inner, arrays, threads)


@cfunc(types.int32(), cache=True)
def _get_thread_id():
    if _ld(ALIVE) == 1:
        me = _self()
        for w in range(_ld(WORKERS)):
            if _ld(TID + LINE * w) == me:
                return w + 1
        if _ld(BUSY) == 1 and _ld(OWNER) == me:
            return 0
    return _call_tid(_ld(TBB_TID))


_threads = []


def install() -> bool:
    """Start the workers and route Numba's parallel loops through the dispatcher (once, after Numba's
    TBB layer started); False where it does not apply (another layer, OS or CPU; one thread)."""
    if _ctrl[ALIVE] or _threads:
        return bool(_ctrl[ALIVE])
    from numba.np.ufunc import parallel

    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"
            and parallel._is_initialized and parallel.threading_layer() == "tbb"):
        return False
    workers = min(MAX_WORKERS, numba.config.NUMBA_NUM_THREADS - 1)
    if workers < 1:
        return False
    from numba.np.ufunc import tbbpool

    from . import _blas

    ctrl = _ctrl
    ctrl[WORKERS], ctrl[SPIN] = workers, SPIN_CYCLES
    ctrl[TBB_FOR], ctrl[TBB_TID] = tbbpool.parallel_for, tbbpool.get_thread_id
    ctrl[SPLIT] = ctypes.addressof(_blas._split)
    serve = ctypes.CFUNCTYPE(None, ctypes.c_int64)(_worker.address)  # ctypes releases the GIL
    _keep.append(serve)
    for w in range(workers):
        t = threading.Thread(target=serve, args=(w,), name=f"fluidlite-pool-{w + 1}", daemon=True)
        t.start()
        _threads.append(t)
    while any(ctrl[TID + LINE * w] == 0 for w in range(workers)):
        time.sleep(1e-4)
    ctrl[ALIVE] = 1
    binding.add_symbol("numba_parallel_for", _parallel_for.address)
    binding.add_symbol("get_thread_id", _get_thread_id.address)
    parallel._get_thread_id = ctypes.CFUNCTYPE(ctypes.c_int)(_get_thread_id.address)
    os.register_at_fork(after_in_child=_forked)
    return True


_keep = []


def _forked():
    """A forked child has no workers: every loop goes to TBB (which restarts its own threads)."""
    _ctrl[ALIVE] = 0
