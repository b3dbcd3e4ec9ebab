"""Index ops: arg_max, arg_min, top_k, one_hot, gather, where, accuracy (and their gradients)."""
from __future__ import annotations

import numpy as np

from ..kernels import index as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop
from ..shapes import dims_match, numel
from .common import grad_op, positive


def _axis(ctx, slot="X"):
    rank = len(ctx.shape(slot))
    axis = ctx.attrs["axis"]
    if not -rank <= axis < rank:
        raise ctx.error(f"axis={axis} is out of range for rank {rank}", slot)
    return axis % rank


def _pnp(shape, axis):
    return numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])


def _arg_infer(ctx):
    if ctx.dtype("X").kind not in "iuf":
        raise ctx.error(f"needs a numeric X, got {ctx.dtype('X')}", "X")
    shape = ctx.shape("X")
    a = _axis(ctx)
    return {"Out": (shape[:a] + shape[a + 1:], np.dtype(np.int64))}


def _lower_arg(find_max):
    def lower(ctx):
        shape = ctx.shape("X")
        a = _axis(ctx)
        view, out = _pnp(shape, a), shape[:a] + shape[a + 1:]
        return lambda x: K.arg_extreme(x.reshape(view), find_max).reshape(out)

    return lower


for _type, _max in (("arg_max", True), ("arg_min", False)):
    defop(_type, inputs=("X",), attrs={"axis": Attr(int, 0)}, infer=_arg_infer, lower=_lower_arg(_max), grad=NO_GRAD,
          doc=f"Out = the index of the first {'largest' if _max else 'smallest'} entry along `axis` (int64; the "
              f"axis is removed).")


def _top_k_infer(ctx):
    ctx.expect_dtype("X", kinds="iuf")
    shape, k = ctx.shape("X"), ctx.attrs["k"]
    if not shape or (shape[-1] != -1 and k > shape[-1]):
        raise ctx.error(f"k={k} needs a last dimension of at least {k}", "X")
    out = shape[:-1] + (k,)
    return {"Out": (out, ctx.dtype("X")), "Indices": (out, np.dtype(np.int64))}


def _lower_top_k(ctx):
    shape, k = ctx.shape("X"), ctx.attrs["k"]
    rows, out = numel(shape[:-1]), shape[:-1] + (k,)

    def run(x):
        values, indices = K.top_k(x.reshape(rows, shape[-1]), k)
        return values.reshape(out), indices.reshape(out)

    return run


def _lower_top_k_grad(ctx):
    shape, k = ctx.shape("X"), ctx.attrs["k"]
    rows = numel(shape[:-1])
    return lambda x, idx, g: K.top_k_grad(idx.reshape(rows, k), g.reshape(rows, k), shape[-1]).reshape(shape)


defop("top_k", inputs=("X",), outputs=("Out", "Indices"), attrs={"k": Attr(int, 1, positive)}, infer=_top_k_infer,
      lower=_lower_top_k, nondiff_outputs=("Indices",),
      grad=lambda g: [grad_op("top_k_grad", g, {"X": g.i("X"), "Indices": g.o("Indices"), "Out@GRAD": g.og("Out")},
                              {"X@GRAD": g.ig("X")})],
      doc="Out, Indices = the k largest entries along the last axis, descending (ties in index order).")
defop("top_k_grad", inputs=("X", "Indices", "Out@GRAD"), outputs=("X@GRAD",), attrs={"k": Attr(int, 1, positive)},
      infer=lambda ctx: {"X@GRAD": (ctx.shape("X"), ctx.dtype("Out@GRAD"))}, lower=_lower_top_k_grad)


def _int_ids(ctx, slot):
    if ctx.dtype(slot).kind not in "iu":
        raise ctx.error(f"{slot} must hold integer ids, got {ctx.dtype(slot)}", slot)


def _one_hot_infer(ctx):
    _int_ids(ctx, "X")
    shape = ctx.shape("X")
    if not shape or shape[-1] != 1:
        raise ctx.error(f"X must be shaped [..., 1], got {list(shape)}", "X")
    return {"Out": (shape[:-1] + (ctx.attrs["depth"],), np.dtype(ctx.attrs["dtype"]))}


def _lower_one_hot(ctx):
    depth, out = ctx.attrs["depth"], _one_hot_infer(ctx)["Out"][0]
    like = np.empty(0, np.dtype(ctx.attrs["dtype"]))
    return lambda ids: K.one_hot(ids, depth, like).reshape(out)


defop("one_hot", inputs=("X",), attrs={"depth": Attr(int, REQUIRED, positive), "dtype": Attr("dtype", "float32")},
      infer=_one_hot_infer, lower=_lower_one_hot, grad=NO_GRAD,
      doc="Out[..., j] = 1 where X[..., 0] == j, else 0; an id outside [0, depth) raises.")


def _gather_infer(ctx):
    _int_ids(ctx, "Index")
    xs, idx = ctx.shape("X"), ctx.shape("Index")
    if not xs:
        raise ctx.error("X must have rank >= 1", "X")
    if len(idx) not in (1, 2) or (len(idx) == 2 and idx[1] != 1):
        raise ctx.error(f"Index must be [M] or [M, 1], got {list(idx)}", "Index")
    return {"Out": ((idx[0],) + xs[1:], ctx.dtype("X"))}


def _lower_gather(ctx):
    xs = ctx.shape("X")
    row = numel(xs[1:])
    tail = xs[1:]
    return lambda x, idx: K.gather_rows(x.reshape(xs[0], row), idx.reshape(-1)).reshape((idx.size,) + tail)


def _lower_gather_grad(ctx):
    xs = ctx.shape("X")
    row = numel(xs[1:])
    return lambda x, idx, g: K.scatter_add_rows(idx.reshape(-1), g.reshape(-1, row), xs[0]).reshape(xs)


defop("gather", inputs=("X", "Index"), infer=_gather_infer, lower=_lower_gather,
      grad=lambda g: [grad_op("gather_grad", g, {"X": g.i("X"), "Index": g.i("Index"), "Out@GRAD": g.og("Out")},
                              {"X@GRAD": g.ig("X")})] if g.wants("X") else [],
      doc="Out[i] = X[Index[i]] (rows of the first dimension); the gradient adds back into the rows taken.")
defop("gather_grad", inputs=("X", "Index", "Out@GRAD"), outputs=("X@GRAD",),
      infer=lambda ctx: {"X@GRAD": (ctx.shape("X"), ctx.dtype("Out@GRAD"))}, lower=_lower_gather_grad)


def _same_shapes(ctx, *slots):
    first = ctx.shape(slots[0])
    for s in slots[1:]:
        shape = ctx.shape(s)
        if len(shape) != len(first) or not all(map(dims_match, shape, first)):
            raise ctx.error(f"{s} must have {slots[0]}'s shape {list(first)}, got {list(shape)}", slots[0], s)


def _where_infer(ctx):
    if ctx.dtype("Condition") != np.bool_:
        raise ctx.error(f"Condition must be bool, got {ctx.dtype('Condition')}", "Condition")
    dtype = ctx.expect_dtype("X", "Y", kinds="iuf")
    _same_shapes(ctx, "Condition", "X", "Y")
    return {"Out": (ctx.shape("X"), dtype)}


def _lower_where_grad(ctx):
    wanted = (ctx.has_output("X@GRAD"), ctx.has_output("Y@GRAD"))

    def run(cond, g):
        outs = tuple(d for d, w in zip(K.select_grad(cond, g), wanted) if w)
        return outs if len(outs) > 1 else outs[0]

    return run


defop("where", inputs=("Condition", "X", "Y"), infer=_where_infer, kernel=K.select,
      grad=lambda g: [grad_op("where_grad", g, {"Condition": g.i("Condition"), "Out@GRAD": g.og("Out")},
                              {"X@GRAD": g.ig("X"), "Y@GRAD": g.ig("Y")})] if g.wants("X") or g.wants("Y") else [],
      doc="Out = X where Condition else Y (all three the same shape).")
defop("where_grad", inputs=("Condition", "Out@GRAD"), outputs=("X@GRAD", "Y@GRAD"), optional=("X@GRAD", "Y@GRAD"),
      infer=lambda ctx: {s: (ctx.shape("Out@GRAD"), ctx.dtype("Out@GRAD")) for s in ("X@GRAD", "Y@GRAD")},
      lower=_lower_where_grad)


def _accuracy_infer(ctx):
    _int_ids(ctx, "Indices")
    _int_ids(ctx, "Label")
    idx, label = ctx.shape("Indices"), ctx.shape("Label")
    if len(idx) != 2 or len(label) != 2 or label[1] != 1 or not dims_match(idx[0], label[0]):
        raise ctx.error(f"needs Indices [N, k] and Label [N, 1], got {list(idx)} and {list(label)}",
                        "Indices", "Label")
    return {"Out": ((1,), np.dtype(np.float32))}


defop("accuracy", inputs=("Indices", "Label"), infer=_accuracy_infer,
      lower=lambda ctx: (lambda idx, label: K.accuracy(idx, label.reshape(-1))), grad=NO_GRAD,
      doc="Out = the fraction of rows whose Label is among the row's top-k Indices (float32 [1]).")
