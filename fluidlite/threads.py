"""Running plans from several threads under Numba's `workqueue` threading layer.

Numba runs `parallel=True` kernels on one of three threading layers: OpenMP, TBB or `workqueue`, its
fallback when neither library is usable. `workqueue` is not thread-safe: two Python threads inside
parallel kernels at once abort the whole process. `run_guard()` tells the executor what to hold
while a plan runs: a process-wide lock under `workqueue` (plans run one at a time, so no two parallel
kernels overlap), and nothing otherwise (plans of different threads run concurrently).

The layer is known only once Numba has started its thread pool; `run_guard` starts it the first time
it is asked (about a millisecond), so the answer is fixed before any plan runs.
"""
from __future__ import annotations

import contextlib
import threading

_SERIAL_LOCK = threading.RLock()
_layer = None


def threading_layer() -> str:
    """The name of Numba's threading layer ('omp', 'tbb' or 'workqueue'), starting its pool if needed."""
    global _layer
    if _layer is None:
        import numba
        from numba.np.ufunc import parallel

        with _SERIAL_LOCK:
            parallel._launch_threads()
            _layer = numba.threading_layer()
    return _layer


def run_guard():
    """The lock to hold while a plan runs under `workqueue`, else a no-op context."""
    return _SERIAL_LOCK if threading_layer() == "workqueue" else contextlib.nullcontext()


__all__ = ["run_guard", "threading_layer"]
