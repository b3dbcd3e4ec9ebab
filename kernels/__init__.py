"""Numba kernels: pure functions over arrays and scalars, no graph logic. Installed as `fluidlite.kernels`."""
if __name__ != "fluidlite.kernels":
    # Numba's disk cache is keyed by file, not module name: a kernel compiled as `kernels.x` poisons the
    # cache for `fluidlite.kernels.x` (ModuleNotFoundError when the entry is loaded).
    raise ImportError(f"import fluidlite.kernels, not {__name__!r}: the kernels' compiled cache is bound to that name")
