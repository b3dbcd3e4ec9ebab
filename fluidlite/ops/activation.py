"""relu, sigmoid, exp, log, square, sqrt, abs and softmax (tanh lives in ops/basic.py)."""
from __future__ import annotations

from ..kernels import activation as K
from ..registry import Attr, defop
from ..shapes import numel
from .common import batch_elementwise, float_same_as, grad_op, is_large

# name -> (kernel op code, the forward value its gradient reads, formula)
_UNARY = {
    "relu": (0, "Out", "max(X, 0); gradient 0 at X == 0"),
    "sigmoid": (1, "Out", "1 / (1 + exp(-X))"),
    "exp": (2, "Out", "exp(X)"),
    "log": (3, "X", "log(X)"),
    "square": (4, "X", "X * X"),
    "sqrt": (5, "Out", "sqrt(X)"),
    "abs": (6, "X", "|X|; gradient 0 at X == 0"),
}


def _lower_unary(code):
    def lower(ctx):
        kernel = K.unary_parallel if is_large(ctx.meta("X")) else K.unary
        shape = ctx.shape("X")
        return lambda x: kernel(x, code).reshape(shape)

    return lower


def _lower_unary_grad(code, slot):
    def lower(ctx):
        kernel = K.unary_grad_parallel if is_large(ctx.meta(slot)) else K.unary_grad
        shape = ctx.shape(slot)
        return lambda v, g: kernel(v, g, code).reshape(shape)

    return lower


def _unary_grad_rule(slot):
    def rule(g):
        reads = g.o("Out") if slot == "Out" else g.i("X")
        return [grad_op(g.op.type + "_grad", g, {slot: reads, "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})]

    return rule


for _name, (_code, _slot, _formula) in _UNARY.items():
    defop(_name, inputs=("X",), infer=float_same_as("X"), lower=_lower_unary(_code), grad=_unary_grad_rule(_slot),
          batch=batch_elementwise, doc=f"Out = {_formula}, elementwise.")
    defop(_name + "_grad", inputs=(_slot, "Out@GRAD"), outputs=("X@GRAD",), infer=float_same_as(_slot, "X@GRAD"),
          lower=_lower_unary_grad(_code, _slot))


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
    kernel = K.softmax_parallel if is_large(ctx.meta("X")) and pre > 1 else K.softmax
    return lambda x: kernel(x, pre, n, post)


def _lower_softmax_grad(ctx):
    pre, n, post = _pnp(ctx.shape("Out"), ctx.attrs["axis"])
    return lambda out, g: K.softmax_grad(out, g, pre, n, post)


_AXIS = {"axis": Attr(int, -1)}
defop("softmax", inputs=("X",), attrs=_AXIS, infer=_softmax_infer, lower=_lower_softmax,
      grad=lambda g: [grad_op("softmax_grad", g, {"Out": g.o("Out"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})],
      doc="Out = exp(X - max) / sum(exp(X - max)) along `axis` (numerically stable).")
defop("softmax_grad", inputs=("Out", "Out@GRAD"), outputs=("X@GRAD",), attrs=_AXIS,
      infer=float_same_as("Out", "X@GRAD"), lower=_lower_softmax_grad)
