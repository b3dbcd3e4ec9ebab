"""create_parameter: a free-standing parameter (Paddle's layers.create_parameter)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..param_attr import ParamAttr
from .helper import LayerHelper

__all__ = ["create_parameter"]


def create_parameter(shape, dtype, name=None, attr=None, is_bias=False, default_initializer=None):
    """A trainable Parameter of `shape` (fully known) and `dtype`, initialised by the startup program:
    by `attr.initializer`, else `default_initializer`, else zeros for a bias and Xavier otherwise."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, (int, np.integer)) for d in shape):
        raise TypeError(f"create_parameter: shape must be a list of ints, got {shape!r}")
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"create_parameter: dtype must be a float type, got {np.dtype(dtype)}")
    attr = ParamAttr._to_attr(attr)
    if name is not None:
        attr = replace(attr, name=name)
    helper = LayerHelper("create_parameter")
    return helper.create_parameter(attr, tuple(shape), dtype, is_bias=is_bias, default_initializer=default_initializer)
