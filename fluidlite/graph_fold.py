"""Folding a program's graph for drawing: unrolled RNN steps into one step, optimizer ops into one node.

`fold_block(block, g, keep)` works on `graph.versioned_graph(block)` (`keep`: the nodes to draw) and
returns a `Folding` that says which graph nodes stand for which (`rep`), what is hidden, and how
each edge between a step and the rest is to be marked. It draws nothing; `graphviz` does.

Unrolled steps. `StaticRNN` copies its step ops once per step and names step `t`'s copy of variable
`v` as `v@step<t>`. An op belongs to step `t` when its variables name steps and no single slot
mixes two steps (`unstack`/`stack`, which touch every step, belong to none); `t` is the largest
step it names (step `t` reads the state of step `t-1`; backward op `t` writes the gradient of that
state), and every variable it writes is of a step (or a gradient part `@PARTk`, which the shared
weights' gradients are summed from). Copies of one op in different steps - same type, role and
an output name the same relative to the op's step - fold into the copy from the earliest step; variables fold by name up to the step number
(`v@step[t]`). An edge between an op of step `t` and a variable of step `s != t` carries state
("t-1"); an edge between a step and an op outside the steps that touches only some steps is marked
with those steps ("t=19": the readout reads the last hidden state).

Optimizer. Ops of role `optimize` fold into one node per op type; their state (persistable
variables only optimizer ops touch: moments, learning rates, ...) is hidden and summed up in that
node's label, and so are the parameters' updated versions.
"""
from __future__ import annotations

import re

from .framework import ROLE_FORWARD, ROLE_OPTIMIZE, Parameter
from .graph import op_node

STEP_RE = re.compile(r"@step(\d+)")
PART_RE = re.compile(r"@PART\d+")


def op_step(op) -> int | None:
    """The unrolled step an op belongs to, or None (see the module docstring)."""
    found = set()
    for slots in (op.inputs, op.outputs):
        for names in slots.values():
            steps = {int(m.group(1)) for n in names for m in STEP_RE.finditer(n)}
            if len(steps) > 1:
                return None
            found |= steps
    if not found or not all(STEP_RE.search(n) or PART_RE.search(n) for n in op.output_names):
        return None  # e.g. the readout after the last step, or its gradient op
    return max(found)


def _relative(name: str, t: int) -> str:
    """`h@step6` seen from step 7 -> `h@step[t-1]`; gradient parts `@PARTk` -> `@PART[t]`."""
    name = STEP_RE.sub(lambda m: f"@step[t{int(m.group(1)) - t:+d}]".replace("+0", ""), name)
    return PART_RE.sub("@PART[t]", name)


def var_step(name: str) -> int | None:
    m = None
    for m in STEP_RE.finditer(name):
        pass
    return None if m is None else int(m.group(1))


def step_range(steps) -> str:
    """`[3]` -> "3", `[0, 1, 2]` -> "0..2", anything else -> "0,4,7"."""
    s = sorted(steps)
    if len(s) == 1:
        return str(s[0])
    if s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}..{s[-1]}"
    return ",".join(map(str, s))


class Folding:
    """What `fold_block` decided; graph nodes not mentioned are drawn as they are."""

    def __init__(self):
        self.rep = {}  # graph node -> the graph node drawn for it (op or var)
        self.members = {}  # representative op node -> [op indices]
        self.steps_of = {}  # representative op node -> sorted steps
        self.var_label = {}  # representative var node -> name shown ("h@step[t]")
        self.cluster = {}  # representative node -> cluster key ("forward" / "backward")
        self.n_steps = 0  # distinct unrolled steps (0: nothing unrolled)
        self.op_step = {}  # op index -> step
        self.hidden = set()  # var nodes not drawn
        self.groups = {}  # op index -> (group name, role) for the optimizer nodes
        self.group_label = {}  # group key -> label
        self.dropped = set()  # (var node, op node) edges not drawn

    def edge_mark(self, g, src, dst):
        """("carry", offset), ("shift", offset), ("step", t) or None for an edge of the versioned graph.

        "carry": a step's op reads (or writes) the state of another step computed in the same
        direction (forward state, or the gradient flowing back); "shift": a backward op reads a
        forward value of another step (not a recurrence)."""
        if not self.n_steps:
            return None
        op, var = (src, dst) if g.nodes[src]["kind"] == "op" else (dst, src)
        s_op = self.op_step.get(op[1])
        s_var = var_step(var[0]) if var in self.rep else None
        if s_op is not None and s_var is not None and s_var != s_op:
            same = self.cluster.get(self.rep.get(var)) == self.cluster.get(self.rep.get(op))
            return ("carry" if same else "shift", s_var - s_op)
        if s_op is None and s_var is not None:
            return ("step", s_var)
        if s_op is not None and s_var is None and var not in self.rep:
            return ("step", s_op)
        return None


def fold_block(block, g, keep) -> Folding:
    fold = Folding()
    _fold_steps(block, g, keep, fold)
    _fold_optimizer(block, g, keep, fold)
    return fold


def _fold_steps(block, g, keep, fold):
    steps = {}
    for i, op in enumerate(block.ops):
        if op_node(i) in keep:
            s = op_step(op)
            if s is not None:
                steps[i] = s
    if len(set(steps.values())) < 2:
        return
    fold.n_steps = len(set(steps.values()))
    fold.op_step = steps
    parent = {i: i for i in steps}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}
    for i in steps:
        op = block.ops[i]
        for n in op.output_names:
            key = (op.type, op.role, _relative(n, steps[i]))
            if key in first:
                a, b = find(i), find(first[key])
                parent[max(a, b)] = min(a, b)
            else:
                first[key] = i
    for i in steps:  # the root is the group's lowest op index, so it is met first
        root = op_node(find(i))
        fold.rep[op_node(i)] = root
        fold.members.setdefault(root, []).append(i)
    for root, members in fold.members.items():
        fold.steps_of[root] = sorted({steps[i] for i in members})
        fold.cluster[root] = "forward" if block.ops[root[1]].role == ROLE_FORWARD else "backward"
    by_key = {}
    for node, data in g.nodes(data=True):
        if data["kind"] != "var" or node not in keep:
            continue
        name, version = node
        producers = [p for p in g.predecessors(node)]
        from_step = bool(producers) and all(p[1] in steps for p in producers)
        if STEP_RE.search(name):
            shown = STEP_RE.sub("@step[t]", name)
        elif from_step and PART_RE.search(name):
            shown = PART_RE.sub("@PART[t]", name)
        else:
            continue
        rep = by_key.setdefault((shown, version), node)
        fold.rep[node] = rep
        if rep is node:
            fold.var_label[node] = shown
            readers = {fold.rep.get(c) for c in g.successors(node)}
            owner = fold.rep[producers[0]] if from_step else (readers.pop() if len(readers) == 1 else None)
            if owner in fold.cluster:
                fold.cluster[node] = fold.cluster[owner]


def _fold_optimizer(block, g, keep, fold):
    opt = [i for i, op in enumerate(block.ops) if op.role == ROLE_OPTIMIZE and op_node(i) in keep]
    if not opt:
        return
    opt_nodes = {op_node(i) for i in opt}
    state_slots = {}  # op type -> state slot names
    n_state = {}  # op type -> state variable names
    for node, data in g.nodes(data=True):
        if data["kind"] != "var" or node not in keep:
            continue
        near = set(g.predecessors(node)) | set(g.successors(node))
        if not near or not near <= opt_nodes:
            continue
        var = block._find_var(node[0])
        if isinstance(var, Parameter):
            if node[1] > 0:  # the updated parameter
                fold.hidden.add(node)
            continue
        if var is None or not var.persistable:
            continue
        fold.hidden.add(node)
        for op in near:
            o = block.ops[op[1]]
            slots = state_slots.setdefault(o.type, {})
            for slot, names in o.inputs.items():
                if node[0] in names:
                    slots.setdefault(slot, None)
            n_state.setdefault(o.type, set()).add(node[0])
    params = {}
    for i in opt:
        op = block.ops[i]
        key = (f"{op.type} optimizer", ROLE_OPTIMIZE)
        fold.groups[i] = key
        for name in op.input_names:
            var = block._find_var(name)
            if isinstance(var, Parameter):
                params.setdefault(key, {}).setdefault(name, None)
                for node in g.predecessors(op_node(i)):
                    if node[0] == name:
                        fold.dropped.add((node, op_node(i)))
    for key, names in params.items():
        kind = key[0].split()[0]
        shown = list(names)
        listed = ", ".join(shown[:4]) + (f", ... ({len(shown)} in all)" if len(shown) > 4 else "")
        label = f"{kind}: updates {listed}"
        slots = state_slots.get(kind)
        if slots:
            label += f"\nstate: {', '.join(slots)} ({len(n_state.get(kind, ()))} vars, not drawn)"
        fold.group_label[key] = label
