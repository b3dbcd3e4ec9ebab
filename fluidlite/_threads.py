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

BLAS calls inside kernels (np.dot) go to SciPy's OpenBLAS, whose idle threads spin. When the
machine is oversubscribed (1-minute load average above the cores this process may use), a
two-thread product waits for a descheduled partner: an LSTM step burnt 830 ms of CPU for 86 ms of
work. So while a plan runs on an oversubscribed machine, that OpenBLAS (found by threadpoolctl,
only the copy under SciPy's directory) and Numba's thread count for the calling thread (the prange
kernels wait for their partner thread the same way) are limited to one thread, and restored
afterwards. The load is read at most once a second; other libraries' pools (NumPy's OpenBLAS,
torch's) are never touched.
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
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads it, as Numba does)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    mine = (os.path.join(root, "scipy"), os.path.join(root, "scipy.libs"))
    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(mine)]


def oversubscribed() -> bool:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] > cores
    except OSError:
        return False


class RunGuard:
    """Held while a plan runs: serialises plans under workqueue, and limits SciPy's OpenBLAS to one
    thread while the machine is oversubscribed."""

    RECHECK_S = 1.0

    def __init__(self):
        self._lock = _lock if _chosen == "workqueue" else None
        self._libs = None
        self._next_check = 0.0
        self._limit = False
        self._saved = ()
        self._numba_threads = 1

    def _check(self, now):
        self._next_check = now + self.RECHECK_S
        if self._libs is None:
            self._libs = _scipy_blas()
        self._limit = bool(self._libs) and oversubscribed()

    def __enter__(self):
        if self._lock is not None:
            self._lock.acquire()
        now = time.monotonic()
        if now >= self._next_check:
            self._check(now)
        if self._limit:
            self._saved = [(lib, lib.get_num_threads()) for lib in self._libs]
            for lib, n in self._saved:
                if n != 1:
                    lib.set_num_threads(1)
            self._numba_threads = _numba.get_num_threads()
            if self._numba_threads != 1:
                _numba.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self._limit:
            for lib, n in self._saved:
                if n != 1:
                    lib.set_num_threads(n)
            self._saved = ()
            if self._numba_threads != 1:
                _numba.set_num_threads(self._numba_threads)
        if self._lock is not None:
            self._lock.release()
        return False
