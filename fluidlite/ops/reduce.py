"""reduce_sum, reduce_mean, reduce_max and reduce_min over `dim` (all dims when empty or reduce_all), Paddle semantics."""
from __future__ import annotations

import numpy as np

from ..kernels import reduce as K
from ..kernels import shape as KS
from ..registry import Attr, defop
from ..shapes import numel

_ATTRS = {"dim": Attr("ints", ()), "keep_dim": Attr(bool, False), "reduce_all": Attr(bool, False)}


def reduced_dims(ctx, shape):
    """The sorted set of reduced dims (negative dims counted from the end); errors name the op and X."""
    rank = len(shape)
    dims = ctx.attrs["dim"]
    if ctx.attrs["reduce_all"] or not dims:
        return tuple(range(rank))
    bad = [d for d in dims if not -rank <= d < rank]
    if bad:
        raise ctx.error(f"dim={list(dims)} is out of range for rank {rank}", "X")
    norm = sorted({d % rank for d in dims})
    if len(norm) != len(dims):
        raise ctx.error(f"dim={list(dims)} repeats a dimension", "X")
    return tuple(norm)


def _infer(ctx):
    dtype = ctx.expect_dtype("X")
    shape = ctx.shape("X")
    red = reduced_dims(ctx, shape)
    if ctx.attrs["keep_dim"]:
        out = tuple(1 if i in red else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in red) or (1,)
    return {"Out": (out, dtype)}


def _plan(ctx, shape):
    """("pnp", pre, n, post) or ("strided", shape, out strides, out size) and the element count reduced."""
    red = reduced_dims(ctx, shape)
    count = numel([shape[i] for i in red])
    groups = []  # [size, reduced?, out stride of the innermost dim]
    ostride = numel([d for i, d in enumerate(shape) if i not in red])
    nout = ostride
    for i, d in enumerate(shape):
        if i not in red:
            ostride //= d
        if d == 1:
            continue
        if groups and groups[-1][1] == (i in red):
            groups[-1][0] *= d
            groups[-1][2] = ostride
        else:
            groups.append([d, i in red, ostride])
    kinds = [r for _, r, _ in groups]
    if kinds in ([], [True], [False], [False, True], [True, False], [False, True, False]):
        k = kinds.index(True) if True in kinds else len(groups)
        pre = numel([g[0] for g in groups[:k]])
        post = numel([g[0] for g in groups[k + 1:]])
        return ("pnp", pre, groups[k][0] if True in kinds else 1, post), count
    sizes = np.array([g[0] for g in groups], np.int64)
    ost = np.array([0 if g[1] else g[2] for g in groups], np.int64)
    return ("strided", sizes, ost, nout), count


def _lower(ctx):
    xs = ctx.shape("X")
    out_shape = _infer(ctx)["Out"][0]
    form, count = _plan(ctx, xs)
    scale = 1.0 / count if ctx.opdef.type == "reduce_mean" else 1.0
    if form[0] == "pnp":
        _, pre, n, post = form
        return lambda x: K.reduce_pnp(x, pre, n, post, scale).reshape(out_shape)
    _, sizes, ost, nout = form
    return lambda x: K.reduce_strided(x, sizes, ost, nout, scale).reshape(out_shape)


def _lower_grad(ctx):
    xs = ctx.shape("X")
    form, count = _plan(ctx, xs)
    scale = 1.0 / count if ctx.opdef.type == "reduce_mean_grad" else 1.0
    if form[0] == "pnp":
        _, pre, n, post = form
        return lambda x, g: K.expand_pnp(g, pre, n, post, scale).reshape(xs)
    _, sizes, ost, _ = form
    return lambda x, g: KS.gather_strided(g, sizes, ost, g.dtype.type(scale)).reshape(xs)


for _type, _what in (("reduce_sum", "sum"), ("reduce_mean", "mean")):
    defop(_type, inputs=("X",), attrs=_ATTRS, infer=_infer, lower=_lower, grad_reads=("X",), grad_lower=_lower_grad,
          doc=f"Out = the {_what} of X over `dim` (all dims if empty or reduce_all); the reduced dims are "
              f"dropped unless keep_dim, and a full reduction gives shape [1].")


def _walk(ctx):
    """The reduction as a strided walk over X: (sizes, out strides, out size)."""
    form, _ = _plan(ctx, ctx.shape("X"))
    if form[0] == "strided":
        return form[1:]
    _, pre, n, post = form
    return np.array([pre, n, post], np.int64), np.array([post, 0, 1], np.int64), pre * post


def _lower_extreme(ctx):
    out_shape = _infer(ctx)["Out"][0]
    sizes, ost, nout = _walk(ctx)
    is_max = ctx.opdef.type == "reduce_max"
    return lambda x: K.extreme_strided(x, sizes, ost, nout, is_max).reshape(out_shape)


def _lower_extreme_grad(ctx):
    xs = ctx.shape("X")
    sizes, ost, _ = _walk(ctx)
    return lambda x, out, g: K.extreme_grad_strided(x, out, g, sizes, ost).reshape(xs)


for _type, _what in (("reduce_max", "maximum"), ("reduce_min", "minimum")):
    defop(_type, inputs=("X",), attrs=_ATTRS, infer=_infer, lower=_lower_extreme, grad_reads=("X", "Out"),
          grad_lower=_lower_extreme_grad,
          doc=f"Out = the {_what} of X over `dim`, shaped as reduce_sum's; NaN propagates. The gradient goes "
              f"to the elements equal to the {_what}, split evenly among ties.")
