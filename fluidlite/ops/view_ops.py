"""squeeze, unsqueeze, expand, slice and cast (with their gradients)."""
from __future__ import annotations

import numpy as np

from ..kernels import index as K
from ..registry import REQUIRED, Attr, defop
from ..shapes import numel
from .common import grad_op


def _reshape_back(g):
    return [grad_op("reshape_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")}, {})]


def _squeeze_shape(ctx):
    shape, axes = ctx.shape("X"), ctx.attrs["axes"]
    rank = len(shape)
    if any(not -rank <= a < rank for a in axes):
        raise ctx.error(f"axes={list(axes)} out of range for rank {rank}", "X")
    drop = {a % rank for a in axes} if axes else {i for i, d in enumerate(shape) if d == 1}
    bad = [a for a in drop if shape[a] != 1]
    if bad:
        raise ctx.error(f"cannot squeeze axes {sorted(bad)}: their size is not 1", "X")
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def _unsqueeze_shape(ctx):
    out = list(ctx.shape("X"))
    for a in ctx.attrs["axes"]:
        rank = len(out) + 1
        if not -rank <= a < rank:
            raise ctx.error(f"axes={list(ctx.attrs['axes'])}: {a} is out of range for rank {rank}", "X")
        out.insert(a % rank, 1)
    return tuple(out)


for _type, _shape, _doc in (("squeeze", _squeeze_shape, "X without the given size-1 axes (every one if none)"),
                            ("unsqueeze", _unsqueeze_shape, "X with a size-1 axis inserted at each of `axes`, in order")):
    defop(_type, inputs=("X",), attrs={"axes": Attr("ints", ())}, returns_view=True,
          infer=lambda ctx, f=_shape: {"Out": (f(ctx), ctx.dtype("X"))},
          lower=lambda ctx, f=_shape: (lambda x, s=f(ctx): x.reshape(s)), grad=_reshape_back, doc=f"Out = {_doc}.")


def _expand_shape(ctx):
    shape, times = ctx.shape("X"), ctx.attrs["expand_times"]
    if len(times) != len(shape) or any(t < 1 for t in times):
        raise ctx.error(f"expand_times={list(times)} needs one positive count per dimension of X", "X")
    return tuple(-1 if d == -1 else d * t for d, t in zip(shape, times))


def _lower_expand(ctx):
    out = np.array(_expand_shape(ctx), np.int64)
    return lambda x: K.tile(x, out).reshape(tuple(out))


def _lower_expand_grad(ctx):
    xs = np.array(ctx.shape("X"), np.int64)
    return lambda x, g: K.tile_grad(g, xs).reshape(tuple(xs))


defop("expand", inputs=("X",), attrs={"expand_times": Attr("ints", REQUIRED)},
      infer=lambda ctx: {"Out": (_expand_shape(ctx), ctx.dtype("X"))}, lower=_lower_expand,
      grad=lambda g: [grad_op("expand_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})],
      doc="Out = X repeated expand_times[d] times along each dimension d (np.tile).")
defop("expand_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs={"expand_times": Attr("ints", REQUIRED)},
      infer=lambda ctx: {"X@GRAD": (ctx.shape("X"), ctx.dtype("Out@GRAD"))}, lower=_lower_expand_grad)


def _slice_window(ctx, shape):
    """(out shape, flat offset of the window, element strides of X) for concrete or -1 dims."""
    axes, starts, ends = ctx.attrs["axes"], ctx.attrs["starts"], ctx.attrs["ends"]
    rank = len(shape)
    if not len(axes) == len(starts) == len(ends):
        raise ctx.error(f"axes, starts and ends must have one entry each, got {list(axes)}, {list(starts)}, "
                        f"{list(ends)}", "Input")
    out = list(shape)
    begin = [0] * rank
    for a, s, e in zip(axes, starts, ends):
        if not -rank <= a < rank:
            raise ctx.error(f"axis {a} is out of range for rank {rank}", "Input")
        a %= rank
        d = shape[a]
        if d == -1:
            raise ctx.error(f"cannot slice axis {a}: its size is unknown until run time", "Input")
        lo, hi = (s + d if s < 0 else s), (e + d if e < 0 else e)  # Paddle: negative counts from the end
        lo, hi = min(max(lo, 0), d), min(max(hi, 0), d)
        if hi <= lo:
            raise ctx.error(f"the slice {s}:{e} of axis {a} (size {d}) is empty", "Input")
        s, e = lo, hi
        out[a], begin[a] = e - s, s
    strides = [numel(shape[i + 1:]) for i in range(rank)]
    return tuple(out), sum(b * st for b, st in zip(begin, strides)), np.array(strides, np.int64)


_SLICE_ATTRS = {"axes": Attr("ints", REQUIRED), "starts": Attr("ints", REQUIRED), "ends": Attr("ints", REQUIRED)}


def _lower_slice(ctx):
    out, offset, strides = _slice_window(ctx, ctx.shape("Input"))
    dims = np.array(out, np.int64)
    return lambda x: K.read_window(x.reshape(-1)[offset:], dims, strides).reshape(out)


def _lower_slice_grad(ctx):
    shape = ctx.shape("Input")
    out, offset, strides = _slice_window(ctx, shape)
    dims = np.array(out, np.int64)

    def run(x, g):
        dx = np.zeros(shape, g.dtype)
        K.write_window(dx.reshape(-1)[offset:], g, dims, strides)
        return dx

    return run


defop("slice", inputs=("Input",), attrs=_SLICE_ATTRS,
      infer=lambda ctx: {"Out": (_slice_window(ctx, ctx.shape("Input"))[0], ctx.dtype("Input"))}, lower=_lower_slice,
      grad=lambda g: [grad_op("slice_grad", g, {"Input": g.i("Input"), "Out@GRAD": g.og("Out")},
                              {"Input@GRAD": g.ig("Input")})],
      doc="Out = Input[starts[i]:ends[i]] along each axes[i] (negative bounds count from the end, then clamp).")
defop("slice_grad", inputs=("Input", "Out@GRAD"), outputs=("Input@GRAD",), attrs=_SLICE_ATTRS,
      infer=lambda ctx: {"Input@GRAD": (ctx.shape("Input"), ctx.dtype("Out@GRAD"))}, lower=_lower_slice_grad)


def _cast_infer(ctx):
    src, dst = ctx.dtype("X"), np.dtype(ctx.attrs["out_dtype"])
    if src.kind not in "biuf" or dst.kind not in "biuf":
        raise ctx.error(f"casts between numeric dtypes only, got {src} -> {dst}", "X")
    return {"Out": (ctx.shape("X"), dst)}


defop("cast", inputs=("X",), attrs={"out_dtype": Attr("dtype", REQUIRED)}, infer=_cast_infer,
      lower=lambda ctx: (lambda x, d=np.dtype(ctx.attrs["out_dtype"]): K.cast_into(x, np.empty(x.shape, d))),
      grad=lambda g: [grad_op("cast_grad", g, {"X": g.i("X"), "Out@GRAD": g.og("Out")}, {"X@GRAD": g.ig("X")})],
      doc="Out = X converted to out_dtype (floats to ints truncate toward zero); the gradient is cast back.")
defop("cast_grad", inputs=("X", "Out@GRAD"), outputs=("X@GRAD",), attrs={"out_dtype": Attr("dtype", REQUIRED)},
      infer=lambda ctx: {"X@GRAD": (ctx.shape("X"), ctx.dtype("X"))},
      lower=lambda ctx: (lambda x, g: K.cast_into(g, np.empty(g.shape, x.dtype))))
