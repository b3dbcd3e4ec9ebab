"""fluidlite: a static computation-graph compiler in the style of PaddlePaddle Fluid,
built around controlling gradients (error clipping and gradient clipping)."""
import importlib.util as _util
import os as _os

if _util.find_spec("fluidlite.kernels") is None:
    # a non-editable install imported from inside a source checkout: kernels/ sits beside this package
    __path__.append(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from . import _kernel_cache  # noqa: E402

_kernel_cache.install()  # before any kernel is defined
from . import _threads  # noqa: E402

# Numba's threading layer, before any kernel loads: a cached kernel whose products may split calls a
# parallel function, which needs the layer's threads running (without, loading it crashed the process)
_threads.choose_layer()
from . import ops  # noqa: E402,F401  (registers every op)
from . import initializer, layers, unique_name  # noqa: E402,F401
from .data_feeder import DataFeeder, data  # noqa: E402
from .compiler.nan_check import NanInfError  # noqa: E402
from .executor import CPUPlace, Executor  # noqa: E402
from .framework import (  # noqa: E402
    Block, Operator, Parameter, Program, Variable, default_main_program, default_startup_program, program_guard, role_guard,
)
from .param_attr import ParamAttr  # noqa: E402
from .registry import grad_var_name  # noqa: E402
from .scope import Scope, fetch_var, global_scope, scope_guard  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Block", "CPUPlace", "DataFeeder", "Executor", "Operator", "ParamAttr", "Parameter", "Program", "Scope", "Variable",
    "data", "default_main_program", "default_startup_program", "fetch_var", "global_scope", "grad_var_name",
    "initializer", "layers", "program_guard", "role_guard", "scope_guard", "unique_name",
]

_SUBMODULES = {  # one per line, sorted: branches that add one merge cleanly
    "backward",
    "clip",
    "datasets",
    "distributed",
    "graph",
    "graphviz",
    "io",
    "nets",
    "optimizer",
    "privacy",
    "reader",
    "regularizer",
    "registry",
    "shapes",
    "synthetic",
}


def __getattr__(name):
    # submodules load on first use, so `import fluidlite` stays quick and modules stay independent
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in ("append_backward", "gradients", "BackwardContext"):
        from . import backward

        return getattr(backward, name)
    if name == "verify":
        from .verifier import verify

        return verify
    raise AttributeError(f"module 'fluidlite' has no attribute {name!r}")
