"""sequence_mask and sequence_reverse: padded variable-length sequences without LoD."""
from __future__ import annotations

import numpy as np

from ..kernels import sequence as K
from ..registry import NO_GRAD, Attr, defop
from ..shapes import numel
from .common import grad_op


def _lengths(ctx, slot):
    shape = ctx.shape(slot)
    if ctx.dtype(slot).kind not in "iu" or len(shape) != 1:
        raise ctx.error(f"{slot} must be integer lengths of shape [B], got {ctx.dtype(slot)}{list(shape)}", slot)
    return shape[0]


def _mask_infer(ctx):
    batch = _lengths(ctx, "X")
    maxlen = ctx.attrs["maxlen"]
    if maxlen == 0 or maxlen < -1:
        raise ctx.error(f"maxlen={maxlen} must be > 0 (or -1: the longest length, known only at run time)", "X")
    return {"Y": ((batch, maxlen), np.dtype(ctx.attrs["out_dtype"]))}


def _lower_mask(ctx):
    like = np.empty(0, np.dtype(ctx.attrs["out_dtype"]))
    maxlen = ctx.attrs["maxlen"]
    return lambda lengths: K.sequence_mask(lengths.astype(np.int64) if lengths.dtype != np.int64 else lengths,
                                           maxlen, like)


defop("sequence_mask", inputs=("X",), outputs=("Y",), attrs={"maxlen": Attr(int, -1), "out_dtype": Attr("dtype", "int64")},
      infer=_mask_infer, lower=_lower_mask, grad=NO_GRAD,
      doc="Y[b, t] = 1 if t < X[b] else 0, shape [B, maxlen] (maxlen -1: max(X)).")


def _reverse_infer(ctx):
    shape = ctx.shape("X")
    if len(shape) < 2:
        raise ctx.error(f"X must be time-major [T, B, ...], got {list(shape)}", "X")
    if ctx.has("Length"):
        batch = _lengths(ctx, "Length")
        if batch != -1 and shape[1] != -1 and batch != shape[1]:
            raise ctx.error(f"Length holds {batch} lengths for a batch of {shape[1]}", "X", "Length")
    return {"Out": (shape, ctx.dtype("X"))}


def _lower_reverse(ctx):
    shape = ctx.shape("X")
    view = (shape[0], shape[1], numel(shape[2:]))
    if not ctx.has("Length"):
        full = np.full(shape[1], shape[0], np.int64)
        return lambda x: K.sequence_reverse(x.reshape(view), full).reshape(shape)
    return lambda x, n: K.sequence_reverse(x.reshape(view), n.astype(np.int64)).reshape(shape)


def _reverse_grad(g):
    ins = {"X": g.og("Out")}
    if g.i("Length"):
        ins["Length"] = g.i("Length")
    return [grad_op("sequence_reverse", g, ins, {"Out": g.ig("X")}, {})] if g.wants("X") else []


defop("sequence_reverse", inputs=("X", "Length"), optional=("Length",), infer=_reverse_infer, lower=_lower_reverse,
      grad=_reverse_grad, doc="Out[t, b] = X[Length[b] - 1 - t, b] for t < Length[b], else X[t, b] (padding stays "
                              "in place); without Length the whole time axis is reversed.")
