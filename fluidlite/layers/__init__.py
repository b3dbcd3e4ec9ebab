"""Layers: functions that append ops (and create parameters) in the current program."""
import importlib
import pkgutil

from .helper import LayerHelper  # noqa: F401
from .io import data  # noqa: F401

# Each layer's Paddle Fluid 1.x counterpart is `fluid.layers.<same name>` unless listed here; it is added
# to the layer's docstring below (docs/api.md has the whole table).
_PADDLE = {
    "clip_by_global_norm": "none; Paddle clips by global norm with `fluid.clip.GradientClipByGlobalNorm`",
    "gru": "none; fluidlite's counterpart of `fluid.layers.lstm` (Paddle has `dynamic_gru` and `gru_unit`)",
    "where": "`paddle.where` (2.x); 1.x's `fluid.layers.where` returns the indices of true entries instead",
}
_NOT_LAYERS = {"LayerHelper", "check_variable"}

# every public function of every module here is a layer
for _info in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", [n for n in vars(_mod) if not n.startswith("_")]):
        _obj = getattr(_mod, _name)
        if callable(_obj) and getattr(_obj, "__module__", None) == _mod.__name__:
            globals()[_name] = _obj
            if _name not in _NOT_LAYERS:
                _paddle = _PADDLE.get(_name, f"`fluid.layers.{_name}`")
                _obj.__doc__ = f"{(_obj.__doc__ or '').rstrip()}\n\nPaddle Fluid: {_paddle}."
del _info, _mod, _name, _obj, _paddle
