"""Recurrent layers: StaticRNN (a step block unrolled over a fixed sequence length), lstm_unit, gru_unit."""
from __future__ import annotations

import contextlib

from .. import unique_name
from ..framework import Variable, default_main_program
from ..registry import get_op_def
from .basic import fc
from .helper import LayerHelper, check_variable

__all__ = ["StaticRNN", "lstm_unit", "gru_unit"]


class _Memory:
    def __init__(self, pre, init):
        self.pre = pre  # the step variable holding the previous state
        self.init = init  # name of the initial state (outside the step)
        self.updated = None  # name of the step variable holding the next state


class StaticRNN:
    """A recurrent net over a sequence of fixed length, unrolled at build time.

    The ops appended inside `with rnn.step():` are recorded once, then copied seq_len times into
    the enclosing block when the `with` ends; the copy of step variable `v` for step t is named
    `v@step<t>`. Parameters created inside the step exist once and are shared by every step, so
    their gradients are summed over the steps. Attributes set on a step variable inside the
    `with` (error_clip, stop_gradient) are copied onto every step's copy."""

    def __init__(self, name=None):
        self.name = name or unique_name.generate("static_rnn")
        self._state = "new"
        self._inputs = []  # (step var, sequence var)
        self._memories: dict[str, _Memory] = {}
        self._outputs = []
        self.seq_len = None
        self._maps = []  # per step: step var name -> its name in the enclosing block
        self._stacked = None

    @contextlib.contextmanager
    def step(self):
        """Record the step body; it is unrolled when the `with` ends."""
        if self._state != "new":
            raise RuntimeError(f"StaticRNN {self.name}: step() can be entered once")
        program = default_main_program()
        self._parent = program.current_block()
        self._block = program._create_block()
        self._state = "recording"
        try:
            yield
        except BaseException:
            self._close(program)
            raise
        self._close(program)
        self._unroll()
        self._state = "done"

    def _close(self, program):
        program._rollback()
        if program.blocks[-1] is self._block:  # the step block only served to record the body
            program.blocks.pop()
            program._version += 1

    def _check_recording(self, what):
        if self._state != "recording":
            raise RuntimeError(f"StaticRNN {self.name}: {what}() must be called inside `with rnn.step():`")

    def _is_step_var(self, var) -> bool:
        return isinstance(var, Variable) and self._block.vars.get(var.name) is var

    def step_input(self, x):
        """The slice x[t] ([batch, ...]) of a sequence x of shape [seq_len, batch, ...]."""
        self._check_recording("step_input")
        check_variable(x, "x", "StaticRNN.step_input")
        if self._is_step_var(x) or x.shape is None or len(x.shape) < 2 or x.shape[0] < 1:
            raise ValueError(f"StaticRNN {self.name}: step_input needs a variable from outside the step of shape "
                             f"[seq_len, batch, ...] with a known seq_len; {x.name!r} has shape "
                             f"{None if x.shape is None else list(x.shape)}")
        if self.seq_len is not None and x.shape[0] != self.seq_len:
            raise ValueError(f"StaticRNN {self.name}: step input {x.name!r} has seq_len {x.shape[0]}, "
                             f"earlier step inputs have {self.seq_len}")
        self.seq_len = x.shape[0]
        x_t = self._block.create_var(name=unique_name.generate(f"{self.name}.step_in"), shape=x.shape[1:],
                                     dtype=x.dtype)
        self._inputs.append((x_t, x))
        return x_t

    def memory(self, init=None, shape=None, batch_ref=None, init_value=0.0, init_batch_dim_idx=0,
               ref_batch_dim_idx=None, dtype=None):
        """A state carried from step to step: starts at `init`, or at `shape` filled with `init_value`
        whose dimension `init_batch_dim_idx` takes the batch size of `batch_ref` at run time.

        `batch_ref` is a step input (its batch is dimension `ref_batch_dim_idx` of the sequence,
        default 1) or a variable outside the step (default dimension 0)."""
        self._check_recording("memory")
        parent = self._parent
        if init is not None:
            check_variable(init, "init", "StaticRNN.memory")
            if self._is_step_var(init):
                raise ValueError(f"StaticRNN {self.name}: memory init {init.name!r} must come from outside the step")
            shape, dtype, init_name = init.shape, init.dtype, init.name
        else:
            if shape is None or batch_ref is None:
                raise ValueError(f"StaticRNN {self.name}: memory needs `init`, or both `shape` and `batch_ref`")
            check_variable(batch_ref, "batch_ref", "StaticRNN.memory")
            ref = next((x for x_t, x in self._inputs if x_t is batch_ref), None)
            if ref is None:
                if self._is_step_var(batch_ref):
                    raise ValueError(f"StaticRNN {self.name}: batch_ref {batch_ref.name!r} must be a step input "
                                     "or a variable from outside the step")
                ref, dim = batch_ref, 0 if ref_batch_dim_idx is None else ref_batch_dim_idx
            else:
                dim = 1 if ref_batch_dim_idx is None else ref_batch_dim_idx
            dtype = dtype or batch_ref.dtype
            init_name = unique_name.generate(f"{self.name}.mem_init")
            parent.append_op("fill_constant_batch_size_like", {"Input": ref}, {"Out": init_name},
                             {"shape": list(shape), "dtype": dtype, "value": float(init_value),
                              "input_dim_idx": dim, "output_dim_idx": init_batch_dim_idx})
            shape = parent.var(init_name).shape
        pre = self._block.create_var(name=unique_name.generate(f"{self.name}.mem"), shape=shape, dtype=dtype)
        self._memories[pre.name] = _Memory(pre, init_name)
        return pre

    def update_memory(self, mem, var):
        """The state `mem` takes the value of step variable `var` at the next step."""
        self._check_recording("update_memory")
        m = self._memories.get(getattr(mem, "name", None))
        if m is None or m.pre is not mem:
            raise ValueError(f"StaticRNN {self.name}: update_memory's first argument must come from rnn.memory()")
        check_variable(var, "var", "StaticRNN.update_memory")
        if not self._is_step_var(var) or var.dtype != mem.dtype or len(var.shape) != len(mem.shape) or any(
                a != b and a != -1 and b != -1 for a, b in zip(var.shape, mem.shape)):
            raise ValueError(f"StaticRNN {self.name}: memory {mem.name!r} {list(mem.shape)} {mem.dtype} cannot be "
                             f"updated by {var.name!r} {list(var.shape)} {var.dtype} (a step variable of the same type)")
        m.updated = var.name

    def step_output(self, o):
        """Collect step variable `o`; calling the rnn returns it stacked to [seq_len, ...]."""
        self._check_recording("step_output")
        if not self._is_step_var(o):
            raise ValueError(f"StaticRNN {self.name}: step_output needs a variable computed inside the step")
        self._outputs.append(o)

    def output(self, *outputs):
        for o in outputs:
            self.step_output(o)

    def _unroll(self):
        block, parent = self._block, self._parent
        if not self._inputs:
            raise ValueError(f"StaticRNN {self.name}: the step has no step_input, so seq_len is unknown")
        for m in self._memories.values():
            if m.updated is None:
                raise ValueError(f"StaticRNN {self.name}: memory {m.pre.name!r} is never updated (call update_memory)")
        steps = range(self.seq_len)
        sliced = []
        for x_t, x in self._inputs:
            names = [f"{x_t.name}@step{t}" for t in steps]
            parent.append_op("unstack", {"X": x}, {"Out": names}, {"axis": 0})
            sliced.append(names)
        local = block.vars
        hoisted = self._hoist()
        copied = [(n, v.error_clip, v.stop_gradient) for n, v in local.items()
                  if v.error_clip is not None or v.stop_gradient]
        prev = None
        for t in steps:
            m = {x_t.name: names[t] for (x_t, _), names in zip(self._inputs, sliced)}
            m.update({n: f"{n}@step{t}" for n in hoisted})
            for mem in self._memories.values():
                m[mem.pre.name] = mem.init if t == 0 else prev[mem.updated]
            for op in block.ops:
                if op.output_names[0] in hoisted:
                    continue
                ins = {}
                for slot, names in op.inputs.items():
                    ins[slot] = [m.get(n, n) for n in names]
                    for n in names:
                        if n in local and n not in m:
                            raise ValueError(f"StaticRNN {self.name}: op '{op.type}' in the step reads {n!r}, "
                                             "which no earlier op of the step writes")
                outs = {}
                for slot, names in op.outputs.items():
                    for n in names:
                        if n not in local:
                            raise ValueError(f"StaticRNN {self.name}: op '{op.type}' in the step writes {n!r}, "
                                             "a variable outside the step")
                        m[n] = f"{n}@step{t}"
                    outs[slot] = [m[n] for n in names]
                parent.append_op(op.type, ins, outs, op.attrs, role=op.role)
            for n, clip, stop in copied:
                v = parent.vars.get(m.get(n))
                if v is not None:
                    v.error_clip, v.stop_gradient = clip, stop
            self._maps.append(m)
            prev = m

    def _hoist(self) -> set:
        """Run the step ops that read no state once over the whole sequence; returns their outputs.

        An op qualifies when it reads only step inputs, variables from outside the step and outputs
        of ops already hoisted, its outputs carry no per-step attribute (error_clip, stop_gradient)
        and its op type has a batch rule. Each step then reads slice t of the result, under the
        name the unrolled copy would have had. One [seq_len*batch, in] @ [in, out] product instead
        of seq_len small ones is what makes an input projection, and its weight gradient, fast."""
        block, parent, local = self._block, self._parent, self._block.vars
        seq = {x_t.name: x.name for x_t, x in self._inputs}  # step var -> its [seq_len, ...] variable
        per_step = {n for n, v in local.items() if v.error_clip is not None or v.stop_gradient}
        hoisted = set()
        for op in block.ops:
            rule = get_op_def(op.type).batch
            reads = op.input_names
            batched = {slot for slot, names in op.inputs.items() if any(n in seq for n in names)}
            if (rule is None or not batched or any(n in local and n not in seq for n in reads)
                    or any(n in per_step for n in op.output_names)):
                continue
            attrs = rule(op.attrs, batched)
            if attrs is None:
                continue
            outs = {slot: [f"{n}@steps" for n in names] for slot, names in op.outputs.items()}
            parent.append_op(op.type, {slot: [seq.get(n, n) for n in names] for slot, names in op.inputs.items()},
                             outs, attrs, role=op.role)
            for n in op.output_names:
                seq[n] = f"{n}@steps"
                hoisted.add(n)
                parent.append_op("unstack", {"X": seq[n]}, {"Out": [f"{n}@step{t}" for t in range(self.seq_len)]},
                                 {"axis": 0})
        return hoisted

    def step_var(self, var, t=-1):
        """The enclosing block's variable holding step variable `var` at step `t` (default: the last)."""
        if self._state != "done":
            raise RuntimeError(f"StaticRNN {self.name}: step_var() is available after the `with rnn.step():`")
        name = self._maps[t].get(getattr(var, "name", var))
        if name is None:
            raise ValueError(f"StaticRNN {self.name}: {var!r} is not a variable of the step")
        return self._parent.var(name)

    def __call__(self):
        """The step outputs stacked to [seq_len, batch, ...] (a list when there are several)."""
        if self._state != "done":
            raise RuntimeError(f"StaticRNN {self.name}: call the rnn after the `with rnn.step():` block")
        if not self._outputs:
            raise ValueError(f"StaticRNN {self.name}: no step_output was declared")
        if self._stacked is None:
            self._stacked = []
            for o in self._outputs:
                name = unique_name.generate(f"{self.name}.out")
                self._parent.append_op("stack", {"X": [m[o.name] for m in self._maps]}, {"Out": name}, {"axis": 0})
                self._stacked.append(self._parent.var(name))
        return self._stacked[0] if len(self._stacked) == 1 else list(self._stacked)


def lstm_unit(x_t, hidden_t_prev, cell_t_prev, forget_bias=0.0, param_attr=None, bias_attr=None, name=None):
    """One LSTM step: gates = fc([x_t, hidden_t_prev], 4H), then the fused `lstm_unit` op.

    Gate order along the 4H axis: input, forget, output, candidate (i, f, o, j).
    Returns (hidden, cell), each [batch, H]."""
    helper = LayerHelper("lstm_unit", name)
    for v, arg in ((x_t, "x_t"), (hidden_t_prev, "hidden_t_prev"), (cell_t_prev, "cell_t_prev")):
        check_variable(v, arg, "lstm_unit")
        if v.shape is None or len(v.shape) != 2:
            raise ValueError(f"lstm_unit: {arg} {v.name!r} must be 2-D [batch, features], got shape {v.shape}")
    size = cell_t_prev.shape[1]
    if hidden_t_prev.shape[1] != size:
        raise ValueError(f"lstm_unit: hidden_t_prev {hidden_t_prev.name!r} {list(hidden_t_prev.shape)} and "
                         f"cell_t_prev {cell_t_prev.name!r} {list(cell_t_prev.shape)} must have the same size")
    gates = fc([x_t, hidden_t_prev], size=4 * size, param_attr=param_attr, bias_attr=bias_attr,
               name=helper.name + ".fc")
    cell, hidden, _ = helper.append_op("lstm_unit", {"X": gates, "C_prev": cell_t_prev},
                                       {"forget_bias": forget_bias}, outputs=("C", "H", "Gate"))
    return hidden, cell


def gru_unit(input, hidden, size, param_attr=None, bias_attr=None, activation="tanh", gate_activation="sigmoid",
             origin_mode=False, name=None):
    """One GRU step (Paddle's gru_unit). `input` is the projected input [batch, size] with size = 3H
    (gate order u, r, c); `hidden` is [batch, H]. Returns (hidden, reset_hidden_prev, gate)."""
    helper = LayerHelper("gru_unit", name)
    check_variable(input, "input", "gru_unit")
    check_variable(hidden, "hidden", "gru_unit")
    if (activation, gate_activation) != ("tanh", "sigmoid"):
        raise ValueError(f"gru_unit: only activation='tanh' and gate_activation='sigmoid' are supported, got "
                         f"{activation!r}, {gate_activation!r}")
    if size % 3 or hidden.shape is None or len(hidden.shape) != 2 or hidden.shape[1] != size // 3:
        raise ValueError(f"gru_unit: size ({size}) must be 3 * the hidden size; hidden {hidden.name!r} has shape "
                         f"{hidden.shape}")
    h = size // 3
    w = helper.create_parameter(param_attr, (h, size), input.dtype)
    inputs = {"Input": input, "HiddenPrev": hidden, "Weight": w}
    if bias_attr is not False:
        inputs["Bias"] = helper.create_parameter(bias_attr, (1, size), input.dtype, is_bias=True)
    gate, reset_h, new_h = helper.append_op("gru_unit", inputs, {"origin_mode": origin_mode},
                                            outputs=("Gate", "ResetHiddenPrev", "Hidden"))
    return new_h, reset_h, gate
