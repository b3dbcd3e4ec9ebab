"""reshape, concat, split, transpose, assign and flatten."""
from __future__ import annotations

import numpy as np

from ..kernels import shape as K
from ..registry import REQUIRED, Attr, defop
from ..shapes import dims_match, numel
from .common import grad_op, parallel_size, same_as


# --- reshape ---------------------------------------------------------------------------------------------

def _reshape_infer(ctx):
    xs, target = ctx.shape("X"), ctx.attrs["shape"]
    out = []
    for i, d in enumerate(target):
        if d == 0 and i >= len(xs):
            raise ctx.error(f"shape={list(target)}: 0 at index {i} copies a dimension X does not have", "X")
        if d < -1:
            raise ctx.error(f"shape={list(target)}: dims must be > 0, 0 (copy X's) or -1 (infer)", "X")
        out.append(xs[i] if d == 0 else d)
    free = [i for i, d in enumerate(target) if d == -1]
    if len(free) > 1:
        raise ctx.error(f"shape={list(target)} has more than one -1", "X")
    # copied dims match on both sides; the rest must hold the same number of elements
    rest_in = [d for i, d in enumerate(xs) if not (i < len(target) and target[i] == 0)]
    known_in = numel([d for d in rest_in if d != -1])
    known_out = numel([d for d in target if d > 0])
    batch = -1 in rest_in
    if free:
        if not batch:
            if known_out == 0 or known_in % known_out:
                raise ctx.error(f"cannot reshape to {list(target)}: {known_in} elements do not divide", "X")
            out[free[0]] = known_in // known_out
    elif (not batch and known_in != known_out) or (batch and (known_in == 0 or known_out % known_in)):
        raise ctx.error(f"cannot reshape to {list(target)}: the element counts differ", "X")
    return {"Out": (tuple(out), ctx.dtype("X"))}


def _lower_reshape(ctx):
    shape = _reshape_infer(ctx)["Out"][0]
    return lambda x: x.reshape(shape)  # a view of the contiguous input: returns_view


defop("reshape", inputs=("X",), attrs={"shape": Attr("ints", REQUIRED)}, infer=_reshape_infer, lower=_lower_reshape,
      returns_view=True,
      grad=lambda g: [grad_op("reshape_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")}, {})],
      doc="Out = X with a new shape; a -1 entry is inferred, a 0 entry copies X's dim at that index.")
defop("reshape_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), returns_view=True,
      infer=lambda ctx: {"X@GRAD": (ctx.shape("X"), ctx.dtype("X"))},
      lower=lambda ctx: (lambda x, g, xs=ctx.shape("X"): g.reshape(xs)))


# --- concat / split --------------------------------------------------------------------------------------

def _axis(ctx, slot):
    rank = len(ctx.shape(slot))
    axis = ctx.attrs["axis"]
    if not -rank <= axis < rank:
        raise ctx.error(f"axis={axis} is out of range for rank {rank}", slot)
    return axis % rank


def _concat_infer(ctx):
    dtype = ctx.expect_dtype("X")
    axis = _axis(ctx, "X")
    first = ctx.meta("X")
    out = list(first.shape)
    for m in ctx.metas("X")[1:]:
        if len(m.shape) != len(out) or not all(dims_match(a, b) for i, (a, b) in enumerate(zip(m.shape, out))
                                               if i != axis):
            raise ctx.error(f"inputs must agree on every dim but axis {axis}: {m.name!r} is {list(m.shape)}, "
                            f"{first.name!r} is {list(first.shape)}", "X")
        out = [max(a, b) if i != axis else a for i, (a, b) in enumerate(zip(out, m.shape))]
    sizes = [m.shape[axis] for m in ctx.metas("X")]
    out[axis] = -1 if -1 in sizes else sum(sizes)
    return {"Out": (tuple(out), dtype)}


def _pnp(shape, axis):
    return numel(shape[:axis]), numel(shape[axis + 1:])


def _lower_concat(ctx):
    axis = _axis(ctx, "X")
    out_shape = _concat_infer(ctx)["Out"][0]
    pre, post = _pnp(out_shape, axis)
    sizes = [m.shape[axis] for m in ctx.metas("X")]
    dtype = ctx.dtype("X")

    def run(*xs):
        out = np.empty((pre, out_shape[axis], post), dtype)
        offset = 0
        for x, n in zip(xs, sizes):
            K.put_block(out, x.reshape(pre, n, post), offset)
            offset += n
        return out.reshape(out_shape)

    return run


def _blocks(x, pre, post, sizes, keep):
    """The kept pieces of x split along the middle axis of (pre, total, post), as a tuple (or one array)."""
    starts = np.cumsum([0] + list(sizes))
    parts = tuple(K.take_block(x, starts[k], sizes[k]) for k in keep)
    return parts if len(parts) != 1 else parts[0]


def _concat_grad_infer(ctx):
    return {"X@GRAD": [(ctx.shape("X", k), ctx.dtype("X", k)) for k in ctx.attrs["keep"]]}


def _lower_concat_grad(ctx):
    axis = _axis(ctx, "X")
    metas = ctx.metas("X")
    pre, post = _pnp(metas[0].shape, axis)
    sizes = [m.shape[axis] for m in metas]
    keep = ctx.attrs["keep"]
    shapes = [metas[k].shape for k in keep]
    nx = len(metas)

    def run(*args):
        g = args[nx]
        parts = _blocks(g.reshape(pre, sum(sizes), post), pre, post, sizes, keep)
        if len(keep) == 1:
            return parts.reshape(shapes[0])
        return tuple(p.reshape(s) for p, s in zip(parts, shapes))

    return run


def _concat_grad(g):
    keep = [k for k, n in enumerate(g.ig("X")) if n is not None]
    if not keep:
        return []
    return [grad_op("concat_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")},
                    {"X@GRAD": [g.ig("X")[k] for k in keep]}, {"axis": g.attrs["axis"], "keep": keep})]


defop("concat", inputs=("X",), duplicable=("X",), attrs={"axis": Attr(int, 0)}, infer=_concat_infer,
      lower=_lower_concat, grad=_concat_grad, doc="Out = the inputs joined along `axis`.")
defop("concat_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), duplicable=("X", "X@GRAD"), optional=("X@GRAD",),
      attrs={"axis": Attr(int, 0), "keep": Attr("ints", ())}, infer=_concat_grad_infer, lower=_lower_concat_grad,
      doc="X@GRAD[k] = the slice of Out@GRAD that X[k] filled, for each k in `keep`.")


def _split_sizes(ctx):
    axis = _axis(ctx, "X")
    d = ctx.shape("X")[axis]
    num, sections = ctx.attrs["num"], list(ctx.attrs["sections"])
    if (num > 0) == bool(sections):
        raise ctx.error(f"give exactly one of num (got {num}) and sections (got {sections})", "X")
    if num > 0:
        if d != -1 and d % num:
            raise ctx.error(f"dim {axis} of size {d} does not split into {num} equal parts", "X")
        return axis, [d // num if d != -1 else -1] * num
    if sections.count(-1) > 1 or any(s < -1 or s == 0 for s in sections):
        raise ctx.error(f"sections={sections}: sizes must be > 0, with at most one -1", "X")
    known = sum(s for s in sections if s > 0)
    if d != -1:
        if -1 in sections:
            if known >= d:
                raise ctx.error(f"sections={sections} leave nothing for -1 out of dim {axis} of size {d}", "X")
            sections[sections.index(-1)] = d - known
        elif known != d:
            raise ctx.error(f"sections={sections} sum to {known}, but dim {axis} has size {d}", "X")
    return axis, sections


def _split_infer(ctx):
    axis, sizes = _split_sizes(ctx)
    xs = ctx.shape("X")
    return {"Out": [(xs[:axis] + (n,) + xs[axis + 1:], ctx.dtype("X")) for n in sizes]}


def _lower_split(ctx):
    axis, sizes = _split_sizes(ctx)
    xs = ctx.shape("X")
    pre, post = _pnp(xs, axis)
    shapes = [xs[:axis] + (n,) + xs[axis + 1:] for n in sizes]
    keep = range(len(sizes))

    def run(x):
        parts = _blocks(x.reshape(pre, xs[axis], post), pre, post, sizes, keep)
        if len(sizes) == 1:
            return parts.reshape(shapes[0])
        return tuple(p.reshape(s) for p, s in zip(parts, shapes))

    return run


defop("split", inputs=("X",), outputs=("Out",), duplicable=("Out",),
      attrs={"num": Attr(int, 0), "sections": Attr("ints", ()), "axis": Attr(int, 0)},
      infer=_split_infer, lower=_lower_split,
      # missing output gradients arrive zero-filled, so the input gradient is their concat
      grad=lambda g: [grad_op("concat", g, {"X": g.og("Out")}, {"Out": g.ig("X")}, {"axis": g.attrs["axis"]})],
      doc="Out = X cut along `axis` into `num` equal parts or parts of the given `sections` (one may be -1).")


# --- transpose / assign ----------------------------------------------------------------------------------

def _transpose_infer(ctx):
    xs, perm = ctx.shape("X"), ctx.attrs["axis"]
    if sorted(perm) != list(range(len(xs))):
        raise ctx.error(f"axis={list(perm)} is not a permutation of the {len(xs)} dims", "X")
    return {"Out": (tuple(xs[p] for p in perm), ctx.dtype("X"))}


def _lower_transpose(ctx):
    xs, perm = ctx.shape("X"), ctx.attrs["axis"]
    strides = [numel(xs[i + 1:]) for i in range(len(xs))]
    out_shape = tuple(xs[p] for p in perm)
    if 1 <= len(xs) <= 4:  # padded with leading 1s to one 4-D loop nest
        pad = 4 - len(xs)
        dims = (1,) * pad + out_shape
        st = (0,) * pad + tuple(strides[p] for p in perm)
        kernel = K.permute4_parallel if parallel_size(numel(xs)) else K.permute4
        return lambda x: kernel(np.ascontiguousarray(x), *dims, *st).reshape(out_shape)
    if perm and perm[-1] == len(xs) - 1 and xs[-1] > 1:  # the last axis stays: copy whole rows
        shape = np.array(out_shape[:-1], np.int64)
        st = np.array([strides[p] for p in perm[:-1]], np.int64)
        return lambda x: K.gather_rows(np.ascontiguousarray(x), shape, st, xs[-1]).reshape(out_shape)
    shape = np.array(out_shape, np.int64)
    st = np.array([strides[p] for p in perm], np.int64)
    return lambda x: K.gather_strided(x, shape, st, x.dtype.type(1)).reshape(out_shape)


def _transpose_grad(g):
    perm = g.attrs["axis"]
    inverse = [perm.index(i) for i in range(len(perm))]
    return [grad_op("transpose", g, {"X": g.og("Out")}, {"Out": g.ig("X")}, {"axis": inverse})]


defop("transpose", inputs=("X",), attrs={"axis": Attr("ints", REQUIRED)}, infer=_transpose_infer,
      lower=_lower_transpose, grad=_transpose_grad,
      doc="Out = X with its dims permuted: Out.shape[i] = X.shape[axis[i]] (gradient: the inverse permutation).")

defop("assign", inputs=("X",), infer=same_as("X"), kernel=K.copy,
      grad=lambda g: [grad_op("assign", g, {"X": g.og("Out")}, {"Out": g.ig("X")})],
      doc="Out = a copy of X.")


# --- flatten ---------------------------------------------------------------------------------------------

def _flatten_infer(ctx):
    xs, axis = ctx.shape("X"), ctx.attrs["axis"]
    if not 0 <= axis <= len(xs):
        raise ctx.error(f"axis={axis} must be in [0, {len(xs)}] for rank {len(xs)}", "X")
    return {"Out": ((numel(xs[:axis]), numel(xs[axis:])), ctx.dtype("X"))}


defop("flatten", inputs=("X",), attrs={"axis": Attr(int, 1)}, infer=_flatten_infer, returns_view=True,
      lower=lambda ctx: (lambda x, shape=_flatten_infer(ctx)["Out"][0]: x.reshape(shape)),
      grad_reads=("X",), grad_returns_view=True,
      grad_lower=lambda ctx: (lambda x, g, xs=ctx.shape("X"): g.reshape(xs)),
      doc="Out = X as a matrix [prod(X.shape[:axis]), prod(X.shape[axis:])] (axis 0: [1, numel]).")
