"""fluidlite's own thread pools, chosen without touching any other library's.

fluidlite's parallel kernels (`prange`, arrays of 2^19 elements or more) run on Numba's threading
layer. Numba's default pick, OpenMP, loads a second libgomp whose idle threads spin; the old fix
(setting OMP_WAIT_POLICY=PASSIVE in `os.environ` at import) changed every OpenMP library loaded
afterwards too, torch's included (its steps got 2-7x slower), and came too late when torch was
imported first. Instead, the first Executor asks Numba for its `workqueue` layer, whose idle threads
sleep on a condition variable: fluidlite then never loads an OpenMP runtime of its own, whatever was
imported before it. A layer the user chose (NUMBA_THREADING_LAYER, or Numba already running parallel
code) is left alone. Nothing here writes environment variables.

Numba's workqueue must not launch parallel kernels from two threads at once (it aborts the
process), so while it is the layer, plans run one at a time per process (`RunGuard`).

BLAS calls inside kernels (np.dot) go to SciPy's OpenBLAS, whose idle threads spin. When another
job holds a core, a two-thread product waits for a descheduled partner: an LSTM step burnt 830 ms of
CPU for 86 ms of work, and a (2048, 128) x (128, 128) product took 8 ms instead of 0.7 ms with one
other busy process on 2 cores. So while a plan runs, that OpenBLAS (found by threadpoolctl, only the
copy under SciPy's directory) and Numba's thread count for the calling thread (the prange kernels
wait for their partner the same way) are limited to the cores free right now (`free_cores`: the
cores minus the median of the last three samples of other processes' running threads; not the load
average, which counts fluidlite's own threads), and restored afterwards. The machine is sampled at
most once a second; other libraries' pools (NumPy's OpenBLAS, torch's) are never touched.
FLUIDLITE_FIXED_THREADS=1 turns the limit off: a product's last bits can depend on its thread
count, so only fixed counts repeat bit for bit.

Every product of a plan goes to that one OpenBLAS: calling NumPy's (np.matmul) for `mul` as well
made an LSTM step 3x slower, as each pool's worker spins for a while after a call and starves the
other pool and Numba's workers (benchmarks/gemm.py times the libraries one at a time).
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


def _scipy_blas() -> list:
    """threadpoolctl controllers of the BLAS libraries loaded from SciPy's directory (what np.dot in a
    Numba kernel calls); empty without threadpoolctl."""
    import sys

    first = "threadpoolctl" not in sys.modules and "KMP_DUPLICATE_LIB_OK" not in os.environ
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads it, as Numba does)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    finally:
        if first:  # threadpoolctl's import sets KMP_DUPLICATE_LIB_OK for the whole process: not through us
            os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    mine = (os.path.join(root, "scipy"), os.path.join(root, "scipy.libs"))
    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(mine)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _running_elsewhere() -> int:
    """/proc/stat's runnable threads minus this process's (its BLAS threads may still be spinning)."""
    with open("/proc/stat", "rb") as f:
        total = next(int(line.split()[1]) for line in f if line.startswith(b"procs_running"))
    own = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            own += f.read().rsplit(b")", 1)[1].split()[0] == b"R"
    return max(0, total - own)


def _others_running(samples: int = 3) -> int:
    """Threads of other processes runnable right now; 0 where /proc is missing. The least of a few
    back-to-back samples: this process's own threads change state between the two reads of one
    sample, which showed as a phantom other job, while a real one stays runnable."""
    try:
        return min(_running_elsewhere() for _ in range(samples))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


def free_cores(others: int | None = None) -> int:
    """Cores this process can use without a partner thread waiting for a descheduled one: the cores
    minus `others`, the other processes' running threads (default: a sample taken now).

    Not the load average: it counts this process's own threads, so a run alone on an idle machine
    kept it near the core count and throttled itself (a 2-core MLP run ran on one thread for most
    of 100 s); and it lags a minute behind another job's start or end."""
    return max(1, _cores() - (_others_running() if others is None else others))


def oversubscribed() -> bool:
    return free_cores() < _cores()


class RunGuard:
    """Held while a plan runs: serialises plans under workqueue, and limits SciPy's OpenBLAS and Numba's
    threads to the free cores while the machine is oversubscribed."""

    RECHECK_S = 1.0
    SAMPLES = 3

    def __init__(self):
        self._lock = _lock if _chosen == "workqueue" else None
        self._libs = None
        self._next_check = 0.0
        self._limit = 0  # threads allowed while the machine is busy; 0: no limit
        self._saved = ()
        self._numba_threads = 1
        self._recent = []  # the last samples of other processes' running threads

    def _check(self, now):
        self._next_check = now + self.RECHECK_S
        if self._libs is None:
            self._libs = _scipy_blas()
        # the median of the last three samples: a job seen in two of them counts (a busy one is in
        # all), a process that ran for a moment does not
        self._recent = (self._recent + [_others_running()])[-self.SAMPLES:]
        free = free_cores(sorted(self._recent)[len(self._recent) // 2])
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
