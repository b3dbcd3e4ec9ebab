"""Ops the plan compiler introduces (never appended by layers): `matmul_tn_sum`, the batched weight
gradient of a recurrent product (compiler/batch_grad.py)."""
import numpy as np

from ..kernels import basic as K
from ..registry import NO_GRAD, defop


def _tn_sum_infer(ctx):
    xs, ys = ctx.metas("X"), ctx.metas("Y")
    dtype = ctx.expect_dtype("X", "Y")
    if len(xs) != len(ys) or not xs:
        raise ctx.error(f"needs as many X as Y, got {len(xs)} and {len(ys)}", "X", "Y")
    for x, y in zip(xs, ys):
        if len(x.shape) != 2 or len(y.shape) != 2 or x.shape[0] != y.shape[0] or x.shape[1:] != xs[0].shape[1:] \
                or y.shape[1:] != ys[0].shape[1:]:
            raise ctx.error("every X must be [B_k, M] and Y [B_k, N]", "X", "Y")
    return {"Out": ((xs[0].shape[1], ys[0].shape[1]), dtype)}


def _lower_tn_sum(ctx):
    n = len(ctx.metas("X"))

    def run(*args):
        # one [M, sum B_k] @ [sum B_k, N] product instead of n products with K = B_k
        return K.matmul2d_tn(np.concatenate(args[:n]), np.concatenate(args[n:]))

    return run


defop("matmul_tn_sum", inputs=("X", "Y"), duplicable=("X", "Y"), infer=_tn_sum_infer, lower=_lower_tn_sum,
      grad=NO_GRAD, doc="Out = sum_k X_k^T @ Y_k, computed as one product of the row-stacked X_k and Y_k.")
