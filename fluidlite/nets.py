"""Composite helpers (Paddle Fluid's `fluid.nets`): conv + pool blocks built from layers."""
from __future__ import annotations

from . import layers

__all__ = ["simple_img_conv_pool", "img_conv_group"]


def simple_img_conv_pool(input, num_filters, filter_size, pool_size, pool_stride, pool_padding=0, pool_type="max",
                         global_pooling=False, conv_stride=1, conv_padding=0, conv_dilation=1, conv_groups=1,
                         param_attr=None, bias_attr=None, act=None, use_cudnn=True):
    """conv2d (with `act`) followed by pool2d; returns the pooled output."""
    conv = layers.conv2d(input, num_filters, filter_size, stride=conv_stride, padding=conv_padding,
                         dilation=conv_dilation, groups=conv_groups, param_attr=param_attr, bias_attr=bias_attr,
                         act=act)
    return layers.pool2d(conv, pool_size=pool_size, pool_type=pool_type, pool_stride=pool_stride,
                         pool_padding=pool_padding, global_pooling=global_pooling)


def _per_conv(value, n, name):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"img_conv_group: {name} has {len(values)} entries for {n} convolutions")
    return values


def img_conv_group(input, conv_num_filter, pool_size, conv_padding=1, conv_filter_size=3, conv_act=None,
                   param_attr=None, conv_with_batchnorm=False, conv_batchnorm_drop_rate=0.0, pool_stride=1,
                   pool_type="max", use_cudnn=True):
    """A VGG-style group: one conv2d per entry of `conv_num_filter` (each optionally followed by batch_norm
    carrying `conv_act`, then dropout at that conv's rate), then one pool2d. Scalar arguments apply to every
    conv; lists give one value per conv."""
    if not isinstance(conv_num_filter, (list, tuple)) or not conv_num_filter:
        raise TypeError(f"img_conv_group: conv_num_filter must be a non-empty list, got {conv_num_filter!r}")
    n = len(conv_num_filter)
    padding, size = _per_conv(conv_padding, n, "conv_padding"), _per_conv(conv_filter_size, n, "conv_filter_size")
    attrs, with_bn = _per_conv(param_attr, n, "param_attr"), _per_conv(conv_with_batchnorm, n, "conv_with_batchnorm")
    drops = _per_conv(conv_batchnorm_drop_rate, n, "conv_batchnorm_drop_rate")
    out = input
    for i in range(n):
        out = layers.conv2d(out, conv_num_filter[i], size[i], padding=padding[i], param_attr=attrs[i],
                            act=None if with_bn[i] else conv_act)
        if with_bn[i]:
            out = layers.batch_norm(out, act=conv_act)
            if abs(drops[i]) > 1e-5:
                out = layers.dropout(out, drops[i])
    return layers.pool2d(out, pool_size=pool_size, pool_type=pool_type, pool_stride=pool_stride)
