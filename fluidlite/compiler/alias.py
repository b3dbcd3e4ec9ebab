"""Pass `alias`: for each step, the input slots whose buffers its kernel may overwrite.

A persistable may be updated in place by an op writing the same name (optimizer state). Any other
buffer only if a step of this plan made it, it is not fed or fetched, neither it nor anything
sharing memory with it (through a view-returning op) is read after this step, and no other input of
this step shares its memory. Off: no step may overwrite anything (every kernel allocates its outputs).
"""
from __future__ import annotations

from .ir import PlanIR


def alias_groups(steps, apart=frozenset()) -> dict:
    """name -> representative name of the values sharing its memory (through `returns_view` ops and
    stacks assembled in place, see stack_into); the outputs of the steps at indices `apart` (disjoint
    views of a dead input) each start a group."""
    group = {}

    def find(n):
        while group.get(n, n) != n:
            n = group[n]
        return n

    for i, step in enumerate(steps):
        if (step.opdef.returns_view or step.assembles) and i not in apart:
            for o in step.out_names:
                for n in step.in_names:
                    group[find(o)] = find(n)
    return {n: find(n) for n in group}


def alias(ir: PlanIR, options) -> PlanIR:
    if "alias" in options.disabled:
        for step in ir.steps:
            step.overwritable = frozenset()
        return ir
    made_here = {n for s in ir.steps for n in s.out_names}
    groups = alias_groups(ir.steps, _apart(ir, alias_groups(ir.steps), made_here))
    find = lambda n: groups.get(n, n)  # noqa: E731
    aliased = {find(n) for n in groups}
    last_read = {}
    for i, step in enumerate(ir.steps):
        for n in step.in_names:
            last_read[find(n)] = i
    fetched = {find(n) for n in ir.fetch_names}
    for i, step in enumerate(ir.steps):
        op = step.op
        outs = set(step.out_names)
        seen = [find(n) for n in step.in_names]
        shared = {g for g in seen if seen.count(g) > 1}  # one buffer under two input names (a sum_grad's outputs)
        slots = set()
        for slot, names in op.inputs.items():
            ok = True
            for n in names:
                if ir.is_persistable(n):
                    ok &= n in outs
                else:
                    g = find(n)
                    ok &= (n in made_here and n not in ir.feed and g not in fetched and g not in shared
                           and (last_read[g] == i or (n in outs and g not in aliased)) and names.count(n) == 1
                           and sum(n in ns for ns in op.inputs.values()) == 1)
            if ok and names:
                slots.add(slot)
        step.overwritable = frozenset(slots)
    return ir


def _apart(ir: PlanIR, groups: dict, made_here: set) -> frozenset:
    """Indices of `disjoint_views` steps (unstack) whose input is dead after them: made by this plan (not
    a view of another value), not fed, fetched or persistable, read by no later step, and no value shares
    its memory but the step's own outputs and what is made from them later. Their outputs can be overwritten one by one."""
    producer, last_read = {}, {}
    for i, step in enumerate(ir.steps):
        for n in step.out_names:
            producer.setdefault(n, i)
        for n in step.in_names:
            last_read[n] = i
    members = {}
    for n, g in groups.items():
        members.setdefault(g, set()).add(n)
    apart = set()
    for i, step in enumerate(ir.steps):
        if not step.opdef.disjoint_views or len(step.in_names) != 1:
            continue
        n = step.in_names[0]
        g = groups.get(n, n)
        if (g == n and n in made_here and n not in ir.feed and n not in ir.fetch_names and not ir.is_persistable(n)
                and last_read.get(n) == i and all(producer.get(m, -1) >= i for m in members.get(g, ()) - {n})):
            apart.add(i)
    return frozenset(apart)
