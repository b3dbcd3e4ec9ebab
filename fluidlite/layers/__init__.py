"""Layers: functions that append ops (and create parameters) in the current program."""
import importlib
import pkgutil

from .helper import LayerHelper  # noqa: F401
from .io import data  # noqa: F401

# every public function of every module here is a layer
for _info in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", [n for n in vars(_mod) if not n.startswith("_")]):
        _obj = getattr(_mod, _name)
        if callable(_obj) and getattr(_obj, "__module__", None) == _mod.__name__:
            globals()[_name] = _obj
del _info, _mod, _name, _obj
