"""Pass `batch_grad`: a weight gradient summed over unrolled steps becomes one product.

An unrolled RNN reads its recurrent weight W once per step (h_t @ W), so backward makes one
`mul_grad` per step whose W@GRAD part is h_t^T @ dOut_t (K = batch, e.g. 32), and one `sum` of
those parts. This pass drops the W@GRAD output of each such `mul_grad` (its dX is still computed
there) and replaces the `sum` by `matmul_tn_sum`: [H, T*B] @ [T*B, 4H] on the row-stacked h_t and
dOut_t, as cuDNN does. The parts are no longer materialised; the h_t and dOut_t stay alive until
the product. Results differ from the step-by-step sum by float rounding only (another order of the
same additions). Off: the parts are summed (and folded) as before.

When the plan already stacks the same dOut_t along a new first axis (`stack`, axis 0: the gradient of
the input projection StaticRNN runs once over the sequence; `sum_grad` hands both sides one array),
the product reads that stacked array instead of stacking the dOut_t again, with the h_t in its order;
it then runs right after the stack.

The same steps' dX = dOut_t @ W^T read W through a transposed view, which OpenBLAS multiplies
slower than a row-major matrix when dOut_t has few rows (a (32, 1024) x (1024, 256) product took
205 us against 123 us on the development machine). So W^T is copied once (`transpose`) and each
dX becomes a plain `mul` by that copy.
"""
from __future__ import annotations

import copy

from ..registry import Meta, get_op_def
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


def _source(ir: PlanIR, producer: dict, writers: dict, name: str) -> str:
    """The value `name` holds, named by where it was made: through `sum_grad` (which returns its
    input itself) back to the first name, when every name on the way is written once."""
    while writers.get(name) == 1 and ir.steps[producer[name]].op.type == "sum_grad":
        src = ir.steps[producer[name]].in_names[0]
        if writers.get(src) != 1:
            break
        name = src
    return name


def _stacked(ir: PlanIR, producer: dict, writers: dict, readers_at: dict, ys: list, j: int):
    """(stack step index, order) when a `stack` on axis 0 of a step before any reader of sum j's output
    stacks the values of `ys`: order[t] is the index in `ys` of the stack's t-th input. Else None."""
    src = [_source(ir, producer, writers, m.name) for m in ys]
    if len(set(src)) != len(src):
        return None
    where = {s: k for k, s in enumerate(src)}
    first_reader = min(readers_at.get(ir.steps[j].out_names[0], [len(ir.steps)]))
    for s, step in enumerate(ir.steps):
        if step.op.type != "stack" or step.op.attrs.get("axis") != 0 or s >= first_reader:
            continue
        names = [_source(ir, producer, writers, n) for n in step.in_names]
        if sorted(names) == sorted(src) and writers.get(step.out_names[0]) == 1:
            return s, [where[n] for n in names]
    return None


def batch_grad(ir: PlanIR, options) -> PlanIR:
    if not getattr(options, "batch_grad", False) or "batch_grad" in options.disabled:
        return ir
    producer, readers, writers, readers_at = {}, {}, {}, {}
    for i, step in enumerate(ir.steps):
        for n in step.out_names:
            producer.setdefault(n, i)
            writers[n] = writers.get(n, 0) + 1
        for n in step.in_names:
            readers[n] = readers.get(n, 0) + 1
            readers_at.setdefault(n, []).append(i)
    drop, replace, insert, move, used = set(), {}, {}, {}, set()
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
        weight_t = _transposed_weight(ir, [ir.steps[p] for p in parts])
        if weight_t is not None:
            insert[min(parts)] = weight_t
        for p in parts:
            old = ir.steps[p]
            op = copy.copy(old.op)  # the program's op is left alone: only this plan's step changes
            op.outputs = {s: ns for s, ns in old.op.outputs.items() if s != "Y@GRAD"}
            if not op.outputs:
                drop.add(p)
            elif weight_t is not None and _makes_dx(old):
                ir.steps[p] = _dx_by(ir, weight_t, old)
            else:
                ir.steps[p] = Step(op, old.opdef, old.inputs)
        op = copy.copy(step.op)
        op.type, op.attrs = "matmul_tn_sum", {}
        stacked = _stacked(ir, producer, writers, readers_at, ys, j)
        if stacked is not None and stacked[0] not in used:
            used.add(stacked[0])
            s, order = stacked
            xs, ys = [xs[k] for k in order], [ir.steps[s].op.outputs["Out"][0]]
            ys = [ir.metas[ys[0]]]
            if s > j:
                move[j] = s
        op.inputs = {"X": [m.name for m in xs], "Y": [m.name for m in ys]}
        replace[j] = Step(op, get_op_def("matmul_tn_sum"), {"X": xs, "Y": ys})
    steps = []
    after = {s: j for j, s in move.items()}
    for i, s in enumerate(ir.steps):
        if i in insert:
            steps.append(insert[i])
        if i not in drop and i not in move:
            steps.append(replace.get(i, s))
        if i in after:
            steps.append(replace[after[i]])
    ir.steps = steps
    return ir


def _transposed_weight(ir: PlanIR, parts: list):
    """A `transpose` step copying the parts' shared weight W to W^T, when enough parts also make dX."""
    weights = {step.inputs["Y"][0].name for step in parts}
    if len(weights) != 1 or sum(_makes_dx(step) for step in parts) < MIN_PARTS:
        return None
    w = parts[0].inputs["Y"][0]
    name = f"{w.name}@TRANSPOSED"
    op = copy.copy(parts[0].op)
    op.type, op.attrs = "transpose", {"axis": [1, 0]}
    op.inputs, op.outputs = {"X": [w.name]}, {"Out": [name]}
    ir.metas[name] = Meta(name, (w.shape[1], w.shape[0]), w.dtype)
    return Step(op, get_op_def("transpose"), {"X": [w]})


def _makes_dx(step: Step) -> bool:
    return step.op.outputs.get("X@GRAD", [None])[0] is not None


def _dx_by(ir: PlanIR, weight_t: Step, part: Step) -> Step:
    """The part's dX = dOut @ W^T as a `mul` by the copied W^T."""
    op = copy.copy(part.op)
    op.type, op.attrs = "mul", {"x_num_col_dims": 1, "y_num_col_dims": 1}
    op.inputs = {"X": [part.inputs["Out@GRAD"][0].name], "Y": weight_t.out_names}
    op.outputs = {"Out": part.op.outputs["X@GRAD"]}
    return Step(op, get_op_def("mul"), {"X": [part.inputs["Out@GRAD"][0]], "Y": [ir.metas[weight_t.out_names[0]]]})
