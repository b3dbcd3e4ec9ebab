"""Pass `infer`: concrete shapes and dtypes for every value, from the fed shapes; what the plan reads from
and writes back to the scope."""
from __future__ import annotations

from ..registry import Meta
from .ir import PlanIR


def _scope_meta(ir: PlanIR, name: str, reader: str) -> Meta:
    """The Meta of a value the plan must read from the scope; raises when it cannot come from there."""
    var = ir.var(name)
    if reader is not None and var is not None and var.is_data:
        raise ValueError(f"data variable {name!r} must be fed (op '{reader}' reads it)")
    if var is None or not var.persistable:
        if reader is None:
            if var is None:
                raise ValueError(f"fetch target {name!r} is not a variable of the program")
            raise ValueError(f"fetch target {name!r} is neither fed nor computed by the program")
        raise ValueError(f"op '{reader}' reads {name!r}, which no op computes and which is "
                         f"{'not a variable' if var is None else 'not persistable'}: feed it")
    ir.scope_inputs.append(name)
    return Meta(name, var.shape, var.dtype)


def infer(ir: PlanIR, options) -> PlanIR:
    metas = ir.metas
    for name, (shape, dtype) in ir.feed.items():
        metas[name] = Meta(name, shape, dtype)
    for step in ir.steps:
        op = step.op
        ins = {}
        for slot, names in op.inputs.items():
            ins[slot] = []
            for n in names:
                if n not in metas:
                    metas[n] = _scope_meta(ir, n, op.type)
                ins[slot].append(metas[n])
        try:
            inferred = step.opdef.run_infer(ins, op.attrs)
        except ValueError as exc:
            raise ValueError(f"{exc} [while planning with the fed shapes]") from None
        for slot, names in op.outputs.items():
            for n, (shape, dtype) in zip(names, inferred[slot]):
                metas[n] = Meta(n, shape, dtype)
        step.inputs = ins
    for n in ir.fetch_names:
        if n not in metas:
            metas[n] = _scope_meta(ir, n, None)
    ir.persist_out = [n for n in dict.fromkeys(o for s in ir.steps for o in s.out_names) if ir.is_persistable(n)]
    ir.declared = {n: (ir.var(n).shape, ir.var(n).dtype) for n in ir.persist_out}
    return ir
