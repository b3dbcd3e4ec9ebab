"""Non-temporal (streaming) stores, for kernels writing an output larger than the last-level cache.

A plain store first reads the destination's cache line (read for ownership): writing a separate
400 MB output moves 1.2 GB, not 0.8. A streaming store writes a whole 64-byte line straight to
memory, without that read and without evicting the cache. For small outputs it is slower (the
data is not in the cache afterwards), so callers use it above a share of the cache only
(fluidlite/_memory.py's stream_min_bytes).

The pattern (kernels/clip_stream.py): `line_head(out)` plain elements up to the first 64-byte
boundary, then whole lines, computed in registers (`clip_line`) or into a small L1-resident buffer
written out by `stream_line`, then the tail plain; `sfence()` before another thread may read the
output (x86 does not order streaming stores with other stores). The lines go out a few at a time from
PAGES pages in turn, not one page after the other: on the development machine a streaming copy of
400 MB over both threads took 24 ms in order and 19 ms from four pages in turn (glibc's memcpy, which
interleaves pages the same way, 19 ms).
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LINE = 64  # bytes; the stores are aligned to this
PAGE = 4096  # bytes
PAGES = 4  # pages written in turn


@intrinsic
def stream_line(typingctx, dst, i, src, j):
    """dst[i:i+L] = src[j:j+L], L = 64 bytes of elements, with one aligned streaming store.
    dst's element i must start a 64-byte line; src may be unaligned. No bounds checks."""
    if dst.dtype != src.dtype or not isinstance(dst.dtype, types.Float):
        return None
    width = dst.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.make_array(sig.args[2])(context, builder, args[2])
        vec = ir.VectorType(context.get_value_type(sig.args[0].dtype), LINE // width).as_pointer()
        value = builder.load(builder.bitcast(builder.gep(s.data, [args[3]]), vec), align=width)
        store = builder.store(value, builder.bitcast(builder.gep(d.data, [args[1]]), vec), align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, types.intp, src, types.intp), codegen


@intrinsic
def clip_line(typingctx, dst, i, src, j, lo, hi):
    """dst[i:i+L] = src[j:j+L] clipped to [lo, hi] as clip._clip_el does (NaN stays NaN), L = 64 bytes of
    elements, with one aligned streaming store; in registers, no buffer. dst's element i must start a
    64-byte line; src may be unaligned. No bounds checks."""
    if dst.dtype != src.dtype or not isinstance(dst.dtype, types.Float):
        return None
    width = dst.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        lanes = LINE // width
        vty = ir.VectorType(context.get_value_type(sig.args[0].dtype), lanes)
        d = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.make_array(sig.args[2])(context, builder, args[2])
        value = builder.load(builder.bitcast(builder.gep(s.data, [args[3]]), vty.as_pointer()), align=width)
        undef, lane0 = ir.Constant(vty, ir.Undefined), ir.Constant(ir.IntType(32), 0)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        lo, hi = (builder.shuffle_vector(builder.insert_element(undef, b, lane0), undef, zeros) for b in args[4:6])
        value = builder.select(builder.fcmp_ordered("<", value, lo), lo, value)  # ordered: NaN compares false
        value = builder.select(builder.fcmp_ordered(">", value, hi), hi, value)
        store = builder.store(value, builder.bitcast(builder.gep(d.data, [args[1]]), vty.as_pointer()), align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, types.intp, src, types.intp, dst.dtype, dst.dtype), codegen


@intrinsic
def sfence(typingctx):
    """Orders this thread's streaming stores before its later stores (x86 sfence)."""
    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def line_elements(typingctx, a):
    """Elements of `a` per 64-byte line, as a compile-time constant (a.itemsize is read at run time,
    and a loop stepping by it does not unroll cleanly: measured 20% slower)."""
    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, LINE // (sig.args[0].dtype.bitwidth // 8))

    return types.intp(a), codegen


@njit(cache=True, error_model="numpy")
def line_head(out):
    """Elements of 1-D `out` before its first 64-byte boundary (all of them if it has none)."""
    address = out.ctypes.data
    if address % out.itemsize:  # no element ever starts a line
        return out.size
    return min(out.size, (-address) % LINE // out.itemsize)

