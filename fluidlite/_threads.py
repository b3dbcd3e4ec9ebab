"""fluidlite's own thread pools, chosen without touching any other library's.

One pool runs fluidlite's threads: Numba's TBB threading layer (the `tbb` wheel), chosen at import.
It runs the parallel kernels (`prange`, arrays of `parallel_min()` = 2^16 elements or more) and the
matrix products, which kernels/blas.py splits into one single-thread BLAS call per thread while a
plan runs (`BlasPin` holds the kernels' BLAS at one thread meanwhile, and gives it back after). Two
pools fought: OpenBLAS's idle workers spin after a call and took the cores Numba's threads needed.
While a plan runs, those parallel loops go to fluidlite/_pool.py's dispatcher: resident workers that
stay awake between loops, where TBB builds an arena per loop and its workers fall asleep within ~20 us.
GNU OpenMP would do as a pool but stops forked children that run parallel code; TBB does not.

Without the `tbb` wheel (or with FLUIDLITE_BLAS=onednn, whose products crashed on TBB's threads) the
layer is Numba's `workqueue`, whose idle threads sleep on a condition variable, the products are
threaded by the BLAS, and `parallel_min()` is 2^23. Numba's default pick, OpenMP, would load a
second libgomp whose idle threads spin; the old fix (setting OMP_WAIT_POLICY=PASSIVE in
`os.environ` at import) changed every OpenMP library loaded afterwards too, torch's included (its
steps got 2-7x slower), and came too late when torch was imported first. A layer the user chose
(NUMBA_THREADING_LAYER, or Numba already running parallel code) is left alone, with products
threaded by the BLAS. Nothing here writes environment variables.

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
never touched.

Something /proc does not show can slow one of a VM's cores (no steal time shows): for seconds to a
minute, a LeNet convolution's two-thread products took 6.7 ms against 2.8, while one thread took 3.1
throughout. So each plan also times itself (`ThreadTrial`): every few seconds a few runs on the other
setting against the runs before them, and the faster setting is kept until the next trial
(docs/design.md has the measurements). FLUIDLITE_FIXED_THREADS=1 turns both off: a product's last
bits can depend on its thread count, so only fixed counts repeat bit for bit.

Every product of a plan goes to that one OpenBLAS: calling NumPy's (np.matmul) for `mul` while the
kernels used SciPy's made an LSTM step 3x slower, as each pool's worker spins for a while after a
call and starves the other pool and Numba's workers.
"""
from __future__ import annotations

import functools
import os
import statistics
from collections import deque
import threading
import time

import numba as _numba

_chosen = None
_pool_parts = 0  # bands the products are split into while plans run (0: the pool is off)
_lock = threading.RLock()


def choose_layer() -> str:
    """Pick Numba's threading layer for fluidlite once per process; returns the layer's name. Under TBB,
    fluidlite's products are split over its threads too (`pool_on`)."""
    global _chosen
    if _chosen is None:
        from numba import config
        from numba.np.ufunc import parallel

        if parallel._is_initialized:
            _chosen = parallel.threading_layer()
        elif os.environ.get("NUMBA_THREADING_LAYER") or str(config.THREADING_LAYER).lower() != "default":
            if str(config.THREADING_LAYER).lower() in ("tbb", "safe"):
                _load_tbb()  # the wheel's library is off the loader's path
            parallel._launch_threads()  # the user's layer, started now (a failure is Numba's error, at once)
            _chosen = parallel.threading_layer()
        else:
            from .kernels import blas

            # FLUIDLITE_BLAS=onednn or mkl keeps the workqueue: their products run on their own OpenMP
            # pools (oneDNN's crashed when called from TBB's threads; MKL's steps ran 1.2-1.7x slower)
            _chosen = _launch("tbb") if blas.FLOAT32 in ("numpy", "scipy") and _load_tbb() else None
            _chosen = _chosen or _launch("workqueue")
        if _chosen == "tbb" and _numba.get_num_threads() > 1 and _kernel_blas():
            global _pool_parts  # products split only where the BLAS can be held to one thread

            # one band a thread: steps took 3.7-4% less than with two (LSTM 19.9-20.2 ms against 20.7-21.0,
            # Transformer 28.4-29.5 against 30.0-30.5); an earlier probe that found TBB leaving both bands
            # to one thread ran right after OpenBLAS's own threads, which spin for 0.1 s after a call
            _pool_parts = _numba.get_num_threads()
            if os.environ.get("FLUIDLITE_POOL", "") != "tbb":  # TBB's own dispatch, for comparison
                from . import _pool

                _pool.install()
    return _chosen


def _launch(layer: str) -> str | None:
    """Start Numba's threads on `layer` (fixing the choice: a later config reload cannot undo it); the
    layer running, or None when it could not start."""
    from numba import config
    from numba.np.ufunc import parallel

    config.THREADING_LAYER = layer
    try:
        parallel._launch_threads()
    except (ValueError, ImportError, OSError):
        return None
    return parallel.threading_layer()


def _load_tbb() -> bool:
    """Load the `tbb` wheel's library where Numba's TBB layer will find it (the wheel puts it in the
    environment's lib/, off the loader's path); False when the wheel is missing."""
    import ctypes
    from importlib import metadata

    try:
        files = metadata.files("tbb") or ()
    except metadata.PackageNotFoundError:
        return False
    for f in files:
        if f.name == "libtbb.so.12":
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                return False
    return False


def pool_on() -> bool:
    """Whether fluidlite's products and parallel kernels share one pool (Numba's TBB threads)."""
    return _pool_parts > 1


def parallel_min() -> int:
    """Elements from which a pass takes its prange kernel: 2^16 on the pool (TBB's threads, whose loops
    fluidlite/_pool.py dispatches while plans run); 2^23 on the workqueue, whose sleeping threads cost
    ~0.1 ms a call."""
    return POOL_PARALLEL_MIN if pool_on() else QUEUE_PARALLEL_MIN


POOL_PARALLEL_MIN, QUEUE_PARALLEL_MIN = 1 << 16, 1 << 23


@functools.lru_cache(maxsize=None)  # the kernels' BLAS is loaded once, at import: scan for it once
def _kernel_blas() -> list:
    """threadpoolctl controllers of the BLAS library the kernels call (kernels/blas.py: NumPy's or SciPy's
    copy, told apart by the directory it was loaded from; MKL's with FLUIDLITE_BLAS=mkl; with
    FLUIDLITE_BLAS=onednn also oneDNN's OpenMP runtime); empty without threadpoolctl."""
    import sys

    from . import _blas
    from .kernels import blas

    first = "threadpoolctl" not in sys.modules and "KMP_DUPLICATE_LIB_OK" not in os.environ
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    finally:
        if first:  # threadpoolctl's import sets KMP_DUPLICATE_LIB_OK for the whole process: not through us
            os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    if blas.BACKEND == "mkl":  # the mkl wheel's, in this environment's lib/ (torch's MKL is built into torch)
        folder = os.path.dirname(os.path.abspath(_blas.mkl_library()))
        return [lib for lib in ThreadpoolController().lib_controllers
                if lib.internal_api == "mkl" and os.path.dirname(os.path.abspath(lib.filepath)) == folder]
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


class ThreadTrial:
    """One plan's choice between one thread and all: now and then RUNS runs on the other setting; their
    median, against the median of the BASE runs before them, decides (the other wins when it takes under
    GAIN of the time); a trial run no faster than that median ends the trial at once. Trials start
    EVERY_S apart at least, and take at most SHARE of the plan's time, except right after a switch.
    Plans quicker than MIN_S are never tried."""

    EVERY_S = 2.0
    SHARE = 0.02
    RUNS = 3
    BASE = 7  # more than RUNS: one slow spell of a few runs does not make the baseline
    GAIN = 0.85
    MIN_S = 1e-3

    def __init__(self, clock=time.monotonic):
        self.one_thread = False  # the choice
        self._clock = clock
        self._recent = deque(maxlen=self.BASE)  # the last durations under the choice
        self._trial = None  # durations on the other setting while a trial runs
        self._next = clock() + self.EVERY_S

    def wants_one_thread(self) -> bool:
        """The setting of the next run."""
        return self.one_thread != (self._trial is not None)

    def record(self, seconds: float):
        if self._trial is None:
            self._recent.append(seconds)
            if (len(self._recent) == self.BASE and self._clock() >= self._next
                    and statistics.median(self._recent) >= self.MIN_S):
                self._trial = []
            return
        self._trial.append(seconds)
        before = statistics.median(self._recent)
        if seconds >= before or len(self._trial) == self.RUNS:  # a run no faster than before: it cannot win
            wait = max(self.EVERY_S, self.RUNS * statistics.median(self._recent) / self.SHARE)
            if len(self._trial) == self.RUNS and statistics.median(self._trial) < self.GAIN * before:
                # switched: tried again once BASE runs are in, so a switch that a slow spell caused is undone soon
                self.one_thread, self._recent, wait = not self.one_thread, deque(self._trial, self.BASE), 0.0
            self._trial, self._next = None, self._clock() + wait


class BlasPin:
    """While any plan runs, the kernels split their products over `parts` of Numba's threads and their
    BLAS runs one thread; when the last run ends, products are whole again and the BLAS gets its own
    count back: NumPy's `@` and kernels called outside a plan keep the BLAS's threads."""

    def __init__(self):
        self._runs = 0
        self._saved = ()
        self._mutex = threading.Lock()

    def enter(self, libs, parts):
        from . import _blas

        with self._mutex:
            if self._runs == 0:
                self._saved = [(lib, n) for lib in libs for n in (lib.get_num_threads(),) if n != 1]
                for lib, _ in self._saved:
                    lib.set_num_threads(1)
                _blas.split_products(parts)
            self._runs += 1

    def exit(self):
        from . import _blas

        with self._mutex:
            self._runs -= 1
            if self._runs == 0:
                _blas.split_products(0)
                for lib, n in self._saved:
                    lib.set_num_threads(n)
                self._saved = ()


_pin = BlasPin()


class RunGuard:
    """Held while a plan runs: serialises plans under workqueue, holds the kernels' BLAS at one thread
    while products are split (`BlasPin`), and limits the kernels' BLAS and Numba's threads to the free
    cores while the machine is oversubscribed, or to one while the plan's own `ThreadTrial` found one
    thread faster."""

    RECHECK_S = 1.0
    MAX_TRIALS = 256  # plans remembered; the oldest is forgotten first

    def __init__(self):
        self._lock = _lock if _chosen == "workqueue" else None
        self._pin = _pin if pool_on() else None
        self._libs = None
        self._next_check = 0.0
        self._limit = 0  # threads allowed while the machine is busy; 0: no limit
        self._tried = False
        self._others = OtherLoad()
        self._trials = {}  # plan key -> ThreadTrial, oldest first
        self._run = threading.local()  # this thread's run in progress: its plan key, limit, saved counts

    def using(self, key):
        """This guard, for a run of the plan `key`: its ThreadTrial times the run."""
        self._run.key = key
        return self

    def _trial_of(self, key):
        trial = self._trials.get(key)
        if trial is None:
            if len(self._trials) >= self.MAX_TRIALS:  # pop, not del: another thread may have dropped it
                self._trials.pop(next(iter(self._trials)), None)
            trial = self._trials[key] = ThreadTrial()
        return trial

    def _check(self, now):
        self._next_check = now + self.RECHECK_S
        if self._libs is None:
            self._libs = _kernel_blas()
        free = free_cores(self._others())
        # A BLAS product's bits can follow its thread count ((128, 784) x (784, 1024) float32 does in
        # OpenBLAS): FLUIDLITE_FIXED_THREADS=1 keeps the counts, so runs repeat bit for bit.
        fixed = os.environ.get("FLUIDLITE_FIXED_THREADS", "") not in ("", "0")
        self._limit = free if free < _cores() and not fixed else 0
        self._tried = not fixed and _cores() > 1  # whether plans' ThreadTrials decide

    def __enter__(self):
        if self._lock is not None:
            self._lock.acquire()
        now = time.monotonic()
        if now >= self._next_check:
            self._check(now)
        run = self._run
        key, run.key = getattr(run, "key", None), None
        run.trial = self._trial_of(key) if key is not None and self._tried else None
        run.limit = 1 if run.trial is not None and run.trial.wants_one_thread() else self._limit
        if self._pin is not None:
            self._pin.enter(self._libs, _pool_parts)
        if run.limit:
            run.saved = [] if self._pin is not None else [(lib, lib.get_num_threads()) for lib in self._libs]
            for lib, n in run.saved:
                if n > run.limit:
                    lib.set_num_threads(run.limit)
            run.numba_threads = _numba.get_num_threads()
            if run.numba_threads > run.limit:
                _numba.set_num_threads(run.limit)
        run.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        run = self._run
        if run.trial is not None and exc[0] is None:
            run.trial.record(time.perf_counter() - run.started)
        if run.limit:
            for lib, n in run.saved:
                if n > run.limit:
                    lib.set_num_threads(n)
            run.saved = ()
            if run.numba_threads > run.limit:
                _numba.set_num_threads(run.numba_threads)
        if self._pin is not None:
            self._pin.exit()
        if self._lock is not None:
            self._lock.release()
        return False
