"""matmul (batched, broadcasting), lookup_table (embedding) and dropout."""
import numpy as np

from .. import _threads
from ..kernels import basic as KB
from ..kernels import nn as K
from ..random_state import advance, rank_salted
from ..registry import Attr, Elementwise, defop
from ..shapes import broadcast, dims_match, numel
from .common import grad_op
from .init_ops import random_state_infer

# ---------------------------------------------------------------- matmul

_MATMUL_ATTRS = {"transpose_X": Attr(bool, False), "transpose_Y": Attr(bool, False), "alpha": Attr(float, 1.0)}
# batches of at least this many matrices and multiply-adds spread over threads. On the workqueue (2 busy
# cores) threads lost to one BLAS call per matrix below 256 matrices; on the TBB pool an attention step's
# 128 (64, 32) x (32, 64) products took 0.21 ms on two threads against 0.36 on one.
_PARALLEL_BATCH = {True: 2, False: 256}  # by _threads.pool_on()
_PARALLEL_FLOPS = 1 << 20


def _matrix(shape, transpose, is_x):
    """(batch dims, rows, cols of op(matrix), transpose to apply); a 1-D operand is a row (X) or column (Y)."""
    if len(shape) == 1:
        return (), (1, shape[0]) if is_x else (shape[0], 1), False
    rows, cols = shape[-2], shape[-1]
    return shape[:-2], (cols, rows) if transpose else (rows, cols), transpose


def _matmul_shapes(ctx, xs, ys):
    """(x batch, y batch, batch, (m, k), (k, n), tx, ty, out shape) or a ctx.error."""
    if len(xs) < 1 or len(ys) < 1:
        raise ctx.error("X and Y need rank >= 1", "X", "Y")
    xb, (m, kx), tx = _matrix(xs, ctx.attrs["transpose_X"], True)
    yb, (ky, n), ty = _matrix(ys, ctx.attrs["transpose_Y"], False)
    if not dims_match(kx, ky):
        raise ctx.error(f"inner dimensions differ: op(X) is [.., {m}, {kx}], op(Y) is [.., {ky}, {n}]", "X", "Y")
    batch = broadcast(xb, yb)
    if batch is None:
        raise ctx.error(f"batch dimensions {list(xb)} and {list(yb)} do not broadcast", "X", "Y")
    out = batch + ((m,) if len(xs) > 1 else ()) + ((n,) if len(ys) > 1 else ())
    return xb, yb, batch, tx, ty, out


def _matmul_infer(ctx):
    dtype = ctx.expect_dtype("X", "Y")
    return {"Out": (_matmul_shapes(ctx, ctx.shape("X"), ctx.shape("Y"))[-1], dtype)}


def _batch_index(own, batch):
    """For each matrix of the broadcast batch, the index of the matrix of an operand with batch dims `own`."""
    own = (1,) * (len(batch) - len(own)) + tuple(own)
    return np.ascontiguousarray(np.broadcast_to(np.arange(numel(own)).reshape(own), batch).reshape(-1))


def _matmul_plan(ctx):
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    xb, yb, batch, tx, ty, out = _matmul_shapes(ctx, xs, ys)
    x3 = (numel(xb),) + ((1,) + xs if len(xs) == 1 else xs[-2:])
    y3 = (numel(yb),) + (ys + (1,) if len(ys) == 1 else ys[-2:])
    ai, bi = _batch_index(xb, batch), _batch_index(yb, batch)
    ident = np.arange(ai.size)
    m_k_n = x3[1] * x3[2] * (y3[1] if ty else y3[2])
    many = ai.size >= _PARALLEL_BATCH[_threads.pool_on()] and ai.size * m_k_n >= _PARALLEL_FLOPS
    kernel = K.bmm_parallel if many else K.bmm
    return x3, y3, ai, bi, ident, tx, ty, out, kernel


def _c(a, shape):
    return np.ascontiguousarray(a).reshape(shape)


def _lower_matmul(ctx):
    x3, y3, ai, bi, _, tx, ty, out, kernel = _matmul_plan(ctx)
    alpha = ctx.dtype("X").type(ctx.attrs["alpha"])
    return lambda x, y: kernel(_c(x, x3), _c(y, y3), ai, bi, tx, ty, alpha).reshape(out)


def _lower_matmul_grad(ctx):
    x3, y3, ai, bi, ident, tx, ty, out, kernel = _matmul_plan(ctx)
    xs, ys = ctx.shape("X"), ctx.shape("Y")
    alpha = ctx.dtype("X").type(ctx.attrs["alpha"])
    o3 = (ai.size, x3[2] if tx else x3[1], y3[1] if ty else y3[2])

    def fold(g, idx, shape3, shape):  # sum over the batch entries an operand was broadcast to
        if idx.size != shape3[0]:
            g = K.batch_sum(g, idx, shape3[0])
        return g.reshape(shape)

    def dx(x, y, d):
        if tx:
            g = kernel(y, d, bi, ident, ty, True, alpha)
        else:
            g = kernel(d, y, ident, bi, False, not ty, alpha)
        return fold(g, ai, x3, xs)

    def dy(x, y, d):
        if ty:
            g = kernel(d, x, ident, ai, True, tx, alpha)
        else:
            g = kernel(x, d, ai, ident, not tx, False, alpha)
        return fold(g, bi, y3, ys)

    wants = [f for f, slot in ((dx, "X@GRAD"), (dy, "Y@GRAD")) if ctx.has_output(slot)]

    def run(x, y, dout):
        args = (_c(x, x3), _c(y, y3), _c(dout, o3))
        grads = tuple(f(*args) for f in wants)
        return grads if len(grads) > 1 else grads[0]

    return run


defop("matmul", inputs=("X", "Y"), attrs=_MATMUL_ATTRS, infer=_matmul_infer, lower=_lower_matmul,
      grad_reads=("X", "Y"), grad_lower=_lower_matmul_grad, grad_picks=False,
      doc="Out = alpha * op(X) @ op(Y), op transposing the last two dims when transpose_X / transpose_Y. "
          "Leading (batch) dims broadcast like NumPy; a 1-D X is a row vector and a 1-D Y a column "
          "vector whose dimension is dropped from Out (NumPy matmul; transposes ignored for 1-D).")

# ---------------------------------------------------------------- lookup_table

_LOOKUP_ATTRS = {"padding_idx": Attr(int, -1, lambda v: None if v >= -1 else "must be >= 0, or -1 for none"),
                 "is_sparse": Attr(bool, False)}


def _lookup_infer(ctx):
    ws, ids = ctx.shape("W"), ctx.shape("Ids")
    ctx.expect_dtype("W")
    if len(ws) != 2:
        raise ctx.error(f"W must be a 2-D [vocab, dim] table, got {list(ws)}", "W")
    if ctx.dtype("Ids") != np.int64:
        raise ctx.error(f"Ids must be int64, got {ctx.dtype('Ids')}", "Ids")
    if len(ids) < 1:
        raise ctx.error("Ids needs rank >= 1", "Ids")
    pad = ctx.attrs["padding_idx"]
    if ws[0] >= 0 and pad >= ws[0]:
        raise ctx.error(f"padding_idx={pad} is outside the vocabulary of {ws[0]} rows", "W")
    lead = ids[:-1] if ids[-1] == 1 and len(ids) > 1 else ids
    return {"Out": (lead + (ws[1],), ctx.dtype("W"))}


def _lower_lookup(ctx):
    out_shape = _lookup_infer(ctx)["Out"][0]
    vocab, pad, w_name = ctx.shape("W")[0], ctx.attrs["padding_idx"], ctx.meta("W").name
    ids_name = ctx.meta("Ids").name

    def run(w, ids):
        out, bad = K.lookup(w, np.ascontiguousarray(ids), pad)
        if bad >= 0:
            raise ValueError(f"lookup_table: id {ids.reshape(-1)[bad]} in Ids={ids_name!r} is outside "
                             f"[0, {vocab}), the rows of W={w_name!r}")
        return out.reshape(out_shape)

    return run


def _lower_lookup_grad(ctx):
    vocab, dim = ctx.shape("W")
    pad = ctx.attrs["padding_idx"]
    return lambda w, ids, dout: K.lookup_grad(np.ascontiguousarray(ids), _c(dout, (-1, dim)), vocab, pad)


defop("lookup_table", inputs=("W", "Ids"), attrs=_LOOKUP_ATTRS, infer=_lookup_infer, lower=_lower_lookup,
      grad_reads=("W", "Ids"), grad_wrt=("W",), grad_lower=_lower_lookup_grad,
      doc="Out[..., :] = W[Ids[...], :] (embedding); Ids int64 [..., 1] or [...]; rows at padding_idx "
          "read as zeros and get no gradient. An id outside [0, vocab) raises ValueError at run time. "
          "The gradient of W is dense (is_sparse is accepted and ignored).")

# ---------------------------------------------------------------- dropout

_IMPLS = ("downgrade_in_infer", "upscale_in_train")
_DROPOUT_ATTRS = {
    "dropout_prob": Attr(float, 0.5, lambda p: None if 0 <= p < 1 else "must be in [0, 1)"),
    "is_test": Attr(bool, False),
    "seed": Attr(int, 0),
    "stream": Attr(int, 0),
    "dropout_implementation": Attr(str, "downgrade_in_infer",
                                   lambda v: None if v in _IMPLS else f"must be one of {_IMPLS}"),
}


def _dropout_infer(ctx):
    ctx.expect_dtype("X")
    meta = (ctx.shape("X"), ctx.dtype("X"))
    return random_state_infer(ctx, {"Out": meta, "Mask": meta})


def _keep_scale(attrs, dtype):
    """What kept values are multiplied by: in training 1/(1-p) or 1, in inference 1 or (1-p)."""
    p, upscale = attrs["dropout_prob"], attrs["dropout_implementation"] == "upscale_in_train"
    if attrs["is_test"]:
        return dtype.type(1.0 if upscale else 1.0 - p)
    return dtype.type(1.0 / (1.0 - p) if upscale else 1.0)


def _lower_dropout(ctx):
    p, seed, s = ctx.attrs["dropout_prob"], ctx.attrs["seed"], _keep_scale(ctx.attrs, ctx.dtype("X"))
    want_mask, stream, stateful = ctx.has_output("Mask"), ctx.attrs["stream"], ctx.has("State")
    if ctx.attrs["is_test"]:
        def infer_run(x, *state):  # no draw: the stream does not advance
            out = KB.scale(x, s, 0.0)
            res = (out,) + ((np.ones_like(x),) if want_mask else ()) + tuple(state)
            return res if len(res) > 1 else out
        return infer_run
    if not stateful:  # an op built without a stream (old programs): a fixed draw per seed, fresh if seed 0
        def run_fixed(x):
            call = seed if seed else int(np.random.SeedSequence().generate_state(1)[0])
            out, mask = K.dropout(x, p, call, s)
            return (out, mask) if want_mask else out
        return run_fixed

    def run(x, state):  # the stream in the scope (fluidlite.random_state); per worker after broadcast
        call, new_state = advance(state, seed, stream)
        call = rank_salted(call, state)
        out, mask = K.dropout(x, p, call, s)
        return (out, mask, new_state) if want_mask else (out, new_state)

    return run


def _dropout_grad(g):
    if not g.wants("X"):  # only the (integer) State could be asked for: it has no gradient
        return []
    if g.attrs["is_test"]:  # Out = x * const: no mask needed
        return [grad_op("scale", g, {"X": g.og("Out")}, {"Out": g.ig("X")},
                        {"scale": float(_keep_scale(g.attrs, np.dtype("float64")))})]
    return [grad_op("dropout_grad", g, {"Mask": g.o("Mask"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})]


def _lower_dropout_grad(ctx):
    s = _keep_scale(ctx.attrs, ctx.dtype("Out@GRAD"))
    return lambda mask, dout: K.dropout_grad(mask, dout, s)


def _dropout_grad_infer(ctx):
    if ctx.shape("Mask") != ctx.shape("Out@GRAD"):
        raise ctx.error("Mask and Out@GRAD shapes differ", "Mask", "Out@GRAD")
    return {"X@GRAD": (ctx.shape("Out@GRAD"), ctx.dtype("Out@GRAD"))}


defop("dropout", inputs=("X", "State"), outputs=("Out", "Mask", "StateOut"), optional=("Mask", "State", "StateOut"),
      attrs=_DROPOUT_ATTRS, random=True,
      infer=_dropout_infer, lower=_lower_dropout, grad=_dropout_grad,
      doc="Training: Mask[i] = 1 with probability 1 - dropout_prob, else 0; Out = X * Mask "
          "(downgrade_in_infer) or X * Mask / (1 - p) (upscale_in_train). Inference (is_test): Out = "
          "X * (1 - p) or X, Mask = ones. The mask is drawn from the State stream kept in the scope "
          "(fluidlite.random_state): the t-th run in a scope draws from (seed, stream, t); seed 0: from a key "
          "drawn once per scope from OS entropy.")
defop("dropout_grad", inputs=("Mask", "Out@GRAD"), outputs=("X@GRAD",), optional=("X@GRAD",),
      attrs=_DROPOUT_ATTRS, infer=_dropout_grad_infer, lower=_lower_dropout_grad,
      elementwise=lambda ctx: Elementwise(K._dropout_grad_el, ("Mask", "Out@GRAD",
                                                               _keep_scale(ctx.attrs, ctx.dtype("Out@GRAD")))))
