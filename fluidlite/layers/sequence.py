"""Padded variable-length sequences: sequence_mask, and the multi-layer, optionally bidirectional
`lstm` and `gru` layers (Paddle Fluid 1.x's fused `layers.lstm` and a GRU counterpart) built on
StaticRNN with the fused lstm_unit / gru_unit ops, so their input projections are hoisted out of
the time loop and every unrolled step shares one set of weights.

Layout (time-major): input [T, B, D]; states [L * dirs, B, H], index `layer * dirs + direction`
(direction 1 runs backward in time). Per layer and direction, an LSTM owns an input weight
[D_in, 4H], a recurrent weight [H, 4H] and a bias [4H] with the gates in the order input, forget,
output, candidate (i, f, o, j); a GRU owns an input projection [D_in, 3H] + bias [3H] and gru_unit's
recurrent weight [H, 3H] + bias [1, 3H] with the gates update, reset, candidate (u, r, c).

With `sequence_length` (int64 [B]) step t of example b is padding when t >= length[b]: there the
state is carried unchanged, the output is 0, and no gradient flows into the step's computation;
`last_h` / `last_c` are the states at each example's last valid step. The backward direction runs
over each example's valid steps in reverse (padding stays where it is)."""
from __future__ import annotations

from .. import unique_name
from ..param_attr import ParamAttr
from .basic import fc
from .helper import LayerHelper, check_variable
from .math import elementwise_add, elementwise_mul, elementwise_sub
from .nn import dropout
from .rnn import StaticRNN, gru_unit, lstm_unit
from .tensor import concat, transpose
from .view import stack, unsqueeze, unstack

__all__ = ["sequence_mask", "sequence_reverse", "lstm", "gru"]


def sequence_mask(x, maxlen=None, dtype="int64", name=None):
    """[B, maxlen]: 1 where t < x[b], else 0 (maxlen None: the longest length, known at run time)."""
    helper = LayerHelper("sequence_mask", name)
    return helper.append_op("sequence_mask", {"X": check_variable(x, "x", "sequence_mask")},
                            {"maxlen": -1 if maxlen is None else maxlen, "out_dtype": dtype}, outputs=("Y",))


def sequence_reverse(x, length=None, name=None):
    """Each example's first length[b] steps of time-major x in reverse order (all T steps without length)."""
    inputs = {"X": check_variable(x, "x", "sequence_reverse")}
    if length is not None:
        inputs["Length"] = check_variable(length, "length", "sequence_reverse")
    return LayerHelper("sequence_reverse", name).append_op("sequence_reverse", inputs)


def _check(layer, input, states, max_len, hidden_size, num_layers, dirs, sequence_length):
    check_variable(input, "input", layer)
    if len(input.shape) != 3 or input.shape[0] != max_len:
        raise ValueError(f"{layer}: input {input.name!r} must be time-major [max_len={max_len}, batch, dim], "
                         f"got {list(input.shape)}")
    for arg, v in states.items():
        check_variable(v, arg, layer)
        want = [num_layers * dirs, input.shape[1], hidden_size]
        if len(v.shape) != 3 or v.shape[0] != want[0] or v.shape[2] != hidden_size or v.dtype != input.dtype:
            raise ValueError(f"{layer}: {arg} {v.name!r} must be {input.dtype} {want} (num_layers * directions, "
                             f"batch, hidden_size), got {v.dtype} {list(v.shape)}")
    if sequence_length is not None:
        check_variable(sequence_length, "sequence_length", layer)
        if sequence_length.dtype.kind not in "iu" or len(sequence_length.shape) != 1:
            raise ValueError(f"{layer}: sequence_length {sequence_length.name!r} must be integer [batch], got "
                             f"{sequence_length.dtype} {list(sequence_length.shape)}")
        return unsqueeze(transpose(sequence_mask(sequence_length, max_len, input.dtype), [1, 0]), [2])
    return None


def _masked(m_t, new, prev):
    """prev + m_t * (new - prev): the new state on valid steps, the old one on padding."""
    return elementwise_add(prev, elementwise_mul(elementwise_sub(new, prev), m_t))


def _direction(input, mask, states, cell, name, error_clip):
    """One recurrent pass over input; `cell(x_t, *prev) -> new states` (the first is the output)."""
    rnn = StaticRNN(name=name)
    with rnn.step():
        x_t = rnn.step_input(input)
        prev = [rnn.memory(init=s) for s in states]
        new = cell(x_t, *prev)
        out = new[0]
        out.error_clip = error_clip  # on the cell's hidden state, read by the output and the next step alike;
        # StaticRNN copies it onto every step's copy
        if mask is not None:
            m_t = rnn.step_input(mask)
            new = [_masked(m_t, n, p) for n, p in zip(new, prev)]
            out = elementwise_mul(out, m_t)
        for p, n in zip(prev, new):
            rnn.update_memory(p, n)
        rnn.step_output(out)
    return rnn(), [rnn.step_var(n) for n in new]


def _stacked(layer, input, states, num_layers, dirs, sequence_length, mask, make_cell, dropout_prob, is_test, seed,
             error_clip):
    per_state = [unstack(s, axis=0) for s in states]
    x, finals = input, [[] for _ in states]
    for layer_idx in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer_idx * dirs + d
            xi = x if d == 0 else sequence_reverse(x, sequence_length)
            out, last = _direction(xi, mask, [s[k] for s in per_state], make_cell(k),
                                   unique_name.generate(f"{layer}_l{layer_idx}{'_reverse' if d else ''}"), error_clip)
            outs.append(out if d == 0 else sequence_reverse(out, sequence_length))
            for f, v in zip(finals, last):
                f.append(v)
        x = outs[0] if dirs == 1 else concat(outs, axis=2)
        if dropout_prob and layer_idx < num_layers - 1:
            x = dropout(x, dropout_prob, is_test=is_test, seed=seed, dropout_implementation="upscale_in_train")
    return x, [stack(f, axis=0) for f in finals]


def _attr(default_initializer):
    return None if default_initializer is None else ParamAttr(initializer=default_initializer)


def lstm(input, init_h, init_c, max_len, hidden_size, num_layers=1, dropout_prob=0.0, is_bidirec=False,
         sequence_length=None, is_test=False, name=None, default_initializer=None, seed=None, error_clip=None):
    """Multi-layer LSTM over time-major input [T, B, D] (Paddle's fused `layers.lstm`; see the module doc for
    the weight layout). Dropout with `dropout_prob` (upscale_in_train) sits between layers. `error_clip`
    (an ErrorClipByValue; fluidlite's addition) is set on every step's hidden state, so with
    `fl.clip.error_clip_callback` each dL/dh_t is clipped as backward produces it.

    Returns (rnn_out [T, B, H * dirs], last_h [L * dirs, B, H], last_c [L * dirs, B, H])."""
    dirs = 2 if is_bidirec else 1
    mask = _check("lstm", input, {"init_h": init_h, "init_c": init_c}, max_len, hidden_size, num_layers, dirs,
                  sequence_length)
    if not 0 <= dropout_prob < 1:
        raise ValueError(f"lstm: dropout_prob must be in [0, 1), got {dropout_prob!r}")
    base = name or unique_name.generate("lstm")

    def make_cell(k):
        def cell(x_t, h_prev, c_prev):
            return lstm_unit(x_t, h_prev, c_prev, param_attr=_attr(default_initializer), name=f"{base}.cell{k}")
        return cell

    out, (last_h, last_c) = _stacked(base, input, [init_h, init_c], num_layers, dirs, sequence_length, mask,
                                     make_cell, dropout_prob, is_test, seed, error_clip)
    return out, last_h, last_c


def gru(input, init_h, max_len, hidden_size, num_layers=1, is_bidirec=False, sequence_length=None, name=None,
        default_initializer=None, error_clip=None):
    """Multi-layer GRU over time-major input [T, B, D], the counterpart of `lstm` (`error_clip` likewise).

    Returns (rnn_out [T, B, H * dirs], last_h [L * dirs, B, H])."""
    dirs = 2 if is_bidirec else 1
    mask = _check("gru", input, {"init_h": init_h}, max_len, hidden_size, num_layers, dirs, sequence_length)
    base = name or unique_name.generate("gru")

    def make_cell(k):
        def cell(x_t, h_prev):
            proj = fc(x_t, 3 * hidden_size, param_attr=_attr(default_initializer), name=f"{base}.proj{k}")
            return [gru_unit(proj, h_prev, 3 * hidden_size, param_attr=_attr(default_initializer),
                             name=f"{base}.cell{k}")[0]]
        return cell

    out, (last_h,) = _stacked(base, input, [init_h], num_layers, dirs, sequence_length, mask, make_cell, 0.0,
                              False, None, error_clip)
    return out, last_h


