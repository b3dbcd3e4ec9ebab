"""elementwise_add/sub/mul/div/max with Paddle (`axis`) or NumPy broadcasting; see docs/broadcasting.md.

Inference places Y against X (`_layout`); lowering, with concrete shapes, canonicalises the pair to one
of three kernel layouts (same shape, (pre, n, post) with a small operand, general strides).
"""
from __future__ import annotations

import numpy as np

from ..kernels import elementwise as K
from ..registry import Attr, Elementwise, defop
from ..shapes import broadcast, numel
from .common import batch_binary, is_large, parallel_size



def opcode(op_type):
    """The kernel's op code for `elementwise_<name>[_grad]`, from the one table in kernels/elementwise.py."""
    return getattr(K, op_type.removesuffix("_grad").removeprefix("elementwise_").upper())


def _check_axis(v):
    return None if v >= -1 else "must be -1 (align trailing dims) or a dimension index >= 0"


_ATTRS = {"axis": Attr(int, -1, _check_axis)}


def layout(xs: tuple, ys: tuple, axis: int):
    """(out_shape, xs padded, ys padded) — both padded to out's rank — or an error message (str)."""
    if axis == -1:  # NumPy: align trailing dims (Paddle's axis=-1 rule is a special case of it)
        r = max(len(xs), len(ys))
        xp, yp = (1,) * (r - len(xs)) + tuple(xs), (1,) * (r - len(ys)) + tuple(ys)
        out = broadcast(xp, yp)
        if out is None:
            return "shapes do not broadcast (NumPy rule, trailing dims aligned)"
        return out, xp, yp
    # Paddle: Y covers X's dims axis .. axis+rank(Y)-1; trailing size-1 dims of Y may overhang
    yt = tuple(ys)
    while yt and yt[-1] == 1 and axis + len(yt) > len(xs):
        yt = yt[:-1]
    if axis + len(yt) > len(xs):
        return f"with axis={axis}, Y's dims do not fit in X's rank {len(xs)}"
    yp = (1,) * axis + yt + (1,) * (len(xs) - axis - len(yt))
    out = broadcast(tuple(xs), yp)
    if out is None or any(o != x and x != -1 for o, x in zip(out, xs)):
        return f"with axis={axis}, Y's dims must equal X's dims {axis}..{axis + len(yt) - 1} (or be 1)"
    return out, tuple(xs), yp


def _infer(ctx):
    dtype = ctx.expect_dtype("X", "Y")
    res = layout(ctx.shape("X"), ctx.shape("Y"), ctx.attrs["axis"])
    if isinstance(res, str):
        raise ctx.error(res, "X", "Y")
    return {"Out": (res[0], dtype)}


def canonical(xs, ys, axis):
    """Concrete shapes -> ("same",) | ("pnp", pre, n, post, small_is_y) | ("strided", shape, xst, yst).

    "pnp": the big operand viewed as (pre, n, post) meets the small one as [n]; a scalar is (1, 1, numel)."""
    res = layout(xs, ys, axis)
    if isinstance(res, str):
        raise ValueError(res)
    out, xp, yp = res
    # drop size-1 output dims, tag each dim by which operand is full along it, merge equal neighbours
    dims = []
    xstride, ystride = numel(xp), numel(yp)
    for o, a, b in zip(out, xp, yp):
        xstride //= a
        ystride //= b
        if o == 1:
            continue
        tag = (a != 1, b != 1)
        if dims and dims[-1][1] == tag:
            dims[-1][0] *= o
            dims[-1][2], dims[-1][3] = xstride, ystride
        else:
            dims.append([o, tag, xstride, ystride])
    tags = [d[1] for d in dims]
    if all(t == (True, True) for t in tags):
        return ("same",)
    for big in (0, 1):
        if all(t[big] for t in tags):
            full = [i for i, t in enumerate(tags) if t[1 - big]]
            if not full:  # the small operand is a scalar
                return ("pnp", 1, 1, numel(out), big == 0)
            if len(full) == 1:  # the small operand is one contiguous run
                k = full[0]
                pre = numel([d[0] for d in dims[:k]])
                post = numel([d[0] for d in dims[k + 1:]])
                return ("pnp", pre, dims[k][0], post, big == 0)
    shape = np.array([d[0] for d in dims], np.int64)
    xst = np.array([d[2] if d[1][0] else 0 for d in dims], np.int64)
    yst = np.array([d[3] if d[1][1] else 0 for d in dims], np.int64)
    return ("strided", shape, xst, yst)


def _lower(ctx):
    op = opcode(ctx.opdef.type)
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    out_shape = layout(xs, ys, ctx.attrs["axis"])[0]
    form = canonical(xs, ys, ctx.attrs["axis"])
    large = parallel_size(numel(out_shape))
    if form[0] == "same":
        kernel = K.same_parallel if large else K.same
        return lambda x, y: kernel(x, y, op).reshape(out_shape)
    if form[0] == "pnp":
        _, pre, n, post, small_is_y = form
        if post == 1:
            kernel, view = (K.rows_parallel if large else K.rows), (pre, n)
        else:
            kernel, view = (K.pnp_parallel if large else K.pnp), (pre, n, post)
        if small_is_y:
            return lambda x, y: kernel(x.reshape(view), y.reshape(n), op, True).reshape(out_shape)
        return lambda x, y: kernel(y.reshape(view), x.reshape(n), op, False).reshape(out_shape)
    _, shape, xst, yst = form
    return lambda x, y: K.strided(x, y, shape, xst, yst, op).reshape(out_shape)


def _lower_grad(ctx):
    op = opcode(ctx.opdef.type)
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    form = canonical(xs, ys, ctx.attrs["axis"])
    large = is_large(ctx.meta("Out@GRAD"))
    if op == K.ADD and form[0] == "same":  # both gradients are dOut itself (grad_returns_view)
        def run(x, y, g):
            return g, g
    elif op == K.ADD and form[0] == "pnp":  # a bias row or channel bias: dOut, and its sums
        _, pre, n, post, small_is_y = form
        col_sum = K.col_sum_parallel if parallel_size(pre * n // 8) else K.col_sum  # see kernels/elementwise.py

        def run(x, y, g):
            ds = col_sum(g.reshape(pre, n)) if post == 1 else K.plane_sum(g.reshape(pre, n, post))
            return (g, ds) if small_is_y else (ds, g)
    elif form[0] == "same":
        kernel = K.grad_same_parallel if large else K.grad_same

        def run(x, y, g):
            return kernel(x, y, g, op)
    elif form[0] == "pnp":
        _, pre, n, post, small_is_y = form
        kernel = K.grad_pnp_parallel if large else K.grad_pnp
        view = (pre, n, post)

        def run(x, y, g):
            if small_is_y:
                return kernel(x.reshape(view), y.reshape(n), g.reshape(view), op, True)
            dy, dx = kernel(y.reshape(view), x.reshape(n), g.reshape(view), op, False)
            return dx, dy
    else:
        _, shape, xst, yst = form

        def run(x, y, g):
            return K.grad_strided(x, y, g, shape, xst, yst, op)

    def fix(dx, dy):
        return dx.reshape(xs), dy.reshape(ys)

    want_x, want_y = ctx.has_output("X@GRAD"), ctx.has_output("Y@GRAD")
    if want_x and want_y:
        return lambda x, y, g: fix(*run(x, y, g))
    if want_x:
        return lambda x, y, g: fix(*run(x, y, g))[0]
    return lambda x, y, g: fix(*run(x, y, g))[1]


def _elementwise(ctx):
    _, xp, yp = layout(ctx.shape("X"), ctx.shape("Y"), ctx.attrs["axis"])
    return Elementwise(K._f, (opcode(ctx.opdef.type), "X", "Y"), shapes={"X": xp, "Y": yp})


def _elementwise_grad(ctx):
    """Fusable only without broadcasting (a broadcast operand's gradient is a reduction)."""
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    if xs != ys or ctx.shape("Out@GRAD") != xs:
        return None
    wanted = tuple(k for k, slot in enumerate(("X@GRAD", "Y@GRAD")) if ctx.has_output(slot))
    return Elementwise(K._df, (opcode(ctx.opdef.type), "X", "Y", "Out@GRAD"), outs=wanted)


_DOCS = {"add": "X + Y", "sub": "X - Y", "mul": "X * Y", "div": "X / Y",
         "max": "max(X, Y) (gradient split 0.5/0.5 at ties)"}
for _name, _formula in _DOCS.items():
    defop(f"elementwise_{_name}", inputs=("X", "Y"), attrs=_ATTRS, infer=_infer, lower=_lower, batch=batch_binary,
          elementwise=_elementwise, grad_reads=("X", "Y"), grad_lower=_lower_grad, grad_picks=False,
          grad_elementwise=_elementwise_grad, grad_returns_view=_name == "add",  # add's dX/dY may be dOut itself
          doc=f"Out = {_formula}, broadcasting Y per `axis` (Paddle) or NumPy when axis=-1.")
