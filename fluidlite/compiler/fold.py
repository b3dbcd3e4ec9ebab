"""Pass `fold`: schedule an op that declares a `fold` (the `sum` accumulating a gradient) as a running
accumulation, each input added in right after it is made, when its inputs are read by nothing else.

The IR keeps its one explicit `sum`; only the schedule changes. Off: every such op runs as one call.
"""
from __future__ import annotations

from .ir import PlanIR


def fold(ir: PlanIR, options) -> PlanIR:
    readers = {}
    for step in ir.steps:
        for n in step.in_names:
            readers[n] = readers.get(n, 0) + 1
    off = "fold" in options.disabled
    for step in ir.steps:
        op, names = step.op, step.in_names
        # fold as the inputs are made: each is ours alone (overwritable) and read by this op only
        eligible = (not off and step.opdef.fold is not None and len(names) >= 3 and len(op.inputs) == 1
                    and set(op.inputs) <= step.overwritable and all(readers[n] == 1 for n in names))
        step.fold = step.opdef.fold(step.ctx) if eligible else None
    return ir
