"""Ops the `lstm_seq` pass introduces (compiler/lstm_seq.py; never appended by layers): an unrolled LSTM's
recurrence as one op forward, `lstm_sequence`, and one backward, `lstm_sequence_backward`, each a single
parallel loop over bands of batch rows (kernels/lstm_seq.py). Their per-step outputs keep the names of
the lstm_unit / lstm_unit_grad outputs they replace."""
import numba
import numpy as np

from ..kernels import lstm_seq as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop


def _consecutive(arrays):
    """The [T, ...] array whose slices 0..T-1 the T arrays are (one buffer, in order), or None."""
    first = arrays[0]
    base = first.base
    if (not isinstance(base, np.ndarray) or base.shape[1:] != first.shape or base.dtype != first.dtype
            or not base.flags.c_contiguous or not base.flags.writeable or base.shape[0] < len(arrays)):
        return None
    origin, step = base.ctypes.data, base.strides[0]
    start, rest = divmod(first.ctypes.data - origin, step)
    if rest or not 0 <= start <= base.shape[0] - len(arrays):
        return None
    for t, a in enumerate(arrays):
        if a.base is not base or a.shape != first.shape or a.ctypes.data != origin + (start + t) * step:
            return None
    return base[start:start + len(arrays)]


def _stacked(arrays):
    """The arrays as one [T, ...] array: their own buffer when they are its slices in order, else a copy."""
    whole = _consecutive(arrays)
    return np.stack(arrays) if whole is None else whole


def _into(out, shape, dtype):
    """(a [T, ...] buffer for the T given arrays, whether the results must be copied into them after)."""
    if out is None or all(a is None for a in out):
        return np.empty(shape, dtype), False
    whole = None if any(a is None for a in out) else _consecutive(out)
    return (np.empty(shape, dtype), True) if whole is None else (whole, False)


def _parts() -> int:
    return numba.get_num_threads()  # a run's limit included (fluidlite/_threads.py's RunGuard)


def _seq_infer(ctx):
    dtype = ctx.expect_dtype("Pre", "H0", "C0", "W")
    pre, h0, c0, w = (ctx.shape(s) for s in ("Pre", "H0", "C0", "W"))
    steps, first = ctx.attrs["steps"], ctx.attrs["first"]
    if (len(pre) != 3 or len(h0) != 2 or h0 != c0 or w != (h0[1], 4 * h0[1]) or pre[1:] != (h0[0], w[1])
            or steps < 1 or not 0 <= first <= pre[0] - steps):
        raise ctx.error(f"needs Pre [T, B, 4H] holding steps first={first} to first+steps={first + steps}, "
                        "H0 and C0 [B, H], W [H, 4H]", "Pre", "H0", "C0", "W")
    return {"C": [(h0, dtype)] * steps, "H": [(h0, dtype)] * steps, "Gate": [(pre[1:], dtype)] * steps}


def _lower_seq(ctx):
    steps, first, fb = ctx.attrs["steps"], ctx.attrs["first"], ctx.attrs["forget_bias"]
    in_place = "Pre" in ctx.overwritable

    def run(pre, h0, c0, w, out=None):
        part = pre[first:first + steps]
        if not (in_place and part.flags.c_contiguous and part.flags.writeable):
            part = part.copy()
        given = [None] * 3 if out is None else [out[k * steps:(k + 1) * steps] for k in range(3)]
        (cs, copy_c), (hs, copy_h), (gates, copy_g) = (
            _into(g, shape, pre.dtype) for g, shape in zip(given, ((steps,) + h0.shape,) * 2 + (part.shape,)))
        K.lstm_sequence(part, np.ascontiguousarray(h0), np.ascontiguousarray(c0), w, fb,
                        hs, cs, gates, _parts())
        results = []
        for arrays, copy, g in zip((cs, hs, gates), (copy_c, copy_h, copy_g), given):
            for t in range(steps):
                if copy and g[t] is not None:
                    g[t][...] = arrays[t]
                results.append(g[t] if copy and g[t] is not None else arrays[t])
        return tuple(results)

    return run


defop("lstm_sequence", inputs=("Pre", "H0", "C0", "W"), outputs=("C", "H", "Gate"), duplicable=("C", "H", "Gate"),
      attrs={"steps": Attr(int, REQUIRED), "first": Attr(int, 0), "forget_bias": Attr(float, 0.0)},
      infer=_seq_infer, lower=_lower_seq, grad=NO_GRAD, writes_out=True,
      doc="`steps` LSTM steps in one op: step t is lstm_unit(Pre[first + t] + H_{t-1} @ W, C_{t-1}) with "
          "H_{-1} = H0, C_{-1} = C0; C[t], H[t], Gate[t] are its outputs. Pre's buffer receives the "
          "pre-activations when the plan lets it be overwritten.")


def _backward_infer(ctx):
    dtype = ctx.expect_dtype("Gate", "C", "C0", "W", "LastH@GRAD", "LastC@GRAD", "StepH@GRAD")
    steps, c0, w, extra = len(ctx.metas("Gate")), ctx.shape("C0"), ctx.shape("W"), ctx.metas("StepH@GRAD")
    ok = (len(c0) == 2 and w == (c0[1], 4 * c0[1]) and len(ctx.metas("C")) == steps >= 1
          and all(m.shape == c0 for m in ctx.metas("C") + extra) and len(extra) in (0, steps - 1)
          and all(m.shape == (c0[0], w[1]) for m in ctx.metas("Gate"))
          and ctx.shape("LastH@GRAD") == c0 == ctx.shape("LastC@GRAD"))
    if not ok:
        raise ctx.error("needs T Gate [B, 4H] and T C [B, H], C0, LastH@GRAD and LastC@GRAD [B, H], W [H, 4H], "
                        "and no StepH@GRAD or T - 1 of them [B, H]")
    return {"X@GRAD": [((c0[0], w[1]), dtype)] * steps, "C0@GRAD": (c0, dtype), "H0@GRAD": (c0, dtype)}


def _lower_backward(ctx):
    steps = len(ctx.metas("Gate"))
    want_c0, want_h0 = ctx.has_output("C0@GRAD"), ctx.has_output("H0@GRAD")

    def run(*args, out=None):
        gates, cs, (c0, w, dh, dc), extra = args[:steps], args[steps:2 * steps], args[2 * steps:2 * steps + 4], \
            args[2 * steps + 4:]
        g3, c3 = _stacked(gates), _stacked(cs)
        dh_steps = _stacked(extra) if extra else np.empty((0,) + c0.shape, c0.dtype)
        given = [None] * steps if out is None else out[:steps]
        dxs, copy = _into(given, g3.shape, g3.dtype)
        state = [] if out is None else list(out[steps:])  # C0@GRAD's and H0@GRAD's arrays, those present
        dc0 = (state.pop(0) if state else None) if want_c0 else None
        dh0 = (state.pop(0) if state else None) if want_h0 else None
        dc0 = np.empty(c0.shape, c0.dtype) if dc0 is None else dc0
        dh0 = (np.empty(c0.shape, c0.dtype) if dh0 is None else dh0) if want_h0 else np.empty((0, 0), c0.dtype)
        K.lstm_sequence_backward(g3, np.ascontiguousarray(c0), c3, w, np.ascontiguousarray(dh),
                                 np.ascontiguousarray(dc), dh_steps, dxs, dc0, dh0, _parts())
        results = []
        for t in range(steps):
            if copy and given[t] is not None:
                given[t][...] = dxs[t]
            results.append(given[t] if copy and given[t] is not None else dxs[t])
        return tuple(results + ([dc0] if want_c0 else []) + ([dh0] if want_h0 else []))

    return run


defop("lstm_sequence_backward", inputs=("Gate", "C", "C0", "W", "LastH@GRAD", "LastC@GRAD", "StepH@GRAD"),
      outputs=("X@GRAD", "C0@GRAD", "H0@GRAD"), duplicable=("Gate", "C", "StepH@GRAD", "X@GRAD"),
      optional=("StepH@GRAD", "C0@GRAD", "H0@GRAD"),
      infer=_backward_infer, lower=_lower_backward, grad=NO_GRAD, writes_out=True,
      doc="The gradients of T LSTM steps (lstm_sequence) back from those of the last H and C, and StepH@GRAD[t] "
          "(t < T - 1) added to H[t]'s: X@GRAD[t] the step-t pre-activations' (lstm_unit_grad's X@GRAD); "
          "C0@GRAD and H0@GRAD those of the initial state, H0's through the first step's product with W.")
