"""The objects a saved program may hold (clips, regularizers, initializers) and how they are rebuilt.

`ALLOWED` is the one allow-list: exact class names, each rebuilt only by calling that class with
the stored fields that are constructor arguments, so the constructor's checks run on file data
(a refused value is a ValueError naming where it was). Nothing else is ever called: no function,
no base class, no alias name, no `__new__`. Fields that are not constructor arguments must equal
what the constructor made; the one exception is a link to a variable (`{"variable": name}`) on a
field the constructor left None, which the loader sets once every variable exists.
"""
from __future__ import annotations

import importlib
import inspect
import math

from .variable import Variable

# Add a class here to let programs holding it round-trip; tests/test_io_hardening.py checks that
# every concrete clip class of fluidlite.clip* is listed.
ALLOWED = (
    "fluidlite.clip.ErrorClipByValue",
    "fluidlite.clip.GradientClipByValue",
    "fluidlite.clip.GradientClipByNorm",
    "fluidlite.clip.GradientClipByGlobalNorm",
    "fluidlite.clip.GradientClipAdaptive",
    "fluidlite.clip.GradientClipAutoClip",
    "fluidlite.clip.GradientClipZScore",
    "fluidlite.clip.GradientClipPerExample",
    "fluidlite.regularizer.L1Decay",
    "fluidlite.regularizer.L2Decay",
    "fluidlite.initializer.Constant",
    "fluidlite.initializer.Uniform",
    "fluidlite.initializer.Normal",
    "fluidlite.initializer.Xavier",
    "fluidlite.initializer.MSRA",
    "fluidlite.initializer.TruncatedNormal",
)
_SCALARS = (bool, int, float, str, type(None))


def _resolve(name):
    """The class `name` denotes if it is allow-listed and exactly that class; else None."""
    if name not in ALLOWED:
        return None
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if not isinstance(cls, type) or f"{cls.__module__}.{cls.__qualname__}" != name:
        return None
    return cls


def class_name(obj):
    """The allow-listed name of `obj`'s exact class, or None."""
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    return name if _resolve(name) is cls else None


def obj_to_json(obj, encode_float):
    if obj is None:
        return None
    fields = getattr(obj, "__dict__", None)
    name = class_name(obj)
    if name is None or not isinstance(fields, dict) or not all(isinstance(v, _SCALARS + (Variable,))
                                                               for v in fields.values()):
        return {"repr": repr(obj)}
    return {"class": name, "fields": {k: {"variable": v.name} if isinstance(v, Variable) else encode_float(v)
                                      for k, v in fields.items()}}


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def obj_from_json(data, where, pending):
    """Rebuild an allow-listed object through its constructor; Variable links go to `pending`."""
    import warnings

    if data is None:
        return None
    if not isinstance(data, dict) or not ("class" in data or "repr" in data):
        raise ValueError(f"{where}: expected null or an object with 'class' or 'repr', got {data!r:.200}")
    if "class" not in data:
        warnings.warn(f"{where}: {str(data['repr'])[:200]} was saved only as its repr; left unset")
        return None
    name, fields = data["class"], data.get("fields")
    cls = _resolve(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{where}: class {name!r:.200} is not one of the allowed classes ({', '.join(ALLOWED)})")
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: 'fields' of {name} must be an object")
    refs, plain = {}, {}
    for k, v in fields.items():
        if isinstance(v, dict) and set(v) == {"variable"} and isinstance(v["variable"], str):
            refs[k] = v["variable"]
        elif isinstance(v, _SCALARS):
            plain[k] = v
        else:
            raise ValueError(f"{where}: field {k!r} of {name} must be a JSON scalar or a variable link, got {v!r:.200}")
    params = inspect.signature(cls.__init__).parameters
    args = {k: v for k, v in plain.items() if k in params and k != "self"}
    try:
        obj = cls(**args)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"{where}: {name}({', '.join(f'{k}={v!r}' for k, v in args.items())}) "
                         f"is refused: {exc}") from None
    state = vars(obj)
    for k, v in plain.items():
        if k not in state or not _same(state[k], v):
            raise ValueError(f"{where}: field {k!r}={v!r} of {name} is not what its constructor makes "
                             f"({state.get(k, '<no such field>')!r})")
    for k, ref in refs.items():
        if k not in state or state[k] is not None:
            raise ValueError(f"{where}: field {k!r} of {name} cannot hold a variable link")
        pending.append((obj, k, ref, where))
    return obj


__all__ = ["ALLOWED", "class_name", "obj_from_json", "obj_to_json"]
