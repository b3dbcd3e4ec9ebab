"""Pass `lower`: bind each step to the callable that runs it (`OpDef.bind`: a kernel, or `lower(ctx)`
specialised on the concrete shapes and the overwritable slots), and note whether that callable works for
any batch size (`OpDef.is_batch_poly`; otherwise `rebatch` lowers the step again for a new batch size)."""
from __future__ import annotations

from ..registry import InferContext
from .ir import PlanIR


def context(step, inputs: dict) -> InferContext:
    """The lowering context of `step` for input metas `inputs` (slot -> [Meta])."""
    return InferContext(step.opdef, inputs, step.op.attrs, step.op.outputs, step.overwritable)


def lower(ir: PlanIR, options) -> PlanIR:
    for step in ir.steps:
        step.ctx = context(step, step.inputs)
        step.kernel = step.opdef.bind(step.ctx)
        step.poly = step.opdef.is_batch_poly(step.ctx)
    return ir
