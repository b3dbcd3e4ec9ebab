"""Ops the plan compiler introduces (never appended by layers): `matmul_tn_sum`, the batched weight
gradient of a recurrent product (compiler/batch_grad.py); `mul_acc`, a product added into another
value's buffer, and `mul_grad_decay_acc`, a weight gradient added into momentum's decayed velocity
(both compiler/mul_acc.py)."""
import numpy as np

from ..kernels import basic as K
from ..registry import NO_GRAD, Attr, defop
from .basic import _MUL_ATTRS, _as2d, _mul_infer
from .common import is_large


def _stacked_y(xs, ys) -> bool:
    """Y is one [len(X), B, N] array (its k-th slice pairs with X[k]) rather than one [B_k, N] per X."""
    return len(ys) == 1 and len(ys[0].shape) == 3


def _tn_sum_infer(ctx):
    xs, ys = ctx.metas("X"), ctx.metas("Y")
    dtype = ctx.expect_dtype("X", "Y")
    if not xs or not ys:
        raise ctx.error("needs at least one X and one Y", "X", "Y")
    if _stacked_y(xs, ys):
        y = ys[0].shape
        if y[0] != len(xs) or any(len(x.shape) != 2 or x.shape != xs[0].shape or x.shape[0] != y[1] for x in xs):
            raise ctx.error(f"a stacked Y must be [{len(xs)}, B, N] with every X [B, M]", "X", "Y")
        return {"Out": ((xs[0].shape[1], y[2]), dtype)}
    if len(xs) != len(ys):
        raise ctx.error(f"needs as many X as Y (or one stacked Y), got {len(xs)} and {len(ys)}", "X", "Y")
    for x, y in zip(xs, ys):
        if len(x.shape) != 2 or len(y.shape) != 2 or x.shape[0] != y.shape[0] or x.shape[1:] != xs[0].shape[1:] \
                or y.shape[1:] != ys[0].shape[1:]:
            raise ctx.error("every X must be [B_k, M] and Y [B_k, N]", "X", "Y")
    return {"Out": ((xs[0].shape[1], ys[0].shape[1]), dtype)}


def _lower_tn_sum(ctx):
    n = len(ctx.metas("X"))
    # one [M, sum B_k] @ [sum B_k, N] product instead of n products with K = B_k
    if _stacked_y(ctx.metas("X"), ctx.metas("Y")):
        cols = ctx.shape("Y")[2]
        return lambda *args: K.matmul2d_tn(np.concatenate(args[:n]), args[n].reshape(-1, cols))
    return lambda *args: K.matmul2d_tn(np.concatenate(args[:n]), np.concatenate(args[n:]))


defop("matmul_tn_sum", inputs=("X", "Y"), duplicable=("X", "Y"), infer=_tn_sum_infer, lower=_lower_tn_sum,
      grad=NO_GRAD, doc="Out = sum_k X_k^T @ Y_k, computed as one product of the row-stacked X_k and Y_k; "
                        "Y may also be one array [len(X), B, N] holding the Y_k already stacked.")


def _row_acc(ctx) -> bool:
    """Acc is one row added to every row of the product (a bias), not an array of its shape."""
    acc, ys = ctx.shape("Acc"), ctx.shape("Y")
    return len(acc) == 1 and ys[ctx.attrs["y_num_col_dims"]:] == acc


def _mul_acc_infer(ctx):
    out = _mul_infer(ctx)["Out"]
    acc = ctx.meta("Acc")
    if (acc.shape != out[0] and not _row_acc(ctx)) or acc.dtype != out[1]:
        raise ctx.error(f"Acc is {list(acc.shape)} {acc.dtype}, the product {list(out[0])} {out[1]} "
                        f"(Acc must be the product's shape or its last dim)", "Acc", "X", "Y")
    return {"Out": out}


def _lower_mul_acc(ctx):
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    x2, y2 = _as2d(xs, ctx.attrs["x_num_col_dims"]), _as2d(ys, ctx.attrs["y_num_col_dims"])
    o2 = (x2[0], y2[1])
    if _row_acc(ctx):
        out_shape = _mul_infer(ctx)["Out"][0]
        return lambda x, y, row: K.matmul_row_acc(x.reshape(x2), y.reshape(y2), row).reshape(out_shape)
    in_place = "Acc" in ctx.overwritable

    def run(x, y, acc):
        out = acc if in_place and acc.flags.c_contiguous and acc.flags.writeable else acc.copy()
        K.matmul_acc(x.reshape(x2), y.reshape(y2), out.reshape(o2))
        return out

    return run


defop("mul_acc", inputs=("X", "Y", "Acc"), attrs=_MUL_ATTRS, infer=_mul_acc_infer, lower=_lower_mul_acc,
      grad=NO_GRAD, doc="Out = Acc + mul(X, Y), the product added by BLAS into Acc's buffer when the plan "
                        "lets it be overwritten (else into a copy); a 1-D Acc of the product's last dim (a bias) "
                        "is added to every row.")


def _decay_acc_2d(ctx):
    """(X's 2-D form [K, M], Acc's [M, N]) for `mul_grad_decay_acc`."""
    x2 = _as2d(ctx.shape("X"), ctx.attrs["x_num_col_dims"])
    acc = int(np.prod(ctx.shape("Acc")))
    return x2, (x2[1], acc // x2[1] if x2[1] else 0)


def _decay_acc_infer(ctx):
    dtype = ctx.expect_dtype("X", "D", "Acc")
    (k, m), (_, n) = _decay_acc_2d(ctx)
    d = int(np.prod(ctx.shape("D")))
    if m * n != int(np.prod(ctx.shape("Acc"))) or d != k * n:
        raise ctx.error(f"X flattens to [{k}, {m}]: D ({list(ctx.shape('D'))}) must hold [{k}, N] and Acc "
                        f"({list(ctx.shape('Acc'))}) [{m}, N]", "X", "D", "Acc")
    return {"Out": (ctx.shape("Acc"), dtype)}


def _lower_decay_acc(ctx):
    x2, a2 = _decay_acc_2d(ctx)
    d2 = (x2[0], a2[1])
    beta = ctx.dtype("Acc").type(ctx.attrs["beta"])  # in Acc's precision, as momentum's kernel computes
    in_place = "Acc" in ctx.overwritable
    kernel = K.matmul_tn_decay_acc_parallel if is_large(ctx.meta("Acc")) else K.matmul_tn_decay_acc

    def run(x, d, acc):
        out = acc if in_place and acc.flags.c_contiguous and acc.flags.writeable else acc.copy()
        kernel(x.reshape(x2), d.reshape(d2), out.reshape(a2), beta)
        return out

    return run


defop("mul_grad_decay_acc", inputs=("X", "D", "Acc"), attrs={"x_num_col_dims": _MUL_ATTRS["x_num_col_dims"],
                                                             "beta": Attr(float, 1.0)},
      infer=_decay_acc_infer, lower=_lower_decay_acc, grad=NO_GRAD,
      doc="Out = beta * Acc + flatten(X, x_num_col_dims)^T @ D (mul's Y gradient for output gradient D, added "
          "into a decayed Acc: momentum's velocity), in Acc's shape; into Acc's buffer when the plan lets it "
          "be overwritten.")
