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


def _walk(ir: PlanIR, feed: dict, scope_meta, again=False):
    """(metas, [step inputs]) from the fed (shape, dtype)s; `scope_meta(name, reader)` gives other inputs.
    `again`: `ir` is inferred already; an op whose inputs kept their metas keeps its outputs' (a weight update)."""
    metas = {name: Meta(name, shape, dtype) for name, (shape, dtype) in feed.items()}
    step_inputs = []
    for step in ir.steps:
        for sub in getattr(step, "members", None) or (step,):  # a fused step: every op it runs, in order
            op = sub.op
            ins = {}
            for slot, names in op.inputs.items():
                ins[slot] = []
                for n in names:
                    if n not in metas:
                        metas[n] = scope_meta(n, op.type)
                    ins[slot].append(metas[n])
            if again and ins == sub.inputs:  # inference depends on the input metas and attributes only
                for n in op.output_names:
                    metas[n] = ir.metas[n]
                continue
            try:
                inferred = sub.opdef.run_infer(ins, op.attrs)
            except ValueError as exc:
                raise ValueError(f"{exc} [while planning with the fed shapes]") from None
            for slot, names in op.outputs.items():
                for n, (shape, dtype) in zip(names, inferred[slot]):
                    metas[n] = Meta(n, shape, dtype)
        step_inputs.append(ins)  # a fused step's are its last op's (as FusedStep.inputs)
    return metas, step_inputs


def infer(ir: PlanIR, options) -> PlanIR:
    metas, step_inputs = _walk(ir, ir.feed, lambda n, reader: _scope_meta(ir, n, reader))
    for step, ins in zip(ir.steps, step_inputs):
        step.inputs = ins
    for n in ir.fetch_names:
        if n not in metas:
            metas[n] = _scope_meta(ir, n, None)
    ir.metas = metas
    ir.persist_out = [n for n in dict.fromkeys(o for s in ir.steps for o in s.out_names) if ir.is_persistable(n)]
    ir.declared = {n: (ir.var(n).shape, ir.var(n).dtype) for n in ir.persist_out}
    return ir


def shapes_at(ir: PlanIR, feed: dict):
    """(metas, [step inputs]) of an inferred `ir` for other fed shapes (`feed`: name -> (shape, dtype)),
    leaving `ir` untouched; values read from the scope keep their metas. Raises ValueError as `infer` does."""
    metas, step_inputs = _walk(ir, feed, lambda n, reader: ir.metas[n], again=True)
    for n in ir.fetch_names:
        metas.setdefault(n, ir.metas[n])
    return metas, step_inputs
