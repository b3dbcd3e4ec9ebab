"""Building the backward pass: append_backward and gradients.

The forward ops are turned into a DAG (op -> op that reads what it writes), pruned to the ops
on a path from the sources (parameters) to the targets (loss), then walked in reverse: each
op's gradient rule appends its gradient ops. A variable read by several ops gets one explicit
`sum` op, appended as soon as its last contribution exists, so nothing ever reads a partial sum.
Callbacks run right after every gradient op and every accumulation op; the ops a callback appends
get the role of the op they follow (`backward`) unless it sets one with `program.role_guard(role)`.
See docs/backward.md.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx

from .atomic import atomic
from .framework import ROLE_BACKWARD, Parameter, Variable, default_startup_program
from .registry import GRAD_SUFFIX, NO_GRAD, GradContext, get_op_def, grad_var_name

PART_SUFFIX = "@PART"  # one contribution to a gradient that several ops add to
ZERO_SUFFIX = "@ZERO"  # a zero gradient for an output that does not reach the target


@dataclass
class BackwardContext:
    """What a backward callback is told after each op the builder appends.

    - `op`: the op just appended (a gradient op or an accumulation `sum` op)
    - `forward_op`: the forward op it differentiates, or None for an accumulation op
    - `grad_to_var`: complete gradient name -> forward variable name, for every gradient so far
    - `completed`: the gradient names this op completed (their final value exists from now on)
    """

    op: object
    forward_op: object
    grad_to_var: dict
    completed: list = field(default_factory=list)


def _as_names(items, what) -> list:
    names = []
    for item in items or ():
        if isinstance(item, Variable):
            names.append(item.name)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise TypeError(f"{what} items must be Variables or names, got {type(item).__name__}")
    return names


def _callbacks(callback) -> list:
    if callback is None:
        return []
    callbacks = list(callback) if isinstance(callback, (list, tuple)) else [callback]
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callback must be callable (or a list of callables), got {cb!r}")
    return callbacks


class _Builder:
    def __init__(self, block, no_grad, callbacks):
        self.block = block
        self.no_grad = set(no_grad)
        self.callbacks = callbacks
        self.grad_to_var = {}

    def blocked(self, name, sources=()) -> bool:
        """No gradient flows through `name` (stop_gradient, no_grad_set, or not a float)."""
        if name in self.no_grad:
            return True
        var = self.block._find_var(name)
        if var is None or var.dtype is None or var.dtype.kind != "f":
            return True
        return var.stop_gradient and name not in sources

    def path(self, ops, sources, targets):
        """Indices of the ops on a path from a source variable to a target, and who wrote each input."""
        dag = nx.DiGraph()
        writer = {}  # var name -> index of the op that last wrote it (with a gradient)
        reads = {}  # op index -> [(slot, k, name, writer index or None)]
        dag.add_nodes_from(["S", "T"])
        for i, op in enumerate(ops):
            dag.add_node(i)
            reads[i] = []
            for slot, names in op.inputs.items():
                for k, n in enumerate(names):
                    if self.blocked(n, sources):
                        continue
                    w = writer.get(n)
                    reads[i].append((slot, k, n, w))
                    if w is not None:
                        dag.add_edge(w, i)
                    if n in sources:  # a source may also be computed (an intermediate listed in gradients())
                        dag.add_edge("S", i)
            opdef = get_op_def(op.type)
            for slot, names in op.outputs.items():
                differentiable = opdef.grad is not NO_GRAD and slot not in opdef.nondiff_outputs
                for n in names:
                    if differentiable and not self.blocked(n, sources):
                        writer[n] = i
                    else:
                        writer.pop(n, None)
        for t in targets:
            if t in writer:
                dag.add_edge(writer[t], "T")
        on_path = (nx.descendants(dag, "S") & nx.ancestors(dag, "T")) - {"S", "T"}
        return sorted(on_path), reads

    def grad_name(self, var_name) -> str:
        name = grad_var_name(var_name)
        k = 0
        while self.block.has_var(name):  # an earlier backward pass used the plain name
            k += 1
            name = f"{grad_var_name(var_name)}@{k}"
        return name

    def append(self, type, inputs, outputs, attrs, forward_op, completed):
        op = self.block.append_op(type, inputs, outputs, attrs, role=ROLE_BACKWARD)
        for name in completed:
            self.grad_to_var[name] = completed[name]
        context = BackwardContext(op, forward_op, self.grad_to_var, list(completed))
        with self.block.program.role_guard(op.role):  # what a callback appends follows its op's role
            for cb in self.callbacks:
                cb(self.block, context)
        return op

    def run(self, sources, targets, seeds):
        """Appends gradient ops; returns var name -> complete gradient name."""
        block = self.block
        ops = list(block.ops)
        path, reads = self.path(ops, set(sources), targets)
        on_path = set(path)
        count = defaultdict(int)  # contributions each variable will receive
        wanted = defaultdict(list)  # op index -> [(slot, k, var name)] reads that need a gradient
        for i in path:
            for slot, k, n, w in reads[i]:
                if w in on_path or n in sources:
                    wanted[i].append((slot, k, n))
                    count[n] += 1
        grad_of = {}
        parts = defaultdict(list)
        final = {}

        def contribute(n):
            """The name the next contribution to n's gradient is written to."""
            if n not in final:
                final[n] = self.grad_name(n)
            if count[n] == 1:
                return final[n]
            part = f"{final[n]}{PART_SUFFIX}{len(parts[n])}"
            parts[n].append(part)
            return part

        for t, seed in zip(targets, seeds):
            if count[t] == 0:
                grad_of[t] = seed
                self.grad_to_var[seed] = t
            else:  # the target is also read on the path: its seed is one more contribution
                count[t] += 1
                with block.program._role_guard(ROLE_BACKWARD):
                    block.append_op("scale", {"X": seed}, {"Out": contribute(t)}, {"scale": 1.0})

        for i in reversed(path):
            op = ops[i]
            output_grads = _OutputGrads(op, grad_of, self.zero_grad)
            input_grads = {slot: [None] * len(names) for slot, names in op.inputs.items()}
            touched = []
            for slot, k, n in wanted[i]:
                input_grads[slot][k] = contribute(n)
                touched.append(n)
            rule = get_op_def(op.type).grad
            if rule is None:
                raise ValueError(f"op '{op.type}' has no gradient rule, but a gradient must flow through it "
                                 f"({op.to_string()})")
            specs = rule(GradContext(op, output_grads, input_grads))
            done_here = {}
            for s, spec in enumerate(specs):
                outputs = {slot: [n for n in names if n is not None] for slot, names in spec.outputs.items()}
                outputs = {slot: names for slot, names in outputs.items() if names}
                written = {n for names in outputs.values() for n in names}
                completed = {}
                for n in dict.fromkeys(touched):
                    if count[n] == 1 and final[n] in written:
                        completed[final[n]] = n
                        done_here[n] = final[n]
                self.append(spec.type, spec.inputs, outputs, spec.attrs, op, completed)
            for n in dict.fromkeys(touched):
                if count[n] > 1 and len(parts[n]) == count[n] and n not in grad_of:
                    self.append("sum", {"X": parts[n]}, {"Out": [final[n]]}, {}, None, {final[n]: n})
                    grad_of[n] = final[n]
                elif n in done_here:
                    grad_of[n] = done_here[n]
        return grad_of

    def zero_grad(self, name):
        zero = self.grad_name(name) + ZERO_SUFFIX
        if not self.block.has_var(zero):
            with self.block.program._role_guard(ROLE_BACKWARD):
                self.block.append_op("fill_zeros_like", {"X": name}, {"Out": zero})
        return zero


class _OutputGrads(dict):
    """slot -> the gradients of an op's outputs; an output no gradient reaches gets a zero-filled
    one, appended only if the op's rule reads that slot (an unused side output costs nothing)."""

    def __init__(self, op, grad_of, zero):
        super().__init__()
        self.op, self.grad_of, self.zero = op, grad_of, zero

    def get(self, slot, default=None):
        if slot not in self and slot in self.op.outputs:
            self[slot] = [self.grad_of.get(n) or self.zero(n) for n in self.op.outputs[slot]]
        return super().get(slot, default)


def _seed(block, target: Variable, name: str) -> str:
    with block.program._role_guard(ROLE_BACKWARD):
        block.append_op("fill_any_like", {"X": target}, {"Out": name}, {"value": 1.0})
    return name


def append_backward(loss, parameter_list=None, no_grad_set=None, callback=None):
    """Append the gradient ops of `loss`; returns [(Parameter, gradient Variable)].

    Pairs follow parameter creation order, or `parameter_list`'s order when given; a parameter
    that gets no gradient is left out. `callback(block, context)` (or a list of them) is called
    after every gradient op and accumulation op; see `BackwardContext`."""
    if not isinstance(loss, Variable):
        raise TypeError(f"append_backward: loss must be a Variable, got {type(loss).__name__}")
    if loss.shape not in ((), (1,)):
        raise ValueError(f"append_backward: loss {loss.name!r} must be a scalar (shape () or (1,)), "
                         f"got shape {list(loss.shape)}; reduce it first, e.g. with layers.mean")
    block = loss.block
    program = block.program
    if parameter_list is None:
        params = [p for p in program.all_parameters() if p.trainable]
    else:
        params = [block.var(n) for n in _as_names(parameter_list, "parameter_list")]
    names = [p.name for p in params]
    builder = _Builder(block, _as_names(no_grad_set, "no_grad_set"), _callbacks(callback))
    with atomic(program, default_startup_program()):  # a raising callback leaves no half backward
        seed = _seed(block, loss, builder.grad_name(loss.name))
        grad_of = builder.run(names, [loss.name], [seed])
    return [(p, block.var(grad_of[p.name])) for p in params if p.name in grad_of]


def gradients(targets, inputs, target_gradients=None, no_grad_set=None):
    """d(sum of targets)/d(inputs) as Variables (TF's tf.gradients); None for an unconnected input.

    A target without a given gradient is seeded with ones; an input listed here gets its gradient
    even if it has stop_gradient=True."""
    targets = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    for v in targets + inputs:
        if not isinstance(v, Variable):
            raise TypeError(f"gradients: targets and inputs must be Variables, got {type(v).__name__}")
    if target_gradients is None:
        target_gradients = [None] * len(targets)
    target_gradients = list(target_gradients) if isinstance(target_gradients, (list, tuple)) else [target_gradients]
    if len(target_gradients) != len(targets):
        raise ValueError(f"gradients: {len(targets)} targets but {len(target_gradients)} target_gradients")
    block = targets[0].block
    builder = _Builder(block, _as_names(no_grad_set, "no_grad_set"), [])
    with atomic(block.program):
        return _gradients(block, builder, targets, inputs, target_gradients)


def _gradients(block, builder, targets, inputs, target_gradients):
    seeds = []
    for t, g in zip(targets, target_gradients):
        if g is None:
            seeds.append(_seed(block, t, builder.grad_name(t.name)))
        else:
            if not isinstance(g, Variable):
                raise TypeError(f"gradients: target_gradients must be Variables or None, got {type(g).__name__}")
            if g.shape is not None and len(g.shape) != len(t.shape):
                raise ValueError(f"gradients: target gradient {g.name!r} has shape {list(g.shape)}, "
                                 f"target {t.name!r} has {list(t.shape)}")
            seeds.append(g.name)
    grad_of = builder.run([v.name for v in inputs], [t.name for t in targets], seeds)
    return [block.var(grad_of[v.name]) if v.name in grad_of else None for v in inputs]


__all__ = ["BackwardContext", "append_backward", "gradients", "GRAD_SUFFIX", "Parameter"]
