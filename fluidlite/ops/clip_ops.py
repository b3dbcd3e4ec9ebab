"""Clipping ops: clip (by value), clip_by_norm, global_norm + scale_by_global_norm (the multi-tensor
global-norm clip). The stateful ones (AGC, AutoClip, ZClip, skip counting) are in clip_state_ops.

Global-norm clipping is two ops: `global_norm` (one parallel pass over every tensor of the group,
float64 accumulation) writes a fetchable [1] norm; `scale_by_global_norm` rescales every tensor in
one more pass, in place where the executor allows it and not at all when nothing is clipped.
"""
import math
import platform
from itertools import repeat

import numpy as np
from .._memory import stream_min_bytes
from ..kernels import clip as K
from ..kernels import clip_stream as KS
from ..registry import REQUIRED, Attr, Elementwise, defop
from ..shapes import numel
from .common import float_same_as, grad_op, is_large, parallel_size, positive

CHUNK = 1 << 18  # elements per parallel work item of the multi-tensor kernels (measured: 2^16 is 5% slower)
INF = float("inf")


# a separate output larger than this is written by streaming stores (kernels/stream.py): below it the
# output may still be in the cache for its reader, and streaming would evict it. x86 only (sfence).
STREAM_MIN_BYTES = stream_min_bytes() if platform.machine().lower() in ("x86_64", "amd64") else math.inf


def _streams(metas, dtype, inplace):
    return not inplace and sum(numel(m.shape) for m in metas) * np.dtype(dtype).itemsize > STREAM_MIN_BYTES


def _norm_type(v):
    return None if v in (2.0, INF) else "must be 2 or inf"


def _nonfinite(v):
    return None if v in ("nan", "zero") else "must be 'nan' or 'zero'"


def _dest(out, i, x):
    """The destination the executor passed for output i (a persistable's old array), else a new array."""
    d = out[i] if out is not None else None
    return np.empty_like(x) if d is None else d


# ---- clip -------------------------------------------------------------------------------------

def _clip_infer(ctx):
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ctx.error(f"needs min <= max and no NaN, got min={lo}, max={hi}", "X")
    return float_same_as("X")(ctx)


def _bounds(ctx):
    # bounds in X's dtype: mixed float32/float64 compares keep the loop from vectorizing
    dtype = ctx.dtype("X").type
    return dtype(ctx.attrs["min"]), dtype(ctx.attrs["max"])


def _lower_clip(ctx):
    inplace = "X" in ctx.overwritable
    kernel = K.clip_into_parallel if is_large(ctx.meta("X")) else K.clip_into
    if _streams([ctx.meta("X")], ctx.dtype("X"), inplace):
        kernel = KS.clip_into_streamed
    lo, hi = _bounds(ctx)
    return lambda x, out=None: kernel(x, x if inplace else _dest(out, 0, x), lo, hi)


_BOUND = Attr(float, REQUIRED, lambda v: None if v == v else "is NaN")  # +-inf allowed, as the clip classes do
_BOUNDS = {"min": _BOUND, "max": _BOUND}
defop("clip", inputs=("X",), attrs=_BOUNDS, infer=_clip_infer, lower=_lower_clip, writes_out=True,
      elementwise=lambda ctx: Elementwise(K._clip_el, ("X", *_bounds(ctx))),
      grad=lambda g: [grad_op("clip_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})],
      doc="Out = min(max(X, min), max); NaN stays NaN, +-Inf saturate. Gradient passes where min <= X <= max.")
defop("clip_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs=_BOUNDS, infer=float_same_as("X", "X@GRAD"),
      lower=lambda ctx: (lambda x, d, lo=ctx.attrs["min"], hi=ctx.attrs["max"]: K.clip_grad(x, d, lo, hi)),
      elementwise=lambda ctx: Elementwise(K._clip_grad_el, ("X", "Out@GRAD", ctx.attrs["min"], ctx.attrs["max"])))


# ---- clip_by_norm -----------------------------------------------------------------------------

def _norm(x, inf_norm):
    return K.abs_max(x) if inf_norm else math.sqrt(K.sq_sum(x))


def _scale_for(norm, c):
    """c / max(norm, c), NaN when the norm is not finite (never a silently finite scale)."""
    return c / max(norm, c) if math.isfinite(norm) else math.nan


def _lower_clip_by_norm(ctx):
    c, inf_norm = ctx.attrs["max_norm"], ctx.attrs["norm_type"] == INF
    inplace = "X" in ctx.overwritable
    dtype = ctx.dtype("X")
    if is_large(ctx.meta("X")):  # the global norm's parallel passes, on a group of one
        norm = group_norm([ctx.meta("X")], inf_norm)
        scale = group_scale([ctx.meta("X")], _streams([ctx.meta("X")], dtype, inplace))
        like = np.empty(0, dtype)
        sizes = sizes_of([ctx.meta("X")])

        def run_large(x, out=None):
            (x,), addrs = address_table((x,), sizes, like)
            s = _scale_for(norm(addrs, like), c)
            if s == 1.0 and inplace:
                return x
            y = x if inplace else _dest(out, 0, x)
            scale(addrs, addrs if inplace else address_table((y,), sizes, like)[1], like, dtype.type(s), False)
            return y

        return run_large

    def run(x, out=None):
        s = _scale_for(_norm(x, inf_norm), c)
        if s == 1.0 and inplace:
            return x
        return K.scale_into(x, x if inplace else _dest(out, 0, x), dtype.type(s))

    return run


def _lower_clip_by_norm_grad(ctx):
    c, inf_norm = ctx.attrs["max_norm"], ctx.attrs["norm_type"] == INF
    return lambda x, d: K.clip_by_norm_grad(x, d, c, _norm(x, inf_norm), inf_norm)


_NORM_ATTRS = {"max_norm": Attr(float, REQUIRED, positive), "norm_type": Attr(float, 2.0, _norm_type)}
defop("clip_by_norm", inputs=("X",), attrs=_NORM_ATTRS, infer=float_same_as("X"), lower=_lower_clip_by_norm,
      writes_out=True,
      grad=lambda g: [grad_op("clip_by_norm_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")},
                              {"X@GRAD": g.ig("X")})],
      doc="Out = X * max_norm / max(norm(X), max_norm), norm L2 (or max-abs for norm_type=inf); NaN if the norm is not finite.")
defop("clip_by_norm_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs=_NORM_ATTRS,
      infer=float_same_as("X", "X@GRAD"), lower=_lower_clip_by_norm_grad)


# ---- global norm (multi-tensor) ---------------------------------------------------------------

def chunk_table(shapes, chunk=CHUNK):
    """The multi-tensor kernels' work table: segments (tensor index, start, stop) of the concatenated
    index space, cut at tensor ends and every `chunk` elements, and `parts`, where work item p is
    segments parts[p]:parts[p+1]: `chunk` elements each (the last fewer), whatever the tensor sizes."""
    tid, start, stop, parts = [], [], [], [0]
    filled = 0  # elements in the current work item
    for k, shape in enumerate(shapes):
        n, a = numel(shape), 0
        while a < n:
            b = min(n, a + chunk - filled)
            tid.append(k)
            start.append(a)
            stop.append(b)
            filled, a = filled + b - a, b
            if filled == chunk:
                parts.append(len(tid))
                filled = 0
    if filled:
        parts.append(len(tid))
    return tuple(np.array(v, dtype=np.int64) for v in (tid, start, stop, parts))


def address_table(arrays, sizes, like):
    """(arrays, int64 data addresses) for the multi-tensor kernels; a non-contiguous array is replaced
    by a contiguous copy (the kernels read each array as one flat block). `sizes`: the element counts
    the kernel's table assumes, checked, since the kernels read raw memory."""
    addrs = np.fromiter(map(K.address_of, arrays, sizes, repeat(like.itemsize)), np.int64, len(arrays))
    if len(arrays) and addrs.min() < 0:
        for a, n, code in zip(arrays, sizes, addrs):
            if code == -2:
                raise ValueError(f"multi-tensor clip kernel: got a {a.dtype}{list(a.shape)} array where its plan "
                                 f"expects {n} elements of {like.dtype}")
        arrays = tuple(a if a.flags.c_contiguous else a.copy() for a in arrays)  # ascontiguousarray makes 0-d 1-d
        addrs = np.fromiter(map(K.address_of, arrays, sizes, repeat(like.itemsize)), np.int64, len(arrays))
    return arrays, addrs


def sizes_of(metas):
    return tuple(numel(m.shape) for m in metas)


def group_norm(metas, inf_norm):
    """norm(addrs, like): the L2 (or max-abs) norm over a group of tensors with these metas, one pass
    (parallel for a large group), float64."""
    table = chunk_table([m.shape for m in metas])
    large = _is_large_group(metas)
    if inf_norm:
        kernel = K.multi_abs_max if large else K.multi_abs_max_serial
        return lambda addrs, like: kernel(addrs, like, *table)
    kernel = K.multi_sq_sum if large else K.multi_sq_sum_serial
    return lambda addrs, like: math.sqrt(kernel(addrs, like, *table))


def group_tensor_norms(metas, inf_norm):
    """norms(addrs, like) -> float64 [n]: each tensor's L2 (or max-abs) norm, from the same one pass
    over the group as `group_norm` (one partial result per segment, then summed per tensor)."""
    table = chunk_table([m.shape for m in metas])
    tid, n = table[0], len(metas)
    large = _is_large_group(metas)
    if inf_norm:
        kernel = K.segment_abs_max if large else K.segment_abs_max_serial
    else:
        kernel = K.segment_sq_sum if large else K.segment_sq_sum_serial

    def norms(addrs, like):
        seg = np.zeros(tid.size)
        kernel(addrs, like, *table, seg)
        if inf_norm:
            out = np.zeros(n)
            with np.errstate(invalid="ignore"):
                np.maximum.at(out, tid, seg)  # NaN propagates, silently (NaN is an answer here)
            return out
        return np.bincount(tid, seg, minlength=n)  # sums of squares, made norms by the caller

    return norms


def group_scale(metas, stream=False):
    """scale(addrs, out_addrs, like, s, zero): out = x * s (or 0) over a group, one pass; `stream`:
    separate outputs are written by streaming stores."""
    table = chunk_table([m.shape for m in metas])
    kernel = K.multi_scale if _is_large_group(metas) else K.multi_scale_serial
    kernel = KS.multi_scale_streamed if stream else kernel
    return lambda addrs, out_addrs, like, s, zero: kernel(addrs, out_addrs, like, *table, s, zero)


def _is_large_group(metas):
    return parallel_size(sum(numel(m.shape) for m in metas))


def _multi_infer(ctx):
    dtype = ctx.expect_dtype("X")
    return dtype


def _global_norm_infer(ctx):
    dtype = _multi_infer(ctx)
    return {"Out": ((1,), dtype), "TensorNorms": ((len(ctx.metas("X")),), dtype)}


def _lower_global_norm(ctx):
    inf_norm = ctx.attrs["norm_type"] == INF
    dtype = ctx.dtype("X")
    like = np.empty(0, dtype)
    sizes = sizes_of(ctx.metas("X"))
    if ctx.has_output("TensorNorms"):
        tensor_norms = group_tensor_norms(ctx.metas("X"), inf_norm)

        def run_both(*xs):
            xs, addrs = address_table(xs, sizes, like)
            per = tensor_norms(addrs, like)
            total = per.max(initial=0.0) if inf_norm else math.sqrt(per.sum())
            return np.array([total], dtype), (per if inf_norm else np.sqrt(per)).astype(dtype)

        return run_both
    norm = group_norm(ctx.metas("X"), inf_norm)

    def run(*xs):
        xs, addrs = address_table(xs, sizes, like)
        return np.array([norm(addrs, like)], dtype)

    return run


def _global_norm_grad(g):
    specs = []
    for x, dx in zip(g.i("X"), g.ig("X")):
        if dx is not None:
            specs.append(grad_op("global_norm_grad", g, {"X": [x], "Out": g.o("Out"), "Out@GRAD": g.og("Out")},
                                 {"X@GRAD": [dx]}))
    return specs


_NT = {"norm_type": Attr(float, 2.0, _norm_type), "group": Attr(str, "")}  # group: the clip group, for readers
defop("global_norm", inputs=("X",), outputs=("Out", "TensorNorms"), duplicable=("X",), optional=("TensorNorms",),
      nondiff_outputs=("TensorNorms",), attrs=_NT, infer=_global_norm_infer, lower=_lower_global_norm,
      grad=_global_norm_grad,
      doc="Out = [sqrt(sum over every X of sum(X**2))] (or the max |X| for norm_type=inf), accumulated in float64; "
          "the optional TensorNorms [n] gets each X's own norm from the same pass.")
defop("global_norm_grad", inputs=("X", "Out", "Out@GRAD"), outputs=("X@GRAD",), attrs=_NT,
      infer=float_same_as("X", "X@GRAD"),
      lower=lambda ctx: (lambda x, n, d, inf=ctx.attrs["norm_type"] == INF:
                         K.global_norm_grad(x, float(n[0]), float(d[0]), inf)))


def _scale_infer(ctx):
    dtype = _multi_infer(ctx)
    for slot in ("GlobalNorm", "ClipNorm"):
        if ctx.has(slot) and numel(ctx.shape(slot)) != 1:
            raise ctx.error(f"slot {slot} must hold one value", slot)
    return {"Out": [(m.shape, dtype) for m in ctx.metas("X")], "Scale": ((1,), dtype)}


def group_scale_factor(gn, c):
    """The factor scale_by_global_norm applies: c / max(gn, c), 1 for c = +inf (nothing to clip), NaN
    when gn is not finite or c is not > 0 (never a silently finite scale)."""
    if not math.isfinite(gn) or not c > 0:
        return math.nan
    return 1.0 if gn <= c else c / gn


def _lower_scale(ctx):
    metas = ctx.metas("X")
    dtype = ctx.dtype("X")
    inplace = "X" in ctx.overwritable
    scale = group_scale(metas, _streams(metas, dtype, inplace))
    like = np.empty(0, dtype)
    sizes = sizes_of(metas)
    zero_bad = ctx.attrs["nonfinite"] == "zero"
    n = len(metas)
    attr_c = ctx.attrs["clip_norm"]
    with_scale = ctx.has_output("Scale")

    def result(outs, s):
        if with_scale:
            return (*outs, np.array([s], dtype))
        return outs if n > 1 else outs[0]

    def run(*args, out=None):
        xs, gn = args[:n], float(args[n][0])
        c = float(args[n + 1][0]) if len(args) > n + 1 else attr_c
        zero = zero_bad and not math.isfinite(gn)
        s = group_scale_factor(gn, c)
        if s == 1.0 and inplace:
            return result(xs, s)
        xs, addrs = address_table(xs, sizes, like)  # contiguous copies, if any, are written in place: they are new
        if inplace:
            outs, out_addrs = xs, addrs
        else:
            outs = tuple(_dest(out, i, x) for i, x in enumerate(xs))
            outs, out_addrs = address_table(outs, sizes, like)
        scale(addrs, out_addrs, like, dtype.type(s), zero)
        return result(outs, 0.0 if zero else s)

    return run


def _scale_grad(g):
    specs = []
    for dout, dx in zip(g.og("Out"), g.ig("X")):
        if dx is not None:  # d Out_i / d X_i is the same scaling
            ins = {"X": [dout], "GlobalNorm": g.i("GlobalNorm"), "ClipNorm": g.i("ClipNorm")}
            specs.append(grad_op("scale_by_global_norm", g, ins, {"Out": [dx]}))
    if g.wants("GlobalNorm"):
        specs.append(grad_op("scale_by_global_norm_grad", g,
                             {"X": g.i("X"), "GlobalNorm": g.i("GlobalNorm"), "Out@GRAD": g.og("Out")},
                             {"GlobalNorm@GRAD": g.ig("GlobalNorm")}))
    return specs


def _lower_scale_grad(ctx):
    metas = ctx.metas("X")
    n = len(metas)
    dtype = ctx.dtype("X")
    like = np.empty(0, dtype)
    sizes = np.array(sizes_of(metas), np.int64)
    c = ctx.attrs["clip_norm"]

    def run(*args):
        xs, addrs = address_table(args[:n], sizes, like)
        douts, dout_addrs = address_table(args[n + 1:], sizes, like)
        return np.array([K.global_norm_scale_grad(addrs, dout_addrs, like, sizes, float(args[n][0]), c)], dtype)

    return run


_SCALE_ATTRS = {"clip_norm": Attr(float, 1.0, positive), "nonfinite": Attr(str, "nan", _nonfinite)}
defop("scale_by_global_norm", inputs=("X", "GlobalNorm", "ClipNorm"), outputs=("Out", "Scale"), duplicable=("X", "Out"),
      optional=("ClipNorm", "Scale"), nondiff_outputs=("Scale",), attrs=_SCALE_ATTRS, infer=_scale_infer,
      lower=_lower_scale, grad=_scale_grad, writes_out=True,
      doc="Out_i = X_i * c / max(GlobalNorm, c), c = ClipNorm if given else clip_norm (c = +inf: unchanged). A "
          "non-finite GlobalNorm gives NaN (nonfinite='nan') or zeros (nonfinite='zero', for the skip-step "
          "policy). The optional Scale [1] gets the factor applied (0 when zeroed).")
defop("scale_by_global_norm_grad", inputs=("X", "GlobalNorm", "Out@GRAD"), outputs=("GlobalNorm@GRAD",),
      duplicable=("X", "Out@GRAD"), attrs=_SCALE_ATTRS,
      infer=lambda ctx: {"GlobalNorm@GRAD": ((1,), _multi_infer(ctx))}, lower=_lower_scale_grad)
