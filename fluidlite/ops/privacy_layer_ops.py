"""Per-example clipping ops (see fluidlite/ops/privacy_ops.py) for the parameters of conv2d, layer_norm
and gru_unit: the norm op gives the [B] squared norms of the per-example gradients, the clipped-sum op
sum_b Scale[b] * g_b, both from the forward's values and the gradients backward made."""
import numpy as np

from ..kernels import basic as KB
from ..kernels import privacy as K
from ..registry import NO_GRAD, Attr, defop
from ..shapes import numel
from .privacy_ops import _param_infer, _split

# ---- conv2d: the linear rule over unfolded patches, per channel group ---------------------------------

_CONV = {"strides": Attr("ints", (1, 1)), "paddings": Attr("ints", (0, 0)), "dilations": Attr("ints", (1, 1)),
         "groups": Attr(int, 1)}


def _unfold(ctx, x, g):
    """[(patches [B, Ho*Wo, C/groups*kh*kw], output gradient [B, Ho*Wo, F/groups]) per channel group] of
    an NCHW conv2d: group k's filters see its input channels only, so its filters are one linear weight."""
    (sh, sw), (ph, pw), (dh, dw) = ctx.attrs["strides"], ctx.attrs["paddings"], ctx.attrs["dilations"]
    groups = ctx.attrs["groups"]
    kh, kw = ctx.shape("Param")[2:]
    n, c = x.shape[:2]
    ho, wo = g.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(xp, (n, ho, wo, c, kh, kw),
                                           (s[0], s[2] * sh, s[3] * sw, s[1], s[2] * dh, s[3] * dw), writeable=False)
    a = np.ascontiguousarray(view).reshape(n, ho * wo, c * kh * kw)
    g3 = g.reshape(n, g.shape[1], ho * wo).transpose(0, 2, 1)
    ca, cg = a.shape[2] // groups, g3.shape[2] // groups
    if groups == 1:
        return [(a, np.ascontiguousarray(g3))]
    return [(np.ascontiguousarray(a[:, :, k * ca:(k + 1) * ca]), np.ascontiguousarray(g3[:, :, k * cg:(k + 1) * cg]))
            for k in range(groups)]


def _conv_norm(ctx, x, g):
    total = None
    for a, gk in _unfold(ctx, x, g):
        sq = K.linear_sq_norms(a, gk)
        total = sq if total is None else total + sq
    return total


def _lower_conv_sum(ctx):
    shape = ctx.shape("Param")

    def run(x, g, w, c):
        parts = []
        for a, gk in _unfold(ctx, x, g):
            gs = K.scale_rows(gk.reshape(1, gk.shape[0], -1), c).reshape(-1, gk.shape[2])
            parts.append(KB.matmul2d_tn(a.reshape(-1, a.shape[2]), gs).T)  # [F/groups, C/groups*kh*kw]
        return np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0]).reshape(shape)

    return run


defop("dp_conv2d_norm", inputs=("Input", "G", "Param"), attrs=_CONV, grad=NO_GRAD,
      infer=lambda ctx: {"Out": ((ctx.shape("G")[0],), ctx.dtype("G"))},
      lower=lambda ctx: lambda x, g, w: _conv_norm(ctx, x, g),
      doc="Out[b] = ||example b's conv2d filter gradient||^2 from its unfolded input patches and output "
          "gradient (the linear ghost norm with one row per output position), summed over the channel "
          "groups; batch first.")
defop("dp_conv2d_clipped_sum", inputs=("Input", "G", "Param", "Scale"), attrs=_CONV, grad=NO_GRAD,
      infer=_param_infer, lower=_lower_conv_sum,
      doc="Out = sum_b Scale[b] * (example b's conv2d filter gradient): per channel group, one product of "
          "the unfolded patches with the scaled output gradient.")


# ---- layer_norm's scale: the bias rule applied to G * x_hat --------------------------------------------

_LN = {"batch_axis": Attr(int, 0), "begin_norm_axis": Attr(int, 1), "epsilon": Attr(float, 1e-5)}


def _ln_scale_pe(ctx, x, mean, var, g):
    begin, eps = ctx.attrs["begin_norm_axis"], ctx.attrs["epsilon"]
    d = numel(x.shape[begin:])
    x2 = np.ascontiguousarray(x).reshape(-1, d)
    xhat = (x2 - mean.reshape(-1, 1)) / np.sqrt(var.reshape(-1, 1) + eps)
    geff = (np.ascontiguousarray(g).reshape(-1, d) * xhat).reshape(x.shape)
    return K.bias_per_example(geff.reshape(_split(x.shape, ctx.attrs["batch_axis"], (begin, len(x.shape), len(x.shape)))))


defop("dp_layer_norm_scale_norm", inputs=("X", "Mean", "Variance", "G", "Param"), attrs=_LN, grad=NO_GRAD,
      infer=lambda ctx: {"Out": ((ctx.shape("G")[ctx.attrs["batch_axis"]],), ctx.dtype("G"))},
      lower=lambda ctx: lambda x, m, v, g, w: K.row_sq_norms(_ln_scale_pe(ctx, x, m, v, g)),
      doc="Out[b] = ||example b's layer_norm scale gradient||^2: G * (X normalised) summed over example b's rows.")
defop("dp_layer_norm_scale_clipped_sum", inputs=("X", "Mean", "Variance", "G", "Param", "Scale"), attrs=_LN,
      grad=NO_GRAD, infer=_param_infer,
      lower=lambda ctx: lambda x, m, v, g, w, c: K.weighted_row_sum(_ln_scale_pe(ctx, x, m, v, g), c),
      doc="Out = sum_b Scale[b] * (example b's layer_norm scale gradient).")


# ---- gru_unit's weight: two linear weights, one per column block ----------------------------------------
# The unit computes pre-activations [u, r] = Input_ur + HiddenPrev @ W[:, :2H] (+ bias) and
# c = Input_c + ResetHiddenPrev @ W[:, 2H:] (+ bias), so the gradient of those pre-activations is the
# gradient of Input (G, [B, 3H]), and W's per-example gradient is [HiddenPrev^T G_ur, ResetHiddenPrev^T G_c]
# summed over the unrolled steps that share W: the linear ghost norm of each block.

def _gru_blocks(arrays, stacked):
    """[(A, G) of the u,r block, (A, G) of the candidate block]; each [B, T, .] (stacked) or [T*B, .]."""
    n = len(arrays) // 3
    hp, rh, gs = arrays[:n], arrays[n:2 * n], arrays[2 * n:3 * n]
    hid = hp[0].shape[1]
    join = (lambda xs: np.stack(xs, axis=1)) if stacked else np.concatenate
    g = join(gs)
    g_ur, g_c = g[..., :2 * hid], g[..., 2 * hid:]
    return [(join(hp), np.ascontiguousarray(g_ur)), (join(rh), np.ascontiguousarray(g_c))]


def _gru_norm(*arrays):
    (a1, g1), (a2, g2) = _gru_blocks(arrays, True)
    return K.linear_sq_norms(a1, g1) + K.linear_sq_norms(a2, g2)


def _gru_sum(*arrays):
    *arrays, _, c = arrays
    blocks = _gru_blocks(arrays, False)
    reps = blocks[0][0].shape[0] // c.shape[0]  # the unrolled steps, each [B, .]
    out = []
    for a, g in blocks:
        gs = K.scale_rows(g.reshape(reps, c.shape[0], g.shape[1]), c).reshape(g.shape)
        out.append(KB.matmul2d_tn(a, gs))
    return np.concatenate(out, axis=1)


_GRU_INPUTS = ("HiddenPrev", "ResetHiddenPrev", "G")
defop("dp_gru_weight_norm", inputs=_GRU_INPUTS, duplicable=_GRU_INPUTS, grad=NO_GRAD,
      infer=lambda ctx: {"Out": ((ctx.shape("G")[0],), ctx.dtype("G"))}, lower=lambda ctx: _gru_norm,
      doc="Out[b] = ||example b's gru_unit weight gradient||^2 over the steps k sharing it: the linear ghost "
          "norm of HiddenPrev_k with G_k[:, :2H] plus that of ResetHiddenPrev_k with G_k[:, 2H:] (G_k the "
          "gradient of step k's Input, which is the gradient of the unit's pre-activations).")
defop("dp_gru_weight_clipped_sum", inputs=_GRU_INPUTS + ("Param", "Scale"), duplicable=_GRU_INPUTS, grad=NO_GRAD,
      infer=_param_infer, lower=lambda ctx: _gru_sum,
      doc="Out = sum_b Scale[b] * (example b's gru_unit weight gradient) = [HP^T diag(Scale) G_ur, "
          "RH^T diag(Scale) G_c] with the rows of every step stacked (book-keeping).")
