"""Ops for recurrent nets: stack/unstack (StaticRNN's step inputs and outputs),
fill_constant_batch_size_like (zero initial states), and the fused lstm_unit and gru_unit cells."""
import numpy as np

from ..kernels import init as KI
from ..kernels import rnn as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop
from ..shapes import dims_match, numel
from .common import grad_op, parallel_work


def _axis(ctx, rank):
    a = ctx.attrs["axis"]
    if not -rank <= a < rank:
        raise ctx.error(f"axis={a} is out of range for rank {rank}")
    return a % rank


def _pick(ctx, slots, values):
    """The present outputs among `slots` (a lone array when only one is present)."""
    out = tuple(v for s, v in zip(slots, values) if ctx.has_output(s))
    return out[0] if len(out) == 1 else out


# ---- stack / unstack -------------------------------------------------------------------------

def _stack_infer(ctx):
    first = ctx.meta("X")
    ctx.expect_dtype("X", kinds="fiub")
    for m in ctx.metas("X")[1:]:
        if len(m.shape) != len(first.shape) or not all(map(dims_match, m.shape, first.shape)):
            raise ctx.error(f"all inputs need one shape; {m.name!r} is {list(m.shape)}, "
                            f"{first.name!r} is {list(first.shape)}", "X")
    a = _axis(ctx, len(first.shape) + 1)
    return {"Out": (first.shape[:a] + (len(ctx.metas("X")),) + first.shape[a:], first.dtype)}


def _lower_stack(ctx):
    shape, n = ctx.shape("X"), len(ctx.metas("X"))
    a = _axis(ctx, len(shape) + 1)
    pre, post = numel(shape[:a]), numel(shape[a:])
    out_shape, dtype = shape[:a] + (n,) + shape[a:], ctx.dtype("X")

    def run(*xs):
        out = np.empty((pre, n, post), dtype)
        for t, x in enumerate(xs):
            K.put_step(out, t, x.reshape(pre, post))
        return out.reshape(out_shape)

    return run


defop("stack", inputs=("X",), duplicable=("X",), attrs={"axis": Attr(int, 0)},
      infer=_stack_infer, lower=_lower_stack,
      grad=lambda g: [grad_op("unstack", g, {"X": g.og("Out")}, {"Out": [n for n in g.ig("X") if n is not None]},
                              {"axis": g.attrs["axis"],
                               "indices": [k for k, n in enumerate(g.ig("X")) if n is not None]})],
      doc="Out = the X[i] stacked along a new dimension `axis`.")


def _unstack_indices(ctx, n):
    idx = ctx.attrs["indices"] or tuple(range(n))
    if n >= 0 and any(not 0 <= i < n for i in idx):
        raise ctx.error(f"indices {list(idx)} out of range for {n} steps", "X")
    return idx


def _unstack_infer(ctx):
    shape = ctx.shape("X")
    if not shape:
        raise ctx.error("needs a tensor of rank >= 1", "X")
    a = _axis(ctx, len(shape))
    if shape[a] < 0 and not ctx.attrs["indices"]:
        raise ctx.error(f"the unstacked dimension {a} must be known", "X")
    idx = _unstack_indices(ctx, shape[a])
    return {"Out": [(shape[:a] + shape[a + 1:], ctx.dtype("X"))] * len(idx)}


def _lower_unstack(ctx):
    shape = ctx.shape("X")
    a = _axis(ctx, len(shape))
    idx = _unstack_indices(ctx, shape[a])
    pre, post, part = numel(shape[:a]), numel(shape[a + 1:]), shape[:a] + shape[a + 1:]
    if pre == 1:  # x[t] is contiguous: hand out views
        outs = lambda x: tuple(x.reshape(shape[a], post)[t].reshape(part) for t in idx)  # noqa: E731
    else:
        outs = lambda x: tuple(K.take_step(x.reshape(pre, shape[a], post), t).reshape(part) for t in idx)  # noqa: E731
    if len(idx) == 1:
        return lambda x: outs(x)[0]
    return outs


def _unstack_grad(g):
    if g.attrs["indices"]:
        raise ValueError("unstack: a gradient through an unstack that keeps only some `indices` is not supported")
    return [grad_op("stack", g, {"X": g.og("Out")}, {"Out": g.ig("X")}, {"axis": g.attrs["axis"]})]


defop("unstack", inputs=("X",), outputs=("Out",), duplicable=("Out",),
      attrs={"axis": Attr(int, 0), "indices": Attr("ints", ())},
      infer=_unstack_infer, lower=_lower_unstack, grad=_unstack_grad, returns_view=True, disjoint_views=True,
      doc="Out[k] = X taken at position indices[k] (default: every position) of dimension `axis`.")


# ---- fill_constant_batch_size_like ------------------------------------------------------------

def _fill_bsl_shape(ctx, in_shape):
    shape, i, o = list(ctx.attrs["shape"]), ctx.attrs["input_dim_idx"], ctx.attrs["output_dim_idx"]
    if not 0 <= i < len(in_shape) or not 0 <= o < len(shape):
        raise ctx.error(f"input_dim_idx={i} / output_dim_idx={o} do not fit input rank {len(in_shape)} "
                        f"and shape {shape}", "Input")
    shape[o] = in_shape[i]
    return tuple(shape)


def _lower_fill_bsl(ctx):
    shape, dtype, value = _fill_bsl_shape(ctx, ctx.shape("Input")), np.dtype(ctx.attrs["dtype"]), ctx.attrs["value"]
    return lambda ref: KI.fill(np.empty(shape, dtype), value)


defop("fill_constant_batch_size_like", inputs=("Input",),
      attrs={"shape": Attr("shape", REQUIRED), "dtype": Attr("dtype", "float32"), "value": Attr(float, 0.0),
             "input_dim_idx": Attr(int, 0), "output_dim_idx": Attr(int, 0)},
      infer=lambda ctx: {"Out": (_fill_bsl_shape(ctx, ctx.shape("Input")), np.dtype(ctx.attrs["dtype"]))},
      lower=_lower_fill_bsl, grad=NO_GRAD,
      doc="Out = `shape` filled with `value`, where Out.shape[output_dim_idx] = Input.shape[input_dim_idx].")


# ---- lstm_unit ----------------------------------------------------------------------------------

def _lstm_infer(ctx):
    ctx.expect_dtype("X", "C_prev")
    xs, cs = ctx.shape("X"), ctx.shape("C_prev")
    if len(xs) != 2 or len(cs) != 2 or not dims_match(xs[0], cs[0]) or (
            xs[1] >= 0 and cs[1] >= 0 and xs[1] != 4 * cs[1]):
        raise ctx.error("X must be [N, 4H] and C_prev [N, H]", "X", "C_prev")
    shape = (max(xs[0], cs[0]), cs[1])
    return {"C": (shape, ctx.dtype("X")), "H": (shape, ctx.dtype("X")), "Gate": (xs, ctx.dtype("X"))}


def _out_positions(ctx, slots) -> list:
    """For each of `slots`, its index in a `writes_out` kernel's `out` list (one entry per present output,
    in the op's output order), or None when the op lacks that output."""
    present = [slot for slot, names in ctx.outputs.items() for _ in names]
    return [present.index(slot) if slot in present else None for slot in slots]


# A cell's unit costs about what 16 adds do (four exponentials and their divisions): from 4096 units on the
# pool (2^16 / 16) the cell takes its parallel twin. [32, 256] on fluidlite/_pool.py's workers: forward
# 22 us on one thread against 12 on two, gradient 10.7 against 6.3; [8, 256]: 6.2 against 4.7, 3.5 against 3.6.
CELL_COST = 16


def _given(out, position, like):
    """The output array the plan gave (`writes_out`), else a new one shaped like `like`."""
    given = None if out is None or position is None else out[position]
    return np.empty_like(like) if given is None else given


def _lower_lstm(ctx):
    fb = ctx.attrs["forget_bias"]
    pc, ph, pg = _out_positions(ctx, ("C", "H", "Gate"))

    def run(x, cp, out=None):
        c, h, gate = _given(out, pc, cp), _given(out, ph, cp), _given(out, pg, x)
        kernel = K.lstm_unit_into_parallel if parallel_work(cp.size, CELL_COST) else K.lstm_unit_into
        return kernel(x, cp, fb, c, h, gate)

    return run


def _lower_lstm_grad(ctx):
    slots = ("X@GRAD", "C_prev@GRAD")
    px, pc = _out_positions(ctx, slots)

    def run(gate, cp, c, dh, dc, out=None):
        dx, dcp = _given(out, px, gate), _given(out, pc, cp)
        kernel = K.lstm_unit_grad_into_parallel if parallel_work(cp.size, CELL_COST) else K.lstm_unit_grad_into
        return _pick(ctx, slots, kernel(gate, cp, c, dh, dc, dx, dcp))

    return run


defop("lstm_unit", inputs=("X", "C_prev"), outputs=("C", "H", "Gate"), attrs={"forget_bias": Attr(float, 0.0)},
      infer=_lstm_infer, lower=_lower_lstm, batch_poly=True, writes_out=True, nondiff_outputs=("Gate",),
      grad=lambda g: [grad_op("lstm_unit_grad", g,
                              {"Gate": g.o("Gate"), "C_prev": g.i("C_prev"), "C": g.o("C"),
                               "H@GRAD": g.og("H"), "C@GRAD": g.og("C")},
                              {"X@GRAD": g.ig("X"), "C_prev@GRAD": g.ig("C_prev")}, attrs={})],
      doc="One LSTM step. X holds the gate pre-activations [i, f, o, j] ([N, 4H]); "
          "C = sigmoid(f + forget_bias) * C_prev + sigmoid(i) * tanh(j), H = sigmoid(o) * tanh(C). "
          "Gate saves the activated gates for the gradient (no gradient flows back through it).")


defop("lstm_unit_grad", inputs=("Gate", "C_prev", "C", "H@GRAD", "C@GRAD"), outputs=("X@GRAD", "C_prev@GRAD"),
      optional=("X@GRAD", "C_prev@GRAD"),
      infer=lambda ctx: {"X@GRAD": (ctx.shape("Gate"), ctx.dtype("Gate")),
                         "C_prev@GRAD": (ctx.shape("C_prev"), ctx.dtype("C_prev"))},
      lower=_lower_lstm_grad, batch_poly=True, writes_out=True)


# ---- gru_unit -----------------------------------------------------------------------------------

def _gru_infer(ctx):
    ctx.expect_dtype("Input", "HiddenPrev", "Weight", "Bias")
    xs, hs, ws = ctx.shape("Input"), ctx.shape("HiddenPrev"), ctx.shape("Weight")
    ok = len(xs) == 2 and len(hs) == 2 and ws == (hs[1], 3 * hs[1]) and dims_match(xs[0], hs[0]) and xs[1] == 3 * hs[1]
    if ctx.has("Bias"):
        ok = ok and numel(ctx.shape("Bias")) == 3 * hs[1]
    if not ok:
        raise ctx.error("Input must be [N, 3H], HiddenPrev [N, H], Weight [H, 3H] and Bias 3H elements",
                        "Input", "HiddenPrev", "Weight", "Bias")
    n, dt = max(xs[0], hs[0]), ctx.dtype("Input")
    return {"Gate": ((n, xs[1]), dt), "ResetHiddenPrev": ((n, hs[1]), dt), "Hidden": ((n, hs[1]), dt)}


def _lower_gru(ctx):
    origin = ctx.attrs["origin_mode"]
    if ctx.has("Bias"):
        return lambda x, h, w, b: K.gru_unit(x, h, w, b.reshape(-1), origin)
    zeros = np.zeros(ctx.shape("Weight")[1], ctx.dtype("Weight"))
    return lambda x, h, w: K.gru_unit(x, h, w, zeros, origin)


def _gru_grad(g):
    ins = {"HiddenPrev": g.i("HiddenPrev"), "Weight": g.i("Weight"), "Gate": g.o("Gate"),
           "ResetHiddenPrev": g.o("ResetHiddenPrev"), "Hidden@GRAD": g.og("Hidden")}
    if g.i("Bias"):
        ins["Bias"] = g.i("Bias")
    return [grad_op("gru_unit_grad", g, ins, {"Input@GRAD": g.ig("Input"), "HiddenPrev@GRAD": g.ig("HiddenPrev"),
                                              "Weight@GRAD": g.ig("Weight"), "Bias@GRAD": g.ig("Bias")})]


defop("gru_unit", inputs=("Input", "HiddenPrev", "Weight", "Bias"), outputs=("Gate", "ResetHiddenPrev", "Hidden"),
      optional=("Bias",), attrs={"origin_mode": Attr(bool, False)}, infer=_gru_infer, lower=_lower_gru, grad=_gru_grad,
      doc="One GRU step on a projected input [u, r, c] ([N, 3H]): u, r = sigmoid(Input + HiddenPrev @ W_ur + b), "
          "c = tanh(Input_c + (r * HiddenPrev) @ W_c + b_c), Hidden = (1-u)*HiddenPrev + u*c "
          "(u*HiddenPrev + (1-u)*c with origin_mode). Gate and ResetHiddenPrev are intermediates: "
          "no gradient flows back from them.")

_GRU_GRAD_OUT = ("Input@GRAD", "HiddenPrev@GRAD", "Weight@GRAD", "Bias@GRAD")


def _lower_gru_grad(ctx):
    origin, bshape = ctx.attrs["origin_mode"], ctx.shape("Bias") if ctx.has("Bias") else None
    px = _out_positions(ctx, _GRU_GRAD_OUT)[0]

    def run(h, w, gate, rh, dh, *bias, out=None):
        into = None if out is None or px is None else out[px]
        dx, dhp, dw, db = K.gru_unit_grad(h, w, gate, rh, dh, origin, np.empty_like(gate) if into is None else into)
        return _pick(ctx, _GRU_GRAD_OUT, (dx, dhp, dw, db.reshape(bshape) if bshape else db))

    return run


defop("gru_unit_grad", inputs=("HiddenPrev", "Weight", "Gate", "ResetHiddenPrev", "Hidden@GRAD", "Bias"),
      outputs=_GRU_GRAD_OUT, optional=("Bias",) + _GRU_GRAD_OUT, attrs={"origin_mode": Attr(bool, False)},
      infer=lambda ctx: {"Input@GRAD": (ctx.shape("Gate"), ctx.dtype("Gate")),
                         "HiddenPrev@GRAD": (ctx.shape("HiddenPrev"), ctx.dtype("Gate")),
                         "Weight@GRAD": (ctx.shape("Weight"), ctx.dtype("Gate")),
                         "Bias@GRAD": (ctx.shape("Bias") if ctx.has("Bias") else (0,), ctx.dtype("Gate"))},
      lower=_lower_gru_grad, writes_out=True)
