"""relu, sigmoid, exp, log, square, sqrt, abs, gelu, leaky_relu and softmax (tanh lives in ops/basic.py)."""
from __future__ import annotations

import numpy as np

from ..kernels import activation as K
from ..kernels import softmax as S
from ..registry import Attr, Elementwise, defop
from ..shapes import numel
from .common import batch_elementwise, float_same_as, is_large, parallel_size


def _lower_unary(ctx):
    """Batch-polymorphic: the shape and the serial-or-parallel choice are read from x at run time."""
    code, a = _code(ctx)
    serial, parallel = K.unary, K.unary_parallel
    return lambda x: (parallel if parallel_size(x.size) else serial)(x, code, a).reshape(x.shape)


def _lower_unary_grad(ctx):
    code, a = _code(ctx)
    serial, parallel = K.unary_grad, K.unary_grad_parallel
    return lambda v, g: (parallel if parallel_size(v.size) else serial)(v, g, code, a).reshape(v.shape)


def _code(ctx):
    """The kernel's op code (from the one table in kernels/activation.py) and float parameter."""
    name = ctx.opdef.type.removesuffix("_grad")
    if name == "gelu" and ctx.attrs["approximate"]:
        return K.GELU_TANH, 0.0
    if name == "gelu" and (ctx.metas("X") if ctx.has("X") else ctx.metas("Out"))[0].dtype == np.float32:
        return K.GELU_VEC, 0.0  # vectorized erfc: ~2 ulp in float32, 10x faster than math.erf per element
    return getattr(K, name.upper()), float(ctx.attrs.get("alpha", 0.0))


# name -> (the forward value its gradient reads, attributes, formula)
_UNARY = {
    "relu": ("Out", {}, "max(X, 0); gradient 0 at X == 0"),
    "sigmoid": ("Out", {}, "1 / (1 + exp(-X))"),
    "exp": ("Out", {}, "exp(X)"),
    "log": ("X", {}, "log(X)"),
    "square": ("X", {}, "X * X"),
    "sqrt": ("Out", {}, "sqrt(X)"),
    "abs": ("X", {}, "|X|; gradient 0 at X == 0"),
    "gelu": ("X", {"approximate": Attr(bool, False)},
             "X * Phi(X) = 0.5 X (1 + erf(X / sqrt(2))); approximate: 0.5 X (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3)))"),
    "leaky_relu": ("X", {"alpha": Attr(float, 0.02)}, "X if X > 0 else alpha * X; gradient alpha at X == 0"),
}

# op code -> the name of its per-element functions `_<name>_el` / `_<name>_grad_el` in kernels/activation.py
_EL_NAMES = {getattr(K, n.upper()): n for n in ("relu", "sigmoid", "exp", "log", "square", "sqrt", "abs", "gelu",
                                                "gelu_tanh", "gelu_vec", "leaky_relu")}


def _element_fn(ctx, suffix):
    """The function `_u` / `_du` call for the op's code (so fused and unfused agree), and its parameter."""
    code, a = _code(ctx)
    return getattr(K, f"_{_EL_NAMES[code]}{suffix}_el"), a


def _elementwise(ctx):
    fn, a = _element_fn(ctx, "")
    return Elementwise(fn, ("X", a))


def _elementwise_grad(reads):
    def decl(ctx):
        fn, a = _element_fn(ctx, "_grad")
        return Elementwise(fn, (reads, "Out@GRAD", a))
    return decl


for _name, (_reads, _attrs, _formula) in _UNARY.items():
    defop(_name, inputs=("X",), attrs=_attrs, infer=float_same_as("X"), lower=_lower_unary, batch=batch_elementwise,
          batch_poly=True, grad_batch_poly=True,
          elementwise=_elementwise, grad_reads=(_reads,), grad_lower=_lower_unary_grad, grad_infer={"X@GRAD": _reads},
          grad_elementwise=_elementwise_grad(_reads), doc=f"Out = {_formula}, elementwise.")


def _softmax_infer(ctx):
    rank = len(ctx.shape("X"))
    if not -rank <= ctx.attrs["axis"] < rank:
        raise ctx.error(f"axis={ctx.attrs['axis']} is out of range for rank {rank}", "X")
    return float_same_as("X")(ctx)


def _pnp(shape, axis):
    axis %= len(shape)
    return numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])


def _lower_softmax(ctx):
    pre, n, post = _pnp(ctx.shape("X"), ctx.attrs["axis"])
    large = is_large(ctx.meta("X")) and pre > 1
    if post == 1:  # the last axis: contiguous rows
        kernel = S.softmax_rows_parallel if large else S.softmax_rows
        return lambda x: kernel(x, pre, n)
    kernel = S.softmax_parallel if large else S.softmax
    return lambda x: kernel(x, pre, n, post)


def _lower_softmax_grad(ctx):
    pre, n, post = _pnp(ctx.shape("Out"), ctx.attrs["axis"])
    large = is_large(ctx.meta("Out")) and pre > 1
    if post == 1:
        return lambda out, g: S.softmax_grad_rows(out, g, pre, n)
    kernel = S.softmax_grad_parallel if large else S.softmax_grad
    return lambda out, g: kernel(out, g, pre, n, post)


defop("softmax", inputs=("X",), attrs={"axis": Attr(int, -1)}, infer=_softmax_infer,
      lower=_lower_softmax, grad_reads=("Out",), grad_lower=_lower_softmax_grad,
      grad_infer={"X@GRAD": "Out"},
      doc="Out = exp(X - max) / sum(exp(X - max)) along `axis` (numerically stable).")
