"""Pass `prune`: keep the ops the fetches need plus those writing persistable variables."""
from __future__ import annotations

from ..registry import get_op_def
from .ir import PlanIR, Step


def prune(ir: PlanIR, options) -> PlanIR:
    """Ops in program order that a fetch or a persistable write needs; an op whose outputs are all fed is
    dropped (fed values are not recomputed). Off (`"prune"` in options.disabled): every other op is kept."""
    keep_all = "prune" in options.disabled
    needed = set(ir.fetch_names)
    keep = []
    for op in reversed(ir.block.ops):
        outs = op.output_names
        if all(n in ir.feed for n in outs):
            continue
        if keep_all or any(ir.is_persistable(n) or n in needed for n in outs):
            keep.append(op)
            needed.update(op.input_names)
    keep.reverse()
    ir.steps = [Step(op, get_op_def(op.type)) for op in keep]
    return ir
