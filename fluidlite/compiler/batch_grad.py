"""Pass `batch_grad`: a weight gradient summed over unrolled steps becomes one product.

An unrolled RNN reads its recurrent weight W once per step (h_t @ W), so backward makes one
`mul_grad` per step whose W@GRAD part is h_t^T @ dOut_t (K = batch, e.g. 32), and one `sum` of
those parts. This pass drops the W@GRAD output of each such `mul_grad` (its dX is still computed
there) and replaces the `sum` by `matmul_tn_sum`: [H, T*B] @ [T*B, 4H] on the row-stacked h_t and
dOut_t, as cuDNN does. The parts are no longer materialised; the h_t and dOut_t stay alive until
the product. Results differ from the step-by-step sum by float rounding only (another order of the
same additions). Off: the parts are summed (and folded) as before.
"""
from __future__ import annotations

import copy

from ..registry import get_op_def
from .ir import PlanIR, Step

MIN_PARTS = 3


def _part_producer(ir: PlanIR, producer: dict, readers: dict, name: str):
    """The mul_grad step making `name` as its only Y@GRAD, when `name` is a plain 2-D weight-gradient part."""
    i = producer.get(name)
    if i is None or readers.get(name) != 1 or name in ir.fetch_names or ir.is_persistable(name):
        return None
    step = ir.steps[i]
    op = step.op
    if op.type != "mul_grad" or op.outputs.get("Y@GRAD") != [name]:
        return None
    x, y, dout = step.inputs["X"][0], step.inputs["Y"][0], step.inputs["Out@GRAD"][0]
    if len(x.shape) != 2 or len(y.shape) != 2 or len(dout.shape) != 2:
        return None
    return i


def batch_grad(ir: PlanIR, options) -> PlanIR:
    if not getattr(options, "batch_grad", False) or "batch_grad" in options.disabled:
        return ir
    producer, readers = {}, {}
    for i, step in enumerate(ir.steps):
        for n in step.out_names:
            producer.setdefault(n, i)
        for n in step.in_names:
            readers[n] = readers.get(n, 0) + 1
    drop, replace = set(), {}
    for j, step in enumerate(ir.steps):
        if step.op.type != "sum" or len(step.in_names) < MIN_PARTS:
            continue
        parts = [_part_producer(ir, producer, readers, n) for n in step.in_names]
        if any(p is None for p in parts) or len(set(parts)) != len(parts):
            continue
        xs = [ir.steps[p].inputs["X"][0] for p in parts]
        ys = [ir.steps[p].inputs["Out@GRAD"][0] for p in parts]
        if len({(m.shape[1], m.dtype) for m in xs}) != 1 or len({(m.shape[1], m.dtype) for m in ys}) != 1:
            continue
        for p in parts:
            old = ir.steps[p]
            op = copy.copy(old.op)  # the program's op is left alone: only this plan's step changes
            op.outputs = {s: ns for s, ns in old.op.outputs.items() if s != "Y@GRAD"}
            if op.outputs:
                ir.steps[p] = Step(op, old.opdef, old.inputs)
            else:
                drop.add(p)
        op = copy.copy(step.op)
        op.type, op.attrs = "matmul_tn_sum", {}
        op.inputs = {"X": [m.name for m in xs], "Y": [m.name for m in ys]}
        replace[j] = Step(op, get_op_def("matmul_tn_sum"), {"X": xs, "Y": ys})
    ir.steps = [replace.get(i, s) for i, s in enumerate(ir.steps) if i not in drop]
    return ir
