"""fc, mean, scale, tanh, sums."""
from __future__ import annotations

from ..shapes import numel
from .helper import LayerHelper, check_variable


def fc(input, size, num_flatten_dims=1, param_attr=None, bias_attr=None, act=None, name=None):
    """Fully connected: act(sum_i flatten(input_i) @ W_i + b). Each W_i is laid out (in_features, size).

    `input` may be a list of Variables (one weight each; the products are summed).
    `bias_attr=False` drops the bias."""
    helper = LayerHelper("fc", name)
    inputs = list(input) if isinstance(input, (list, tuple)) else [input]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"fc {helper.name}: size must be a positive int, got {size!r}")
    param_attrs = param_attr if isinstance(param_attr, (list, tuple)) else [param_attr] * len(inputs)
    if len(param_attrs) != len(inputs):
        raise ValueError(f"fc {helper.name}: {len(inputs)} inputs but {len(param_attrs)} param_attrs")
    products = []
    for x, attr in zip(inputs, param_attrs):
        check_variable(x, "input", "fc")
        if not 0 < num_flatten_dims < len(x.shape):
            raise ValueError(f"fc {helper.name}: num_flatten_dims={num_flatten_dims} does not fit input "
                             f"{x.name!r} of shape {list(x.shape)}")
        in_features = numel(x.shape[num_flatten_dims:])
        if in_features < 1:
            raise ValueError(f"fc {helper.name}: input {x.name!r} of shape {list(x.shape)} needs known "
                             f"dimensions after num_flatten_dims={num_flatten_dims}")
        w = helper.create_parameter(attr, (in_features, size), x.dtype)
        products.append(helper.append_op("mul", {"X": x, "Y": w},
                                         {"x_num_col_dims": num_flatten_dims, "y_num_col_dims": 1}))
    if bias_attr is not False:
        # the bias joins the first product, before the sum: in a StaticRNN step that is x_t @ W + b,
        # which reads no state and is computed once for the whole sequence
        b = helper.create_parameter(bias_attr, (size,), products[0].dtype, is_bias=True)
        products[0] = helper.append_op("elementwise_add", {"X": products[0], "Y": b}, {"axis": num_flatten_dims})
    out = products[0] if len(products) == 1 else helper.append_op("sum", {"X": products})
    return helper.append_activation(out, act)


def mean(x, name=None):
    """The mean of all elements, shape [1]."""
    return LayerHelper("mean", name).append_op("mean", {"X": check_variable(x, "x", "mean")})


def scale(x, scale=1.0, bias=0.0, bias_after_scale=True, act=None, name=None):
    """scale * x + bias (or scale * (x + bias))."""
    helper = LayerHelper("scale", name)
    out = helper.append_op("scale", {"X": check_variable(x, "x", "scale")},
                           {"scale": scale, "bias": bias, "bias_after_scale": bias_after_scale})
    return helper.append_activation(out, act)


def tanh(x, name=None):
    return LayerHelper("tanh", name).append_op("tanh", {"X": check_variable(x, "x", "tanh")})


def sums(input, out=None):
    """The elementwise sum of a list of same-shaped Variables."""
    if not isinstance(input, (list, tuple)) or not input:
        raise TypeError("sums: input must be a non-empty list of Variables")
    helper = LayerHelper("sum")
    if out is not None:
        helper.block.append_op("sum", {"X": list(input)}, {"Out": out})
        return out
    return helper.append_op("sum", {"X": list(input)})



