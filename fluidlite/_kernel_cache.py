"""Numba's disk cache of the kernels, kept fresh when any kernel file changes.

Numba stamps a cached function with its own source file's time and size only, but a cached kernel
holds the compiled code of every function it calls, from other files too (every product reaches
kernels/blas.py). After an edit to one file, the kernels of the others ran the old code from the cache:
a change to `gemm` that did not even compile went unnoticed while kernels/basic.py's products ran from
a warm cache. So each kernel of kernels/, and each generated kernel (compiler/fused_kernel.py), which
inlines kernels' functions, is also stamped with every file of kernels/ and fluidlite/_blas.py: an
edit to any of them recompiles them all. An installed copy never changes, so only a source checkout
pays. `install()` runs when fluidlite is imported, before any kernel is defined; a locator list the
user chose (NUMBA_CACHE_LOCATOR_CLASSES) is left alone.
"""
from __future__ import annotations

import importlib.util
import os

from numba.core import caching

_HERE = os.path.dirname(os.path.abspath(__file__))
_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # the name before Numba 0.61
covered_dirs = set()  # folders whose Python files hold kernels (compiler/fused_kernel.py adds its own)


def _kernel_files() -> list:
    spec = importlib.util.find_spec("fluidlite.kernels")
    folder = spec.submodule_search_locations[0]
    covered_dirs.add(os.path.realpath(folder))
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    return [os.path.join(folder, n) for n in names] + [os.path.join(_HERE, "_blas.py")]


def sources_stamp() -> tuple:
    """(file name, modification time in ns, size) of every file a kernel's code can come from."""
    stamp = []
    for path in _kernel_files():
        st = os.stat(path)
        stamp.append((os.path.basename(path), st.st_mtime_ns, st.st_size))
    return tuple(stamp)


class KernelsLocator(caching._CacheLocator):
    """Numba's own locator for the file (same cache folder and names), with `sources_stamp()` added
    to the file's own stamp."""

    stamp: tuple = ()

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), self.stamp

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.realpath(py_file)) not in covered_dirs:
            return None
        for other in _IMPL._locator_classes:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


def install() -> None:
    KernelsLocator.stamp = sources_stamp()
    classes = _IMPL._locator_classes
    if KernelsLocator not in classes:
        classes.insert(0, KernelsLocator)
