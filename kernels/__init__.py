"""Numba kernels: pure functions over arrays and scalars, no graph logic. Installed as `fluidlite.kernels`."""
