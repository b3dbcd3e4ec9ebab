"""Pass `stack_into`: the ops making a `stack`'s inputs write straight into its result.

StaticRNN's backward stacks the per-step gradients of its stepped inputs (unstack's gradient): an
LSTM's 50 [32, 1024] gate gradients were copied into one [50, 32, 1024] array after the last was made
(0.6 ms of a 35 ms step, 6.5 MB read from caches they had left); a GRU's likewise. Here each is made in its slice: codegen
allocates the result before the first of them and passes `result[t]` as the producing kernel's `out`
(OpDef `writes_out`); the stack then only names the buffer. A stack's input may be a view of the value
the kernel made (sum_grad hands its dOut on as both inputs' gradients).

Only a stack along axis 0 (its slices are contiguous) whose every input is a distinct value made once,
in this plan, by an op with `writes_out` that no pass fuses, of the input's shape and dtype, not fed or
persistable (a fetched one is handed out as a view of the stack). The stack's result then shares
memory with its inputs: the alias pass treats the stack as returning a view, so nothing overwrites
either while the other is read. A plan run at another batch size allocates the buffer at that size
(codegen reads its shape from `SH<k>` in the step function's namespace). Off: the stack copies its inputs.
"""
from __future__ import annotations

from .alias import alias_groups
from .ir import PlanIR


def stack_into(ir: PlanIR, options) -> PlanIR:
    for step in ir.steps:
        step.into, step.assembles = [], False
    if "stack_into" in options.disabled:
        return ir
    groups = alias_groups(ir.steps)
    find = lambda n: groups.get(n, n)  # noqa: E731
    makers = {}
    for i, step in enumerate(ir.steps):
        for n in step.out_names:
            makers.setdefault(n, []).append(i)
    claimed = set()
    for s, stack in enumerate(ir.steps):
        if stack.op.type != "stack" or not _along_first_axis(stack):
            continue
        out = stack.out_names[0]
        roots = [find(n) for n in stack.in_names]
        if len(set(roots)) != len(roots) or claimed & set(roots):
            continue
        slots = []
        for name, root in zip(stack.in_names, roots):
            made = makers.get(root, ())
            maker = ir.steps[made[0]] if len(made) == 1 and made[0] < s else None
            if (maker is None or not maker.opdef.writes_out or maker.opdef.elementwise is not None
                    or root in ir.feed or ir.is_persistable(root)
                    or ir.metas[root].shape != ir.metas[name].shape or ir.metas[root].dtype != ir.metas[name].dtype):
                break
            slots.append((maker, maker.out_names.index(root)))
        else:
            for t, (maker, k) in enumerate(slots):
                if not maker.into:
                    maker.into = [None] * len(maker.out_names)
                maker.into[k] = (out, t)
            stack.assembles = True
            claimed |= set(roots)
    return ir


def _along_first_axis(stack) -> bool:
    axis = stack.op.attrs.get("axis", 0)
    return axis == 0 or axis == -(len(stack.inputs["X"][0].shape) + 1)
