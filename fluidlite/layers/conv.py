"""conv2d and pool2d layers over NCHW images."""
from __future__ import annotations

import math

import numpy as np

from ..initializer import Normal
from .helper import LayerHelper, check_variable

__all__ = ["conv2d", "pool2d"]


def _pair(value, arg, layer, minimum):
    """An int or a pair of ints -> a pair, each >= minimum."""
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in pair)):
        raise ValueError(f"{layer}: {arg} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return tuple(int(v) for v in pair)


def _image(input, slot, layer):
    """Checks a layer's input is a 4-D NCHW Variable with known C, H, W (the op's own checks need a weight)."""
    check_variable(input, "input", layer)
    if len(input.shape) != 4 or any(d < 1 for d in input.shape[1:]):
        raise ValueError(f"op '{layer}': {slot} must be a 4-D NCHW image batch with known C, H, W "
                         f"({slot}={input.name!r} shape={list(input.shape)} dtype={input.dtype})")
    return input


def conv2d(input, num_filters, filter_size, stride=1, padding=0, dilation=1, groups=1, param_attr=None,
           bias_attr=None, act=None, name=None):
    """2-D convolution of an NCHW `input`: act(conv(input, W) + b).

    W is `(num_filters, C // groups, kh, kw)`, initialised Normal(0, sqrt(2 / (C * kh * kw))) as in
    Paddle; b is `(num_filters,)` (`bias_attr=False`: none). `filter_size`, `stride`, `padding` (zeros)
    and `dilation` take an int or an (h, w) pair. The output is `[N, num_filters, Ho, Wo]` with
    `Ho = (H + 2p - d(k - 1) - 1) // s + 1`."""
    helper = LayerHelper("conv2d", name)
    _image(input, "Input", "conv2d")
    if not isinstance(num_filters, (int, np.integer)) or num_filters < 1:
        raise ValueError(f"conv2d {helper.name}: num_filters must be a positive int, got {num_filters!r}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d {helper.name}: groups must be a positive int, got {groups!r}")
    c = input.shape[1]
    if c % groups or num_filters % groups:
        raise ValueError(f"op 'conv2d': Input has {c} channels and num_filters={num_filters}; both must be "
                         f"divisible by groups={groups} (Input={input.name!r} shape={list(input.shape)})")
    kh, kw = _pair(filter_size, "filter_size", "conv2d", 1)
    attrs = {"strides": _pair(stride, "stride", "conv2d", 1), "paddings": _pair(padding, "padding", "conv2d", 0),
             "dilations": _pair(dilation, "dilation", "conv2d", 1), "groups": int(groups)}
    w = helper.create_parameter(param_attr, (int(num_filters), c // groups, kh, kw), input.dtype,
                                default_initializer=Normal(0.0, math.sqrt(2.0 / (c * kh * kw))))
    out = helper.append_op("conv2d", {"Input": input, "Filter": w}, attrs, outputs=("Output",))
    if bias_attr is not False:
        b = helper.create_parameter(bias_attr, (int(num_filters),), input.dtype, is_bias=True)
        out = helper.append_op("elementwise_add", {"X": out, "Y": b}, {"axis": 1})
    return helper.append_activation(out, act)


def pool2d(input, pool_size=-1, pool_type="max", pool_stride=1, pool_padding=0, global_pooling=False,
           ceil_mode=False, exclusive=True, name=None):
    """Max or average pooling of an NCHW `input` over `pool_size` windows (an int or an (h, w) pair).

    `global_pooling` pools the whole H x W to 1 x 1 (pool_size, stride and padding are then ignored).
    `exclusive=True`: an average counts only the elements inside the input, not the padding.
    `ceil_mode`: the output size rounds up, as in Paddle (a last window that would start in the
    padding is dropped)."""
    _image(input, "X", "pool2d")
    if pool_type not in ("max", "avg"):
        raise ValueError(f"pool2d: pool_type must be 'max' or 'avg', got {pool_type!r}")
    if global_pooling:
        ksize, stride, padding = tuple(input.shape[2:]), (1, 1), (0, 0)
    else:
        if pool_size == -1:
            raise ValueError("pool2d: give pool_size (an int or a pair) unless global_pooling=True")
        ksize = _pair(pool_size, "pool_size", "pool2d", 1)
        stride = _pair(pool_stride, "pool_stride", "pool2d", 1)
        padding = _pair(pool_padding, "pool_padding", "pool2d", 0)
    return LayerHelper("pool2d", name).append_op(
        "pool2d", {"X": input}, {"pooling_type": pool_type, "ksize": ksize, "strides": stride, "paddings": padding,
                                 "global_pooling": bool(global_pooling), "ceil_mode": bool(ceil_mode),
                                 "exclusive": bool(exclusive)})
