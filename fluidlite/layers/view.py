"""Shape layers (Paddle Fluid 1.x names): squeeze, unsqueeze, expand, slice, cast, stack, unstack and
fill_constant_batch_size_like."""
from __future__ import annotations

import numpy as np

from .helper import LayerHelper, check_variable

__all__ = ["squeeze", "unsqueeze", "expand", "slice", "cast", "stack", "unstack", "fill_constant_batch_size_like"]


def _ints(value, name, layer):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                       for v in value):
        raise TypeError(f"{layer}: {name} must be a list of ints, got {value!r}")
    return [int(v) for v in value]


def squeeze(input, axes, name=None):
    """input without the size-1 dimensions `axes` (all size-1 dimensions if `axes` is empty)."""
    return LayerHelper("squeeze", name).append_op("squeeze", {"X": check_variable(input, "input", "squeeze")},
                                                  {"axes": _ints(axes, "axes", "squeeze")})


def unsqueeze(input, axes, name=None):
    """input with a size-1 dimension inserted at each of `axes`, in order."""
    return LayerHelper("unsqueeze", name).append_op("unsqueeze", {"X": check_variable(input, "input", "unsqueeze")},
                                                    {"axes": _ints(axes, "axes", "unsqueeze")})


def expand(x, expand_times, name=None):
    """x tiled expand_times[d] times along each dimension d."""
    return LayerHelper("expand", name).append_op("expand", {"X": check_variable(x, "x", "expand")},
                                                 {"expand_times": _ints(expand_times, "expand_times", "expand")})


def slice(input, axes, starts, ends):
    """input[starts[i]:ends[i]] along each axes[i]; negative bounds count from the end, then clamp."""
    return LayerHelper("slice").append_op("slice", {"Input": check_variable(input, "input", "slice")},
                                          {"axes": _ints(axes, "axes", "slice"),
                                           "starts": _ints(starts, "starts", "slice"),
                                           "ends": _ints(ends, "ends", "slice")})


def cast(x, dtype):
    """x converted to `dtype`; the gradient flows back (cast to x's dtype) between float types."""
    return LayerHelper("cast").append_op("cast", {"X": check_variable(x, "x", "cast")},
                                         {"out_dtype": np.dtype(dtype).name})


def stack(x, axis=0):
    """The Variables of `x` (one shape) stacked along a new dimension `axis`."""
    if isinstance(x, (list, tuple)) is False or not x:
        x = [x]
    for k, v in enumerate(x):
        check_variable(v, f"x[{k}]", "stack")
    return LayerHelper("stack").append_op("stack", {"X": list(x)}, {"axis": axis})


def unstack(x, axis=0, num=None):
    """The slices of x along `axis` (whose size must be known), as a list of Variables."""
    helper = LayerHelper("unstack")
    check_variable(x, "x", "unstack")
    rank = len(x.shape)
    if not -rank <= axis < rank:
        raise ValueError(f"unstack: axis={axis} is out of range for {x.name!r} of shape {list(x.shape)}")
    n = x.shape[axis] if num is None else num
    if n < 1:
        raise ValueError(f"unstack: the size of axis {axis} of {x.name!r} {list(x.shape)} must be known (or pass num)")
    names = [helper.tmp_name() for _ in range(n)]
    helper.block.append_op("unstack", {"X": x}, {"Out": names}, {"axis": axis})
    return [helper.block.var(n) for n in names]


def fill_constant_batch_size_like(input, shape, dtype, value, input_dim_idx=0, output_dim_idx=0):
    """A tensor of `shape` filled with `value` whose dimension `output_dim_idx` is input's dimension
    `input_dim_idx` at run time (zero initial states sized to the batch)."""
    return LayerHelper("fill_constant_batch_size_like").append_op(
        "fill_constant_batch_size_like", {"Input": check_variable(input, "input", "fill_constant_batch_size_like")},
        {"shape": _ints(shape, "shape", "fill_constant_batch_size_like"), "dtype": np.dtype(dtype).name,
         "value": float(value), "input_dim_idx": input_dim_idx, "output_dim_idx": output_dim_idx})
