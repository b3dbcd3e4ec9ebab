"""Ops of per-example gradient clipping (DP-SGD, see fluidlite/per_example.py and docs/privacy.md).

Each parameter kind has a norm op ([B] squared norms of the per-example gradients) and a clipped-sum
op (sum_b scale[b] * g_b), both computed from the forward activations and the output gradients the
backward pass made: `dp_linear_*` (mul/matmul weights), `dp_bias_*` (elementwise_add biases),
`dp_embedding_*` (lookup_table). A parameter read by several ops (a weight shared by unrolled RNN
steps) passes all its uses in the duplicable slots; each use's attributes are lists, one entry per use.
The batch dimension of each input is given by attribute (it is the dimension marked -1 at build time).
"""
import math

import numpy as np

from ..kernels import basic as KB
from ..kernels import privacy as K
from ..random_state import STATE_DTYPE, STATE_SHAPE, fresh_state, stream_key
from ..registry import NO_GRAD, Attr, defop
from ..shapes import numel
from .init_ops import random_state_infer


def _positive(v):
    return None if v > 0 else "must be > 0"


def _split(shape, axis, ends):
    """shape -> (P, B, M, ...) sizes: dims before the batch axis, the batch, dims up to each of `ends`."""
    sizes = [numel(shape[:axis]), shape[axis]]
    start = axis + 1
    for end in ends:
        sizes.append(numel(shape[start:end]))
        start = end
    return tuple(sizes)


def _batch_major(x, axis, row_end):
    """x -> [B, S, F]: the rows of each example (dims before `row_end` other than the batch) in S."""
    p, b, m, f = _split(x.shape, axis, (row_end, len(x.shape)))
    x4 = np.ascontiguousarray(x).reshape(p, b, m, f)
    if p == 1:
        return x4.reshape(b, m, f)
    return np.ascontiguousarray(x4.transpose(1, 0, 2, 3)).reshape(b, p * m, f)


def _batch_of(ctx, slot="G", k=0):
    return ctx.shape(slot, k)[ctx.attrs["batch_axes"][k]]


def _sq_infer(ctx):
    return {"Out": ((_batch_of(ctx),), ctx.dtype("G"))}


def _param_infer(ctx):
    return {"Out": (ctx.shape("Param"), ctx.dtype("Param"))}


_USES = {"batch_axes": Attr("ints", ()), "row_dims": Attr("ints", ())}
_LINEAR = {**_USES, "scales": Attr("floats", ()), "transposes": Attr("ints", ())}


def _linear_operands(ctx, arrays):
    n = len(ctx.metas("A"))
    axes, rows = ctx.attrs["batch_axes"], ctx.attrs["row_dims"]
    return [(arrays[k], arrays[n + k], axes[k], rows[k], ctx.attrs["scales"][k]) for k in range(n)]


def _lower_linear_norm(ctx):
    def run(*arrays):
        parts = _linear_operands(ctx, arrays)
        a = [_batch_major(x, ax, r) for x, _, ax, r, _ in parts]
        g = [_batch_major(y * s if s != 1.0 else y, ax, r) for _, y, ax, r, s in parts]
        if len(parts) > 1:
            a, g = [np.concatenate(a, axis=1)], [np.concatenate(g, axis=1)]
        return K.linear_sq_norms(a[0], g[0])

    return run


def _lower_linear_sum(ctx):
    dtype = ctx.dtype("Param")
    transpose = bool(ctx.attrs["transposes"]) and ctx.attrs["transposes"][0]

    def run(*arrays):
        *arrays, _, c = arrays
        rows_a, rows_g = [], []
        for x, y, ax, r, s in _linear_operands(ctx, arrays):
            p, b, q = numel(y.shape[:ax]), y.shape[ax], numel(y.shape[ax + 1:])
            gs = K.scale_rows(np.ascontiguousarray(y).reshape(p, b, q), c)
            rows_a.append(np.ascontiguousarray(x).reshape(-1, numel(x.shape[r:])))
            g2 = gs.reshape(-1, numel(y.shape[r:]))
            rows_g.append(g2 * dtype.type(s) if s != 1.0 else g2)
        if len(rows_a) > 1:  # every use's rows in one product (a weight shared by T steps: one BLAS call)
            rows_a, rows_g = [np.concatenate(rows_a)], [np.concatenate(rows_g)]
        out = KB.matmul2d_tn(rows_a[0], rows_g[0])
        return np.ascontiguousarray(out.T) if transpose else out

    return run


defop("dp_linear_norm", inputs=("A", "G"), duplicable=("A", "G"), attrs=_LINEAR, infer=_sq_infer,
      lower=_lower_linear_norm, grad=NO_GRAD,
      doc="Out[b] = ||sum_k scales[k] * A_k[b]^T G_k[b]||_F^2: the squared norm of example b's gradient of a "
          "weight read by ops k (A_k the op's input, G_k its output gradient, rows grouped by example).")
defop("dp_linear_clipped_sum", inputs=("A", "G", "Param", "Scale"), duplicable=("A", "G"), attrs=_LINEAR,
      infer=_param_infer, lower=_lower_linear_sum, grad=NO_GRAD,
      doc="Out = sum_k scales[k] * A_k^T diag(Scale) G_k (transposed where transposes[k]): the clipped sum "
          "of per-example weight gradients without forming them (book-keeping, Bu et al. 2023).")

_BIAS = {**_USES, "bias_ends": Attr("ints", ())}


def _bias_pe(ctx, gs):
    out = None
    for k, g in enumerate(gs):
        ax, start, end = ctx.attrs["batch_axes"][k], ctx.attrs["row_dims"][k], ctx.attrs["bias_ends"][k]
        g5 = np.ascontiguousarray(g).reshape(_split(g.shape, ax, (start, end, len(g.shape))))
        pe = K.bias_per_example(g5)
        out = pe if out is None else out + pe
    return out


defop("dp_bias_norm", inputs=("G",), duplicable=("G",), attrs=_BIAS, infer=_sq_infer, grad=NO_GRAD,
      lower=lambda ctx: lambda *gs: K.row_sq_norms(_bias_pe(ctx, gs)),
      doc="Out[b] = ||example b's bias gradient||^2: G_k summed over every dim but the batch and the bias "
          "dims [row_dims[k], bias_ends[k]).")
defop("dp_bias_clipped_sum", inputs=("G", "Param", "Scale"), duplicable=("G",), attrs=_BIAS,
      infer=_param_infer, grad=NO_GRAD,
      lower=lambda ctx: lambda *a: K.weighted_row_sum(_bias_pe(ctx, a[:-2]), a[-1]).reshape(ctx.shape("Param")),
      doc="Out = sum_b Scale[b] * (example b's bias gradient).")

_EMB = {**_USES, "padding_idx": Attr("ints", ())}


def _emb_operands(ctx, arrays):
    n = len(ctx.metas("Ids"))
    ids, gs = [], []
    for k in range(n):
        x, g = arrays[k], arrays[n + k]
        ax, r, pad = ctx.attrs["batch_axes"][k], ctx.attrs["row_dims"][k], ctx.attrs["padding_idx"][k]
        x = x.reshape(g.shape[:-1])
        if pad >= 0:
            x = np.where(x == pad, -1, x)
        ids.append(_batch_major(x[..., None], ax, r)[:, :, 0])
        gs.append(_batch_major(g, ax, r))
    if n > 1:
        return np.concatenate(ids, axis=1), np.concatenate(gs, axis=1)
    return np.ascontiguousarray(ids[0]), gs[0]


defop("dp_embedding_norm", inputs=("Ids", "G"), duplicable=("Ids", "G"), attrs=_EMB, infer=_sq_infer,
      lower=lambda ctx: lambda *a: K.embedding_sq_norms(*_emb_operands(ctx, a)), grad=NO_GRAD,
      doc="Out[b] = ||example b's embedding-table gradient||^2 (rows of G_k with equal ids summed first).")
defop("dp_embedding_clipped_sum", inputs=("Ids", "G", "Param", "Scale"), duplicable=("Ids", "G"), attrs=_EMB,
      infer=_param_infer, grad=NO_GRAD,
      lower=lambda ctx: lambda *a: K.embedding_clipped_sum(*_emb_operands(ctx, a[:-2]), a[-1],
                                                           ctx.shape("Param")[0]),
      doc="Out[v] = sum over (b, s) with id v of Scale[b] * G[b, s].")


def _clip_infer(ctx):
    ctx.expect_dtype("SqNorm")
    shape = ctx.shape("SqNorm")
    return {"Norm": (shape, np.dtype(np.float32)), "Scale": (shape, ctx.dtype("SqNorm"))}


def _lower_clip(ctx):
    clip, mean = ctx.attrs["l2_norm_clip"], ctx.attrs["mean_loss"]

    def run(*sqs):
        total = sqs[0].copy() if len(sqs) > 1 else sqs[0]
        for s in sqs[1:]:
            total += s
        norm, scale = K.clip_factors(total, float(total.shape[0]) if mean else 1.0, clip)
        return norm.astype(np.float32, copy=False), scale  # the norms are exposed as float32 (SPEC 10)

    return run


defop("dp_clip_norm", inputs=("SqNorm",), outputs=("Norm", "Scale"), duplicable=("SqNorm",),
      attrs={"l2_norm_clip": Attr(float, 1.0, _positive), "mean_loss": Attr(bool, True)},
      infer=_clip_infer, lower=_lower_clip, grad=NO_GRAD,
      doc="Norm[b] = sqrt(sum of the SqNorm[b]) (times B when the loss is a mean over B examples: the "
          "backward's gradients carry 1/B), as float32; Scale[b] = min(1, l2_norm_clip / Norm[b]), computed "
          "in SqNorm's dtype.")


def _ziggurat_tables(n=128, r=3.442619855899, v=9.91256303526217e-3):
    """Marsaglia and Tsang's 128-layer ziggurat for N(0, 1): (kn, wn, xt, ft) as kernels/privacy.add_gaussian
    takes them; xt the layer edges (xt[1] = r, the tail's start; every layer, and the base with its
    tail, has area v)."""
    xt = np.zeros(n + 1)
    xt[0], xt[1] = v / math.exp(-0.5 * r * r), r
    for i in range(1, n - 1):
        xt[i + 1] = math.sqrt(-2.0 * math.log(v / xt[i] + math.exp(-0.5 * xt[i] * xt[i])))
    kn = np.floor(2.0 ** 52 * xt[1:] / xt[:-1]).astype(np.int64)  # the fast test on a signed 53-bit int
    return kn, xt[:-1] * 2.0 ** -52, xt, np.exp(-0.5 * xt * xt)


_ZIGGURAT = _ziggurat_tables()


def _lower_noise(ctx):
    std, mean, stream = ctx.attrs["stddev"], ctx.attrs["mean_loss"], ctx.attrs["stream"]
    seed, fixed = ctx.attrs["seed"], ctx.attrs["fix_seed"]
    reuse = "X" in ctx.overwritable

    def run(x, ref, state):
        key, counter = int(state[0]), int(state[1])
        out = x if reuse and x.flags.c_contiguous else np.array(x, order="C")
        # X is already the clipped sum divided by B (the backward's gradients carry 1/B), so only the
        # noise is divided here
        draw = stream_key(seed if fixed else key, stream, counter)
        K.add_gaussian(out.reshape(-1), np.uint64(draw), std / ref.shape[0] if mean else std, *_ZIGGURAT)
        return out, np.array([key, counter + 1], STATE_DTYPE)

    return run


def _noise_infer(ctx):
    ctx.expect_dtype("X")
    return random_state_infer(ctx, {"Out": (ctx.shape("X"), ctx.dtype("X"))})


defop("dp_gaussian_noise", inputs=("X", "BatchRef", "State"), outputs=("Out", "StateOut"), random=True,
      attrs={"stddev": Attr(float, 0.0, lambda v: None if v >= 0 else "must be >= 0"), "mean_loss": Attr(bool, True),
             "seed": Attr(int, 0), "fix_seed": Attr(bool, False), "stream": Attr(int, 0)},
      infer=_noise_infer, lower=_lower_noise, grad=NO_GRAD,
      doc="Out = X + N(0, stddev^2 I) / B (B = BatchRef's length; no division when mean_loss is false). "
          "The noise comes from the op's random stream (fluidlite.random_state): State = [key, counter] "
          "in the scope, advanced each run; the draw's key hashes (seed if fix_seed else key, stream, "
          "counter), and element j depends on that key and j alone (a counter-based ziggurat).")


def _lower_state_init(ctx):
    return lambda: fresh_state()


defop("random_state_init", inputs=(), lower=_lower_state_init, grad=NO_GRAD,
      infer=lambda ctx: {"Out": (STATE_SHAPE, STATE_DTYPE)},
      doc="Out = [key, 0]: a fresh random stream state (fluidlite.random_state), key from OS entropy. "
          "A startup program makes a stream with it when every worker must start from the same "
          "(broadcast) state.")
