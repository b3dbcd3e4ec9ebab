"""fluidlite's own thread pools, chosen without touching any other library's.

fluidlite's parallel kernels (`prange`, arrays of PARALLEL_MIN = 2^23 elements or more) run on
Numba's threading layer. Numba's default pick, OpenMP, loads a second libgomp whose idle threads
spin; the old fix (setting OMP_WAIT_POLICY=PASSIVE in `os.environ` at import) changed every OpenMP
library loaded afterwards too, torch's included (its steps got 2-7x slower), and came too late when
torch was imported first. Instead, the first Executor asks Numba for its `workqueue` layer, whose
idle threads sleep on a condition variable: fluidlite then never loads an OpenMP runtime of its own,
whatever was imported before it. A layer the user chose (NUMBA_THREADING_LAYER, or Numba already
running parallel code) is left alone. Nothing here writes environment variables.

Numba's workqueue must not launch parallel kernels from two threads at once (it aborts the
process), so while it is the layer, plans run one at a time per process (`RunGuard`).

BLAS calls inside kernels go to one OpenBLAS (kernels/blas.py: NumPy's copy, else SciPy's), whose
idle threads spin. When another job holds a core, a two-thread product waits for a descheduled
partner: an LSTM step burnt 830 ms of CPU for 86 ms of work, and a (2048, 128) x (128, 128) product
took 8 ms instead of 0.7 ms with one other busy process on 2 cores. So while a plan runs, that
OpenBLAS (found by threadpoolctl from the directory it was loaded from) and Numba's thread count for
the calling thread (the prange kernels wait for their partner the same way) are limited to the cores
other processes leave free, and restored afterwards. What other processes use is read at most once a
second from /proc's CPU time counters: all CPUs' busy time minus this process's own, averaged over
the time since the last read (`OtherLoad`). Not the load average, which counts fluidlite's own
threads (an idle 2-core MLP run throttled itself to one thread); not a count of runnable threads at
one instant, which a process running for a moment (a shell's polling loop) turned into a phantom job
often enough to throttle some runs to one thread. Other pools (torch's, a second OpenBLAS copy) are
never touched. FLUIDLITE_FIXED_THREADS=1 turns the limit off: a product's last bits can depend on
its thread count, so only fixed counts repeat bit for bit.

Every product of a plan goes to that one OpenBLAS: calling NumPy's (np.matmul) for `mul` while the
kernels used SciPy's made an LSTM step 3x slower, as each pool's worker spins for a while after a
call and starves the other pool and Numba's workers.
"""
from __future__ import annotations

import os
import threading
import time

import numba as _numba

_chosen = None
_lock = threading.RLock()


def choose_layer() -> str:
    """Pick Numba's threading layer for fluidlite once per process; returns the layer name requested."""
    global _chosen
    if _chosen is None:
        from numba import config
        from numba.np.ufunc import parallel

        if parallel._is_initialized:
            _chosen = parallel.threading_layer()
        elif os.environ.get("NUMBA_THREADING_LAYER") or str(config.THREADING_LAYER).lower() != "default":
            _chosen = str(config.THREADING_LAYER).lower()
        else:
            config.THREADING_LAYER = "workqueue"
            parallel._launch_threads()  # fix the choice now: a later config reload cannot undo it
            _chosen = parallel.threading_layer()
    return _chosen


def _kernel_blas() -> list:
    """threadpoolctl controllers of the BLAS library the kernels call (kernels/blas.py: NumPy's or SciPy's
    copy, told apart by the directory it was loaded from; with FLUIDLITE_BLAS=onednn also oneDNN's OpenMP
    runtime); empty without threadpoolctl."""
    import sys

    from .kernels import blas

    first = "threadpoolctl" not in sys.modules and "KMP_DUPLICATE_LIB_OK" not in os.environ
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    finally:
        if first:  # threadpoolctl's import sets KMP_DUPLICATE_LIB_OK for the whole process: not through us
            os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    package = __import__(blas.BACKEND)
    root = os.path.dirname(os.path.dirname(os.path.abspath(package.__file__)))
    mine = tuple(os.path.join(root, blas.BACKEND + tail) for tail in ("", ".libs", os.sep + ".dylibs"))
    # FLUIDLITE_BLAS=onednn: oneDNN runs on the system's libgomp; wheels bundle theirs renamed (libgomp-<hash>)
    return [lib for lib in ThreadpoolController().lib_controllers
            if (lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(mine))
            or (blas.FLOAT32 == "onednn" and lib.user_api == "openmp"
                and os.path.basename(lib.filepath).startswith("libgomp.so"))]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_ticks():
    """(clock ticks every CPU spent busy, ticks this process spent) so far, from /proc."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()  # from field 3 (state) on
    return sum(ticks) - ticks[3] - ticks[4], int(fields[11]) + int(fields[12])  # utime + stime


class OtherLoad:
    """Cores that other processes kept busy, on average, since the previous call (0.0 on the first call
    and where /proc is missing). An average: a process that runs for a moment barely counts, a
    steady job counts fully."""

    def __init__(self, read=None, clock=time.monotonic):
        self._read, self._clock = read or _cpu_ticks, clock
        self._last = None

    def __call__(self) -> float:
        try:
            now = (self._clock(), *self._read())
        except (OSError, ValueError, IndexError):
            return 0.0
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return 0.0
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / _TICKS_PER_S / (now[0] - last[0]))


_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_cores(others: float) -> int:
    """The cores this process can use without a partner thread waiting for a descheduled one: the
    cores minus those other processes keep busy (`others`, rounded: half a core counts)."""
    return max(1, _cores() - int(others + 0.5))


class RunGuard:
    """Held while a plan runs: serialises plans under workqueue, and limits the kernels' BLAS and Numba's
    threads to the free cores while the machine is oversubscribed."""

    RECHECK_S = 1.0

    def __init__(self):
        self._lock = _lock if _chosen == "workqueue" else None
        self._libs = None
        self._next_check = 0.0
        self._limit = 0  # threads allowed while the machine is busy; 0: no limit
        self._saved = ()
        self._numba_threads = 1
        self._others = OtherLoad()

    def _check(self, now):
        self._next_check = now + self.RECHECK_S
        if self._libs is None:
            self._libs = _kernel_blas()
        free = free_cores(self._others())
        # A BLAS product's bits can follow its thread count ((128, 784) x (784, 1024) float32 does in
        # OpenBLAS): FLUIDLITE_FIXED_THREADS=1 keeps the counts, so runs repeat bit for bit.
        fixed = os.environ.get("FLUIDLITE_FIXED_THREADS", "") not in ("", "0")
        self._limit = free if free < _cores() and not fixed else 0

    def __enter__(self):
        if self._lock is not None:
            self._lock.acquire()
        now = time.monotonic()
        if now >= self._next_check:
            self._check(now)
        if self._limit:
            self._saved = [(lib, lib.get_num_threads()) for lib in self._libs]
            for lib, n in self._saved:
                if n > self._limit:
                    lib.set_num_threads(self._limit)
            self._numba_threads = _numba.get_num_threads()
            if self._numba_threads > self._limit:
                _numba.set_num_threads(self._limit)
        return self

    def __exit__(self, *exc):
        if self._limit:
            for lib, n in self._saved:
                if n > self._limit:
                    lib.set_num_threads(n)
            self._saved = ()
            if self._numba_threads > self._limit:
                _numba.set_num_threads(self._numba_threads)
        if self._lock is not None:
            self._lock.release()
        return False
