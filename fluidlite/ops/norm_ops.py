"""batch_norm and layer_norm (kernels in kernels/norm.py).

batch_norm updates its moving statistics itself: its MeanOut / VarianceOut outputs name the
persistable Mean / Variance inputs (as an optimizer's ParamOut names Param), so the executor hands
it the scope's arrays to update in place and checkpoints see the new values. With `is_test` it
normalises with those statistics and returns them unchanged.
"""
import numba
import numpy as np

from ..kernels import norm as K
from ..registry import Attr, defop
from ..shapes import numel
from .common import parallel_size

_BN_ATTRS = {"momentum": Attr(float, 0.9, lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
             "epsilon": Attr(float, 1e-5, lambda v: None if v >= 0 else "must be >= 0"),
             "is_test": Attr(bool, False)}
_BN_STATS = ("Scale", "Bias", "Mean", "Variance")
_BN_SIDE = ("MeanOut", "VarianceOut", "SavedMean", "SavedVariance")


def _bn_shapes(ctx):
    xs = ctx.shape("X")
    if len(xs) not in (2, 4):
        raise ctx.error(f"X must be 2-D [N, C] or 4-D [N, C, H, W], got rank {len(xs)}", "X")
    c = xs[1]
    if c < 1:
        raise ctx.error(f"X needs a known channel count (axis 1), got {list(xs)}", "X")
    for slot in _BN_STATS:
        if ctx.has(slot) and ctx.shape(slot) != (c,):
            raise ctx.error(f"{slot} must have shape [{c}] (one entry per channel of X), got "
                            f"{list(ctx.shape(slot))}", "X", slot)
    return xs, c


def _bn_infer(ctx):
    dtype = ctx.expect_dtype("X", *_BN_STATS)
    xs, c = _bn_shapes(ctx)
    return {"Y": (xs, dtype), **{s: ((c,), dtype) for s in _BN_SIDE}}


def _x3(shape):
    return (shape[0], shape[1], numel(shape[2:]))


def _is_parallel(shape):
    return parallel_size(numel(shape)) and shape[1] > 1


def _lower_bn(ctx):
    xs = ctx.shape("X")
    kernel = K.batch_norm_parallel if _is_parallel(xs) else K.batch_norm
    eps, momentum, is_test = ctx.attrs["epsilon"], ctx.attrs["momentum"], ctx.attrs["is_test"]
    # update the statistics in the scope's arrays when the outputs name the inputs, else in copies
    inplace = tuple(s in ctx.overwritable for s in ("Mean", "Variance"))

    def run(x, scale, bias, mean, var):
        mean_out = mean if inplace[0] else mean.copy()
        var_out = var if inplace[1] else var.copy()
        y, saved = kernel(np.ascontiguousarray(x).reshape(_x3(x.shape)), scale, bias, mean, var, eps, momentum,
                          is_test, mean_out, var_out)
        return y.reshape(x.shape), mean_out, var_out, saved[0], saved[1]

    return run


def _lower_bn_grad(ctx):
    xs = ctx.shape("X")
    kernel = K.batch_norm_grad_parallel if _is_parallel(xs) else K.batch_norm_grad
    is_test = ctx.attrs["is_test"]
    x3 = _x3(xs)

    def run(x, scale, mean, inv, dy):
        saved = np.stack((mean, inv))
        dx, dscale, dbias = kernel(np.ascontiguousarray(x).reshape(x3), np.ascontiguousarray(dy).reshape(x3),
                                   scale, saved, is_test)
        return dx.reshape(xs), dscale, dbias

    return run


defop("batch_norm", inputs=("X",) + _BN_STATS, outputs=("Y",) + _BN_SIDE, attrs=_BN_ATTRS, infer=_bn_infer,
      lower=_lower_bn, nondiff_outputs=_BN_SIDE, grad_reads=("X", "Scale", "SavedMean", "SavedVariance"),
      grad_wrt=("X", "Scale", "Bias"), grad_lower=_lower_bn_grad,
      grad_infer={"X@GRAD": "X", "Scale@GRAD": "Scale", "Bias@GRAD": "Scale"},
      doc="Per channel c (axis 1 of a 2-D or 4-D X): Y = (X - mean_c) / sqrt(var_c + epsilon) * Scale_c + "
          "Bias_c. Training: the batch's mean and biased variance, and MeanOut = momentum * Mean + "
          "(1 - momentum) * batch mean (VarianceOut likewise); name MeanOut / VarianceOut like Mean / "
          "Variance to update them in place. is_test: the Mean / Variance inputs, returned unchanged. "
          "SavedMean / SavedVariance: the mean and 1 / sqrt(var + epsilon) used (for the gradient).")

# ---------------------------------------------------------------- layer_norm

_LN_ATTRS = {"begin_norm_axis": Attr(int, 1), "epsilon": Attr(float, 1e-5, lambda v: None if v >= 0 else "must be >= 0")}


def _ln_shapes(ctx):
    """(rows or -1, normalised size) of X at begin_norm_axis; checks Scale / Bias."""
    xs, axis = ctx.shape("X"), ctx.attrs["begin_norm_axis"]
    if not 1 <= axis < len(xs):
        raise ctx.error(f"begin_norm_axis={axis} is out of range [1, {len(xs)}) for a rank-{len(xs)} X", "X")
    d = numel(xs[axis:])
    if d < 1:
        raise ctx.error(f"the normalised dimensions {list(xs[axis:])} (from begin_norm_axis={axis}) must be known",
                        "X")
    for slot in ("Scale", "Bias"):
        if ctx.has(slot) and ctx.shape(slot) != (d,):
            raise ctx.error(f"{slot} must have shape [{d}] (X's dimensions from axis {axis} flattened), got "
                            f"{list(ctx.shape(slot))}", "X", slot)
    return numel(xs[:axis]), d


def _ln_infer(ctx):
    dtype = ctx.expect_dtype("X", "Scale", "Bias")
    rows, _ = _ln_shapes(ctx)
    return {"Y": (ctx.shape("X"), dtype), "Mean": ((rows,), dtype), "Variance": ((rows,), dtype)}


def _ln_plan(ctx):
    rows, d = _ln_shapes(ctx)
    parallel = rows > 1 and parallel_size(rows * d)
    return rows, d, parallel, 4 * numba.get_num_threads() if parallel else 1


def _lower_ln(ctx):
    rows, d, parallel, nblk = _ln_plan(ctx)
    kernel = K.layer_norm_parallel if parallel else K.layer_norm
    dtype, eps = ctx.dtype("X"), ctx.attrs["epsilon"]
    has_scale, has_bias = ctx.has("Scale"), ctx.has("Bias")
    ones, zeros = np.ones(d, dtype), np.zeros(d, dtype)

    def run(x, *params):
        params = list(params)
        scale = params.pop(0) if has_scale else ones
        bias = params.pop(0) if has_bias else zeros
        y, mean, var = kernel(_c2(x, rows, d), scale, bias, eps, nblk)
        return y.reshape(x.shape), mean, var

    return run


def _c2(a, rows, d):
    return np.ascontiguousarray(a).reshape(rows, d)


def _ln_grad_infer(ctx):
    ctx.expect_dtype("X", "Scale", "Y@GRAD")
    _, d = _ln_shapes(ctx)
    return {"X@GRAD": (ctx.shape("X"), ctx.dtype("X")), "Scale@GRAD": ((d,), ctx.dtype("X")),
            "Bias@GRAD": ((d,), ctx.dtype("X"))}


def _lower_ln_grad(ctx):
    rows, d, parallel, nblk = _ln_plan(ctx)
    kernel = K.layer_norm_grad_parallel if parallel else K.layer_norm_grad
    eps, has_scale = ctx.attrs["epsilon"], ctx.has("Scale")
    ones = np.ones(d, ctx.dtype("X"))

    def run(x, *rest):
        scale, mean, var, dy = rest if has_scale else (ones,) + rest
        dx, dscale, dbias = kernel(_c2(x, rows, d), _c2(dy, rows, d), scale, mean, var, eps, nblk)
        return dx.reshape(x.shape), dscale, dbias

    return run


defop("layer_norm", inputs=("X", "Scale", "Bias"), outputs=("Y", "Mean", "Variance"), optional=("Scale", "Bias"),
      attrs=_LN_ATTRS, infer=_ln_infer, lower=_lower_ln, nondiff_outputs=("Mean", "Variance"),
      grad_reads=("X", "Scale", "Mean", "Variance"), grad_lower=_lower_ln_grad, grad_infer=_ln_grad_infer,
      doc="Each row of X flattened at begin_norm_axis ([prod(dims before), prod(dims from)]) is normalised: "
          "Y = (X - mean) / sqrt(var + epsilon) * Scale + Bias, biased variance; Scale and Bias (optional) "
          "have the row's length. Mean and Variance (one per row, computed in X's dtype) are saved for the "
          "gradient.")
