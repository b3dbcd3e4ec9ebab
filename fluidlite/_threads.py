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
process), so while it is the layer, plans run one at a time per process (`parallel_lock`).
BLAS calls inside kernels (np.dot) use SciPy's OpenBLAS, a pool no other library shares.
"""
from __future__ import annotations

import contextlib
import os
import threading

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


def parallel_lock():
    """A lock to hold while a plan runs: a real one under the workqueue layer, else a no-op context."""
    return _lock if _chosen == "workqueue" else contextlib.nullcontext()
