"""Pass `lower`: bind each step to the callable that runs it (`OpDef.bind`: a kernel, or `lower(ctx)`
specialised on the concrete shapes and the overwritable slots)."""
from __future__ import annotations

from ..registry import InferContext
from .ir import PlanIR


def lower(ir: PlanIR, options) -> PlanIR:
    for step in ir.steps:
        step.ctx = InferContext(step.opdef, step.inputs, step.op.attrs, step.op.outputs, step.overwritable)
        step.kernel = step.opdef.bind(step.ctx)
    return ir
