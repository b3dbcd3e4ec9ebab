"""Ops of per-example gradient clipping (DP-SGD, see fluidlite/per_example.py and docs/privacy.md).

Each parameter kind has a norm op ([B] squared norms of the per-example gradients) and a clipped-sum
op (sum_b scale[b] * g_b), both computed from the forward activations and the output gradients the
backward pass made: `dp_linear_*` (mul/matmul weights), `dp_bias_*` (elementwise_add biases),
`dp_embedding_*` (lookup_table). A parameter read by several ops (a weight shared by unrolled RNN
steps) passes all its uses in the duplicable slots; each use's attributes are lists, one entry per use.
The batch dimension of each input is given by attribute (it is the dimension marked -1 at build time).
"""
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..kernels import basic as KB
from ..kernels import privacy as K
from ..registry import NO_GRAD, Attr, defop
from ..shapes import numel


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
    return {"Norm": (shape, ctx.dtype("SqNorm")), "Scale": (shape, ctx.dtype("SqNorm"))}


def _lower_clip(ctx):
    clip, mean = ctx.attrs["l2_norm_clip"], ctx.attrs["mean_loss"]

    def run(*sqs):
        total = sqs[0].copy() if len(sqs) > 1 else sqs[0]
        for s in sqs[1:]:
            total += s
        return K.clip_factors(total, float(total.shape[0]) if mean else 1.0, clip)

    return run


defop("dp_clip_norm", inputs=("SqNorm",), outputs=("Norm", "Scale"), duplicable=("SqNorm",),
      attrs={"l2_norm_clip": Attr(float, 1.0, _positive), "mean_loss": Attr(bool, True)},
      infer=_clip_infer, lower=_lower_clip, grad=NO_GRAD,
      doc="Norm[b] = sqrt(sum of the SqNorm[b]) (times B when the loss is a mean over B examples: the "
          "backward's gradients carry 1/B), Scale[b] = min(1, l2_norm_clip / Norm[b]).")


_NOISE_CHUNK = 1 << 18  # elements per independent noise stream; fixed, so the noise never depends on threads


def _add_normals(out, key, counter, stream, std):
    """out += std * N(0, I) in place: chunk k of the flat array from the stream (key, counter, stream, k);
    chunks are drawn on threads (NumPy's generators and ufuncs release the GIL) and never materialised
    whole, so the noise costs one chunk of memory per thread."""
    flat = out.reshape(-1)
    chunks = range(0, flat.size, _NOISE_CHUNK)

    def add(start):
        part = flat[start:start + _NOISE_CHUNK]
        z = np.random.default_rng([key, counter, stream, start // _NOISE_CHUNK]).standard_normal(part.size, out.dtype)
        K.add_noise_into(part, z, out.dtype.type(std))

    if len(chunks) > 1 and numba.get_num_threads() > 1:
        with ThreadPoolExecutor(min(len(chunks), numba.get_num_threads())) as pool:
            list(pool.map(add, chunks))
    else:
        for start in chunks:
            add(start)
    return out


def _lower_noise(ctx):
    std, mean, stream = ctx.attrs["stddev"], ctx.attrs["mean_loss"], ctx.attrs["stream"]
    advance, reuse = ctx.has_output("StateOut"), "X" in ctx.overwritable

    def run(x, state, ref):
        key, counter = int(state[0]), int(state[1])
        out = x if reuse and x.flags.c_contiguous else np.array(x, order="C")
        # X is already the clipped sum divided by B (the backward's gradients carry 1/B), so only the
        # noise is divided here
        _add_normals(out, key, counter, stream, std / ref.shape[0] if mean else std)
        return (out, np.array([key, counter + 1], np.int64)) if advance else out

    return run


def _noise_infer(ctx):
    if ctx.dtype("State") != np.int64 or ctx.shape("State") != (2,):
        raise ctx.error("State must be int64 [2] (key, counter)", "State")
    return {"Out": (ctx.shape("X"), ctx.dtype("X")), "StateOut": ((2,), np.dtype(np.int64))}


defop("dp_gaussian_noise", inputs=("X", "State", "BatchRef"), outputs=("Out", "StateOut"), optional=("StateOut",),
      attrs={"stddev": Attr(float, 0.0), "mean_loss": Attr(bool, True), "stream": Attr(int, 0)},
      infer=_noise_infer, lower=_lower_noise, grad=NO_GRAD,
      doc="Out = X + N(0, stddev^2 I) / B (B = BatchRef's length; no division when mean_loss is false). "
          "The noise comes from the persistable State (key, counter) and `stream`; the op that writes "
          "StateOut advances the counter, so each run draws fresh noise and a checkpoint resumes it.")


def _lower_state(ctx):
    seed = ctx.attrs["seed"]

    def run():
        key = seed if seed >= 0 else int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        return np.array([key, 0], np.int64)

    return run


defop("dp_random_state", inputs=(), attrs={"seed": Attr(int, -1)}, lower=_lower_state, grad=NO_GRAD,
      infer=lambda ctx: {"Out": ((2,), np.dtype(np.int64))},
      doc="Out = [seed, 0]: a random stream's (key, counter); seed -1 draws the key from the OS's entropy.")


# ---- conv2d: the linear rule over unfolded patches --------------------------------------------------

_CONV = {"strides": Attr("ints", (1, 1)), "paddings": Attr("ints", (0, 0)), "dilations": Attr("ints", (1, 1))}


def _unfold(ctx, x, g):
    """(patches [B, Ho*Wo, C*kh*kw], output gradient [B, Ho*Wo, F]) of an NCHW conv2d (one group)."""
    (sh, sw), (ph, pw), (dh, dw) = ctx.attrs["strides"], ctx.attrs["paddings"], ctx.attrs["dilations"]
    kh, kw = ctx.shape("Param")[2:]
    n, c = x.shape[:2]
    ho, wo = g.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(xp, (n, ho, wo, c, kh, kw),
                                           (s[0], s[2] * sh, s[3] * sw, s[1], s[2] * dh, s[3] * dw), writeable=False)
    a = np.ascontiguousarray(view).reshape(n, ho * wo, c * kh * kw)
    return a, np.ascontiguousarray(g.reshape(n, g.shape[1], ho * wo).transpose(0, 2, 1))


def _lower_conv_sum(ctx):
    shape = ctx.shape("Param")

    def run(x, g, w, c):
        a, g3 = _unfold(ctx, x, g)
        gs = K.scale_rows(g3.reshape(1, g3.shape[0], -1), c).reshape(-1, g3.shape[2])
        return np.ascontiguousarray(KB.matmul2d_tn(a.reshape(-1, a.shape[2]), gs).T).reshape(shape)

    return run


defop("dp_conv2d_norm", inputs=("Input", "G", "Param"), attrs=_CONV, grad=NO_GRAD,
      infer=lambda ctx: {"Out": ((ctx.shape("G")[0],), ctx.dtype("G"))},
      lower=lambda ctx: lambda x, g, w: K.linear_sq_norms(*_unfold(ctx, x, g)),
      doc="Out[b] = ||example b's conv2d filter gradient||^2 from its unfolded input patches and output "
          "gradient (the linear ghost norm with one row per output position); groups=1, batch first.")
defop("dp_conv2d_clipped_sum", inputs=("Input", "G", "Param", "Scale"), attrs=_CONV, grad=NO_GRAD,
      infer=_param_infer, lower=_lower_conv_sum,
      doc="Out = sum_b Scale[b] * (example b's conv2d filter gradient), as one product of the unfolded patches.")


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
