"""Clipping ops: clip (by value), clip_by_norm, global_norm + scale_by_global_norm (the multi-tensor
global-norm clip), adaptive_clip (AGC), autoclip_threshold and count_nonfinite.

Global-norm clipping is two ops: `global_norm` (one parallel pass over every tensor of the group,
float64 accumulation) writes a fetchable [1] norm; `scale_by_global_norm` rescales every tensor in
one more pass, in place where the executor allows it and not at all when nothing is clipped.
"""
import math

import numpy as np
from numba import from_dtype, types
from numba.typed import List

from ..kernels import clip as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop
from ..shapes import numel
from .common import float_same_as, grad_op, is_large, positive

CHUNK = 1 << 16  # elements per parallel work item of the multi-tensor kernels
INF = float("inf")


def _norm_type(v):
    return None if v in (2.0, INF) else "must be 2 or inf"


def _nonfinite(v):
    return None if v in ("nan", "zero") else "must be 'nan' or 'zero'"


def _out_buffer(ctx, slot, x):
    return x if slot in ctx.overwritable else np.empty_like(x)


# ---- clip -------------------------------------------------------------------------------------

def _clip_infer(ctx):
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ctx.error(f"needs min <= max and no NaN, got min={lo}, max={hi}", "X")
    return float_same_as("X")(ctx)


def _lower_clip(ctx):
    kernel = K.clip_into_parallel if is_large(ctx.meta("X")) else K.clip_into
    # bounds in X's dtype: mixed float32/float64 compares keep the loop from vectorizing
    dtype = ctx.dtype("X").type
    lo, hi = dtype(ctx.attrs["min"]), dtype(ctx.attrs["max"])
    inplace = "X" in ctx.overwritable
    return lambda x: kernel(x, x if inplace else np.empty_like(x), lo, hi)


_BOUNDS = {"min": Attr(float, REQUIRED, lambda v: None), "max": Attr(float, REQUIRED, lambda v: None)}
defop("clip", inputs=("X",), attrs=_BOUNDS, infer=_clip_infer, lower=_lower_clip,
      grad=lambda g: [grad_op("clip_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})],
      doc="Out = min(max(X, min), max); NaN stays NaN, +-Inf saturate. Gradient passes where min <= X <= max.")
defop("clip_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs=_BOUNDS, infer=float_same_as("X", "X@GRAD"),
      lower=lambda ctx: (lambda x, d, lo=ctx.attrs["min"], hi=ctx.attrs["max"]: K.clip_grad(x, d, lo, hi)))


# ---- clip_by_norm -----------------------------------------------------------------------------

def _norm(x, inf_norm):
    return K.abs_max(x) if inf_norm else math.sqrt(K.sq_sum(x))


def _scale_for(norm, c):
    """c / max(norm, c), NaN when the norm is not finite (never a silently finite scale)."""
    return c / max(norm, c) if math.isfinite(norm) else math.nan


def _lower_clip_by_norm(ctx):
    c, inf_norm = ctx.attrs["max_norm"], ctx.attrs["norm_type"] == INF
    inplace = "X" in ctx.overwritable
    dtype = ctx.dtype("X").type

    def run(x):
        s = _scale_for(_norm(x, inf_norm), c)
        if s == 1.0 and inplace:
            return x
        return K.scale_inplace(x, dtype(s)) if inplace else K.scale_into(x, np.empty_like(x), dtype(s))

    return run


def _lower_clip_by_norm_grad(ctx):
    c, inf_norm = ctx.attrs["max_norm"], ctx.attrs["norm_type"] == INF
    return lambda x, d: K.clip_by_norm_grad(x, d, c, _norm(x, inf_norm), inf_norm)


_NORM_ATTRS = {"max_norm": Attr(float, REQUIRED, positive), "norm_type": Attr(float, 2.0, _norm_type)}
defop("clip_by_norm", inputs=("X",), attrs=_NORM_ATTRS, infer=float_same_as("X"), lower=_lower_clip_by_norm,
      grad=lambda g: [grad_op("clip_by_norm_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")},
                              {"X@GRAD": g.ig("X")})],
      doc="Out = X * max_norm / max(norm(X), max_norm), norm L2 (or max-abs for norm_type=inf); NaN if the norm is not finite.")
defop("clip_by_norm_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs=_NORM_ATTRS,
      infer=float_same_as("X", "X@GRAD"), lower=_lower_clip_by_norm_grad)


# ---- global norm (multi-tensor) ---------------------------------------------------------------

def chunk_table(shapes, chunk=CHUNK):
    """(tensor index, start, stop) int64 arrays cutting the concatenated index space into chunks."""
    tid, start, stop = [], [], []
    for k, shape in enumerate(shapes):
        n = numel(shape)
        for a in range(0, n, chunk):
            tid.append(k)
            start.append(a)
            stop.append(min(a + chunk, n))
    return tuple(np.array(v, dtype=np.int64) for v in (tid, start, stop))


def flat_list(arrays, dtype):
    """A numba typed List of the arrays' flat views (no copies)."""
    out = List.empty_list(types.Array(from_dtype(np.dtype(dtype)), 1, "C"))
    for a in arrays:
        out.append(a.reshape(-1))
    return out


def _multi_infer(ctx):
    dtype = ctx.expect_dtype("X")
    return dtype


def _global_norm_infer(ctx):
    return {"Out": ((1,), _multi_infer(ctx))}


def _lower_global_norm(ctx):
    table = chunk_table([m.shape for m in ctx.metas("X")])
    dtype = ctx.dtype("X")
    inf_norm = ctx.attrs["norm_type"] == INF

    def run(*xs):
        flat = flat_list(xs, dtype)
        norm = K.multi_abs_max(flat, *table) if inf_norm else math.sqrt(K.multi_sq_sum(flat, *table))
        return np.array([norm], dtype)

    return run


def _global_norm_grad(g):
    specs = []
    for x, dx in zip(g.i("X"), g.ig("X")):
        if dx is not None:
            specs.append(grad_op("global_norm_grad", g, {"X": [x], "Out": g.o("Out"), "Out@GRAD": g.og("Out")},
                                 {"X@GRAD": [dx]}))
    return specs


_NT = {"norm_type": Attr(float, 2.0, _norm_type), "group": Attr(str, "")}  # group: the clip group, for lookup
defop("global_norm", inputs=("X",), duplicable=("X",), attrs=_NT, infer=_global_norm_infer, lower=_lower_global_norm,
      grad=_global_norm_grad,
      doc="Out = [sqrt(sum over every X of sum(X**2))] (or the max |X| for norm_type=inf), accumulated in float64.")
defop("global_norm_grad", inputs=("X", "Out", "Out@GRAD"), outputs=("X@GRAD",), attrs=_NT,
      infer=float_same_as("X", "X@GRAD"),
      lower=lambda ctx: (lambda x, n, d, inf=ctx.attrs["norm_type"] == INF:
                         K.global_norm_grad(x, float(n[0]), float(d[0]), inf)))


def _scale_infer(ctx):
    dtype = _multi_infer(ctx)
    for slot in ("GlobalNorm", "ClipNorm"):
        if ctx.has(slot) and numel(ctx.shape(slot)) != 1:
            raise ctx.error(f"slot {slot} must hold one value", slot)
    return {"Out": [(m.shape, dtype) for m in ctx.metas("X")]}


def _lower_scale(ctx):
    metas = ctx.metas("X")
    table = chunk_table([m.shape for m in metas])
    dtype = ctx.dtype("X")
    inplace = "X" in ctx.overwritable
    zero_bad = ctx.attrs["nonfinite"] == "zero"
    n = len(metas)
    attr_c = ctx.attrs["clip_norm"]

    def run(*args):
        xs, gn = args[:n], float(args[n][0])
        c = float(args[n + 1][0]) if len(args) > n + 1 else attr_c
        zero = zero_bad and not math.isfinite(gn)
        s = _scale_for(gn, c) if math.isfinite(c) and c > 0 else math.nan
        if s == 1.0 and inplace:
            return xs if n > 1 else xs[0]
        if inplace:
            K.multi_scale_inplace(flat_list(xs, dtype), *table, dtype.type(s), zero)
            outs = xs
        else:
            outs = tuple(np.empty_like(x) for x in xs)
            K.multi_scale(flat_list(xs, dtype), flat_list(outs, dtype), *table, dtype.type(s), zero)
        return outs if n > 1 else outs[0]

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
    n = len(ctx.metas("X"))
    dtype = ctx.dtype("X")
    c = ctx.attrs["clip_norm"]

    def run(*args):
        xs, gn, douts = args[:n], args[n], args[n + 1:]
        d = K.global_norm_scale_grad(flat_list(xs, dtype), flat_list(douts, dtype), float(gn[0]), c)
        return np.array([d], dtype)

    return run


_SCALE_ATTRS = {"clip_norm": Attr(float, 1.0, positive), "nonfinite": Attr(str, "nan", _nonfinite)}
defop("scale_by_global_norm", inputs=("X", "GlobalNorm", "ClipNorm"), duplicable=("X", "Out"),
      optional=("ClipNorm",), attrs=_SCALE_ATTRS, infer=_scale_infer, lower=_lower_scale, grad=_scale_grad,
      doc="Out_i = X_i * c / max(GlobalNorm, c), c = ClipNorm if given else clip_norm. A non-finite "
          "GlobalNorm gives NaN (nonfinite='nan') or zeros (nonfinite='zero', for the skip-step policy).")
defop("scale_by_global_norm_grad", inputs=("X", "GlobalNorm", "Out@GRAD"), outputs=("GlobalNorm@GRAD",),
      duplicable=("X", "Out@GRAD"), attrs=_SCALE_ATTRS,
      infer=lambda ctx: {"GlobalNorm@GRAD": ((1,), _multi_infer(ctx))}, lower=_lower_scale_grad)


# ---- adaptive clipping, AutoClip, non-finite counting -----------------------------------------

def _agc_infer(ctx):
    ctx.expect_dtype("Param", "X")
    if ctx.shape("Param") != ctx.shape("X"):
        raise ctx.error("Param and X (its gradient) need one shape", "Param", "X")
    return {"Out": (ctx.shape("X"), ctx.dtype("X"))}


def _lower_agc(ctx):
    shape = ctx.shape("X")
    as2d = (numel(shape[:-1]), shape[-1]) if len(shape) >= 2 else (1, numel(shape))  # vectors: per element
    clipping, eps = ctx.attrs["clipping"], ctx.attrs["eps"]

    def run(p, g):
        out = _out_buffer(ctx, "X", g)
        K.adaptive_clip(p.reshape(as2d), g.reshape(as2d), out.reshape(as2d), clipping, eps)
        return out

    return run


defop("adaptive_clip", inputs=("Param", "X"),
      attrs={"clipping": Attr(float, 0.01, positive), "eps": Attr(float, 1e-3, positive)},
      infer=_agc_infer, lower=_lower_agc, grad=NO_GRAD,
      doc="AGC: each unit (column of a (in, out) weight; element of a vector) of gradient X is rescaled to "
          "at most clipping * max(norm of that unit of Param, eps).")


def _autoclip_infer(ctx):
    if ctx.dtype("Count").kind != "i":
        raise ctx.error("Count must be an integer var", "Count")
    return {"ClipNorm": ((1,), ctx.dtype("Norm")), "HistoryOut": (ctx.shape("History"), ctx.dtype("History")),
            "CountOut": (ctx.shape("Count"), ctx.dtype("Count"))}


def _lower_autoclip(ctx):
    p = ctx.attrs["percentile"]
    dtype = ctx.dtype("Norm")

    def run(norm, history, count):
        history = history if "History" in ctx.overwritable else history.copy()
        count = count if "Count" in ctx.overwritable else count.copy()
        c = K.autoclip_update(float(norm[0]), history, count, p)
        return np.array([c], dtype), history, count

    return run


defop("autoclip_threshold", inputs=("Norm", "History", "Count"), outputs=("ClipNorm", "HistoryOut", "CountOut"),
      attrs={"percentile": Attr(float, 10.0, lambda v: None if 0 <= v <= 100 else "must be in [0, 100]")},
      infer=_autoclip_infer, lower=_lower_autoclip, grad=NO_GRAD,
      doc="Records a finite Norm in the ring buffer History (Count norms seen), ClipNorm = the percentile "
          "of the recorded norms (AutoClip).")


def _lower_count(ctx):
    def run(*args):
        norms, count = args[:-1], args[-1]
        count = count if "Count" in ctx.overwritable else count.copy()
        found = K.count_nonfinite(np.array([float(v[0]) for v in norms]), count)
        return np.array([found]), count

    return run


defop("count_nonfinite", inputs=("X", "Count"), outputs=("Found", "CountOut"), duplicable=("X",),
      infer=lambda ctx: {"Found": ((1,), np.bool_), "CountOut": (ctx.shape("Count"), ctx.dtype("Count"))},
      lower=_lower_count, grad=NO_GRAD,
      doc="Found = [any X (norms) is NaN or Inf]; CountOut = Count + Found (skipped-step counter).")
