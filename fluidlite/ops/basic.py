"""scale, tanh, mul, mean, sum and sum_grad: the ops the backward builder and `fc` rely on."""
from ..kernels import basic as K
from ..registry import Attr, Elementwise, defop
from ..shapes import dims_match, numel
from .common import batch_elementwise, float_same_as, grad_op, is_large, parallel_size, positive


def _scale_bias(attrs):
    """(scale, bias) such that Out = X * scale + bias."""
    s, b = attrs["scale"], attrs["bias"]
    return (s, b) if attrs["bias_after_scale"] else (s, b * s)


def _lower_scale(ctx):
    """Batch-polymorphic: serial or parallel is chosen on x's size at run time."""
    serial, parallel = K.scale, K.scale_parallel
    s, b = _scale_bias(ctx.attrs)
    return lambda x: (parallel if parallel_size(x.size) else serial)(x, s, b)


defop("scale", inputs=("X",),
      attrs={"scale": Attr(float, 1.0), "bias": Attr(float, 0.0), "bias_after_scale": Attr(bool, True)},
      infer=float_same_as("X"), lower=_lower_scale, batch=batch_elementwise, batch_poly=True,
      elementwise=lambda ctx: Elementwise(K._scale_el, ("X", *_scale_bias(ctx.attrs))),
      grad=lambda g: [grad_op("scale", g, {"X": g.og("Out")}, {"Out": g.ig("X")},
                              {"scale": g.attrs["scale"], "bias": 0.0, "bias_after_scale": True})],
      doc="Out = scale * X + bias (or scale * (X + bias) when bias_after_scale is false).")

defop("tanh", inputs=("X",), infer=float_same_as("X"), kernel=K.tanh, batch=batch_elementwise,
      elementwise=lambda ctx: Elementwise(K._tanh_el, ("X",)),
      grad_reads=("Out",), grad_kernel=K.tanh_grad, grad_infer={"X@GRAD": "Out"},
      grad_elementwise=lambda ctx: Elementwise(K._tanh_grad_el, ("Out", "Out@GRAD")), doc="Out = tanh(X), elementwise.")


def _mul_infer(ctx):
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    xd, yd = ctx.attrs["x_num_col_dims"], ctx.attrs["y_num_col_dims"]
    if not 0 < xd < len(xs) or not 0 < yd < len(ys):
        raise ctx.error(f"x_num_col_dims={xd}, y_num_col_dims={yd} do not fit the ranks", "X", "Y")
    ctx.expect_dtype("X", "Y")
    k_x, k_y = numel(xs[xd:]), numel(ys[:yd])
    if not dims_match(k_x, k_y):
        raise ctx.error(f"inner dimensions differ: X flattens to [*, {k_x}], Y to [{k_y}, *]", "X", "Y")
    return {"Out": (xs[:xd] + ys[yd:], ctx.dtype("X"))}


def _as2d(shape, ndims):
    return (numel(shape[:ndims]), numel(shape[ndims:]))


def _lower_mul(ctx):
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    xd, yd = ctx.attrs["x_num_col_dims"], ctx.attrs["y_num_col_dims"]
    x2, y2 = _as2d(xs, xd), _as2d(ys, yd)
    out_shape = xs[:xd] + ys[yd:]
    return lambda x, y: K.matmul2d(x.reshape(x2), y.reshape(y2)).reshape(out_shape)


def _lower_mul_grad(ctx):
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    xd, yd = ctx.attrs["x_num_col_dims"], ctx.attrs["y_num_col_dims"]
    x2, y2 = _as2d(xs, xd), _as2d(ys, yd)
    o2 = (x2[0], y2[1])
    want_x, want_y = ctx.has_output("X@GRAD"), ctx.has_output("Y@GRAD")

    def dx(dout, y):
        return K.matmul2d_nt(dout.reshape(o2), y.reshape(y2)).reshape(xs)

    def dy(x, dout):
        return K.matmul2d_tn(x.reshape(x2), dout.reshape(o2)).reshape(ys)

    if want_x and want_y:
        return lambda x, y, dout: (dx(dout, y), dy(x, dout))
    if want_x:
        return lambda x, y, dout: dx(dout, y)
    return lambda x, y, dout: dy(x, dout)


def _batch_mul(attrs, batched):
    """X's rows gain a leading dimension: flatten one more; a batched weight Y cannot be batched."""
    return None if "Y" in batched else {**attrs, "x_num_col_dims": attrs["x_num_col_dims"] + 1}


_MUL_ATTRS = {"x_num_col_dims": Attr(int, 1), "y_num_col_dims": Attr(int, 1)}
defop("mul", inputs=("X", "Y"), attrs=_MUL_ATTRS, infer=_mul_infer, lower=_lower_mul, batch=_batch_mul,
      grad_reads=("X", "Y"), grad_lower=_lower_mul_grad, grad_picks=False,
      doc="Out = flatten(X, x_num_col_dims) @ flatten(Y, y_num_col_dims), reshaped back (fc's product).")


def _mean_infer(ctx):
    ctx.expect_dtype("X")
    return {"Out": ((1,), ctx.dtype("X"))}


defop("mean", inputs=("X",), infer=_mean_infer, kernel=K.mean, grad_reads=("X",), grad_kernel=K.mean_grad,
      doc="Out = [mean of all elements of X], shape [1].")


def _sum_infer(ctx):
    first = ctx.meta("X")
    ctx.expect_dtype("X")
    for m in ctx.metas("X")[1:]:
        if len(m.shape) != len(first.shape) or not all(map(dims_match, m.shape, first.shape)):
            raise ctx.error(f"all inputs need one shape; {m.name!r} is {list(m.shape)}, {first.name!r} is {list(first.shape)}", "X")
    shape = tuple(max(ds) for ds in zip(*(m.shape for m in ctx.metas("X"))))
    return {"Out": (shape, first.dtype)}


def _wanted(names):
    return [n for n in names if n is not None]


def _lower_sum(ctx):
    """One kernel per dtype whatever the number of inputs (a varargs kernel compiled once per count)."""
    metas = ctx.metas("X")
    add_into = K.add_into_parallel if is_large(metas[0]) else K.add_into
    reuse_first = "X" in ctx.overwritable
    if len(metas) == 2 and not reuse_first:
        return K.add
    shape = tuple(max(ds) for ds in zip(*(m.shape for m in metas)))

    def run(*xs):
        acc = xs[0] if reuse_first else xs[0].copy()
        for x in xs[1:]:
            add_into(acc, x)
        return acc.reshape(shape)

    return run


defop("sum", inputs=("X",), duplicable=("X",), infer=_sum_infer, lower=_lower_sum,
      fold=lambda ctx: K.add_into_parallel if is_large(ctx.meta("X")) else K.add_into,
      grad=lambda g: [grad_op("sum_grad", g, {"Out@GRAD": g.og("Out")}, {"X@GRAD": _wanted(g.ig("X"))},
                              {"n": len(_wanted(g.ig("X")))})],
      doc="Out = X[0] + X[1] + ... (same shapes); also accumulates a gradient's contributions.")


def _lower_sum_grad(ctx):
    n = ctx.attrs["n"]
    return (lambda g: g) if n == 1 else (lambda g: (g,) * n)


# Every X[k]@GRAD is Out@GRAD itself, not a copy (an unrolled RNN's fc([x_t, h_prev]) has one sum per
# step); returns_view keeps the alias pass from letting a kernel overwrite one while another is read.
defop("sum_grad", inputs=("Out@GRAD",), outputs=("X@GRAD",), duplicable=("X@GRAD",), returns_view=True,
      attrs={"n": Attr(int, 1, positive)},
      infer=lambda ctx: {"X@GRAD": [(ctx.shape("Out@GRAD"), ctx.dtype("Out@GRAD"))] * ctx.attrs["n"]},
      lower=_lower_sum_grad, batch_poly=True,
      doc="X@GRAD[k] = Out@GRAD for every k: the same array, shared (the gradient of `sum`).")
