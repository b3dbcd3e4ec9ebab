"""Elementwise, activation and reduction layers; arithmetic operators on Variable (`x + y`, `2 * x`, `-x`)."""
from __future__ import annotations

import numbers

from ..framework import Variable
from .helper import LayerHelper, check_variable

__all__ = ["elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div", "elementwise_max",
           "relu", "sigmoid", "softmax", "exp", "log", "square", "sqrt", "abs", "gelu", "leaky_relu",
           "reduce_sum", "reduce_mean", "reduce_max", "reduce_min"]


def _elementwise(op_type, x, y, axis, act, name):
    helper = LayerHelper(op_type, name)
    out = helper.append_op(op_type, {"X": check_variable(x, "x", op_type), "Y": check_variable(y, "y", op_type)},
                           {"axis": axis})
    return helper.append_activation(out, act)


def elementwise_add(x, y, axis=-1, act=None, name=None):
    """x + y, broadcasting y (see docs/broadcasting.md)."""
    return _elementwise("elementwise_add", x, y, axis, act, name)


def elementwise_sub(x, y, axis=-1, act=None, name=None):
    """x - y, broadcasting y."""
    return _elementwise("elementwise_sub", x, y, axis, act, name)


def elementwise_mul(x, y, axis=-1, act=None, name=None):
    """x * y, broadcasting y."""
    return _elementwise("elementwise_mul", x, y, axis, act, name)


def elementwise_div(x, y, axis=-1, act=None, name=None):
    """x / y, broadcasting y."""
    return _elementwise("elementwise_div", x, y, axis, act, name)


def elementwise_max(x, y, axis=-1, act=None, name=None):
    """max(x, y), broadcasting y; at ties the gradient is split 0.5/0.5."""
    return _elementwise("elementwise_max", x, y, axis, act, name)


def _unary(op_type, x, name, attrs=None):
    return LayerHelper(op_type, name).append_op(op_type, {"X": check_variable(x, "x", op_type)}, attrs)


def relu(x, name=None):
    """max(x, 0)."""
    return _unary("relu", x, name)


def sigmoid(x, name=None):
    """1 / (1 + exp(-x))."""
    return _unary("sigmoid", x, name)


def softmax(input, axis=-1, name=None):
    """exp(x) / sum(exp(x)) along `axis` (computed stably)."""
    return _unary("softmax", input, name, {"axis": axis})


def exp(x, name=None):
    return _unary("exp", x, name)


def log(x, name=None):
    return _unary("log", x, name)


def square(x, name=None):
    return _unary("square", x, name)


def sqrt(x, name=None):
    return _unary("sqrt", x, name)


def abs(x, name=None):
    return _unary("abs", x, name)


def gelu(x, approximate=False, name=None):
    """x * Phi(x) with the normal CDF Phi (exact, through erf); `approximate`: the tanh formula."""
    return _unary("gelu", x, name, {"approximate": approximate})


def leaky_relu(x, alpha=0.02, name=None):
    """x where x > 0, else alpha * x."""
    return _unary("leaky_relu", x, name, {"alpha": alpha})


def _reduce(op_type, input, dim, keep_dim, name):
    if dim is None:
        attrs = {"dim": [], "keep_dim": keep_dim, "reduce_all": True}
    else:
        attrs = {"dim": [dim] if isinstance(dim, int) else list(dim), "keep_dim": keep_dim, "reduce_all": False}
    return _unary(op_type, input, name, attrs)


def reduce_sum(input, dim=None, keep_dim=False, name=None):
    """Sum over `dim` (an int or a list; None = every dim, giving shape [1] unless keep_dim)."""
    return _reduce("reduce_sum", input, dim, keep_dim, name)


def reduce_mean(input, dim=None, keep_dim=False, name=None):
    """Mean over `dim`, as reduce_sum."""
    return _reduce("reduce_mean", input, dim, keep_dim, name)


def reduce_max(input, dim=None, keep_dim=False, name=None):
    """Maximum over `dim`, as reduce_sum; the gradient goes to the maximal elements (split among ties)."""
    return _reduce("reduce_max", input, dim, keep_dim, name)


def reduce_min(input, dim=None, keep_dim=False, name=None):
    """Minimum over `dim`, as reduce_max."""
    return _reduce("reduce_min", input, dim, keep_dim, name)


# --- operators on Variable -------------------------------------------------------------------------------

def _scale(x, scale, bias):
    return LayerHelper("scale").append_op("scale", {"X": x}, {"scale": float(scale), "bias": float(bias)})


def _binary(op_type, scalar_fn, reflected=False):
    def method(self, other):
        if isinstance(other, Variable):
            a, b = (other, self) if reflected else (self, other)
            return _elementwise(op_type, a, b, -1, None, None)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return scalar_fn(self, float(other))
        return NotImplemented

    method.__name__ = f"__{'r' if reflected else ''}{op_type.split('_')[1]}__"
    return method


def _scalar_over(x, c):
    """c / x: a constant filled like x, divided elementwise."""
    filled = LayerHelper("fill_any_like").append_op("fill_any_like", {"X": x}, {"value": c})
    return _elementwise("elementwise_div", filled, x, -1, None, None)


Variable.__add__ = _binary("elementwise_add", lambda x, c: _scale(x, 1.0, c))
Variable.__radd__ = _binary("elementwise_add", lambda x, c: _scale(x, 1.0, c), reflected=True)
Variable.__sub__ = _binary("elementwise_sub", lambda x, c: _scale(x, 1.0, -c))
Variable.__rsub__ = _binary("elementwise_sub", lambda x, c: _scale(x, -1.0, c), reflected=True)
Variable.__mul__ = _binary("elementwise_mul", lambda x, c: _scale(x, c, 0.0))
Variable.__rmul__ = _binary("elementwise_mul", lambda x, c: _scale(x, c, 0.0), reflected=True)
Variable.__truediv__ = _binary("elementwise_div", lambda x, c: _scale(x, 1.0 / c, 0.0))
Variable.__rtruediv__ = _binary("elementwise_div", _scalar_over, reflected=True)
Variable.__neg__ = lambda self: _scale(self, -1.0, 0.0)
