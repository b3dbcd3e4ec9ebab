"""Pass `mul_acc`: a product added to one other value, `sum(A, mul(X, Y))`, becomes one `mul_acc` step
in which BLAS adds X @ Y into A's buffer (beta = 1), instead of making the product and then a sum.

An unrolled RNN's gates are x_t W_ih + h_{t-1} W_hh, the first term precomputed for every step at once
(StaticRNN's input projection) and sliced per step by `unstack`: each step made a [B, 4H] product and a
sum of it. With the slices' memory free once read (the alias pass's disjoint views), BLAS writes the
gates straight into the slice. (The projection's bias add stays: its gradient op reads the product.)

Bit for bit: BLAS rounds the product once and adds it to A last, as the two steps did, when it sums the
inner dimension in one block; OpenBLAS blocks it by 256 to 384, and at K = 512 its float32 results
differ in the last bit. So only products with K <= MAX_K (tests/test_mul_acc.py checks an LSTM and
the kernel at K = MAX_K bit for bit). Only sums of exactly two inputs, an A of the product's shape, the
product read by nothing else, a float dtype, and neither of its operands written between the product
and the sum. Off: the two steps run.
"""
from __future__ import annotations

import copy

import numpy as np

from ..registry import get_op_def
from .ir import PlanIR, Step

MAX_K = 256


def mul_acc(ir: PlanIR, options) -> PlanIR:
    if "mul_acc" in options.disabled:
        return ir
    producer, readers, written_at = {}, {}, {}
    for i, step in enumerate(ir.steps):
        for n in step.out_names:
            producer.setdefault(n, i)
            written_at.setdefault(n, []).append(i)
        for n in step.in_names:
            readers.setdefault(n, []).append(step)
    drop, replace = set(), {}

    def product(name, j):
        """The `mul` step making `name` for step j alone, or None."""
        i = producer.get(name)
        if (i is None or i in drop or ir.steps[i].op.type != "mul" or len(readers.get(name, ())) != 1
                or len(written_at[name]) != 1 or name in ir.fetch_names or ir.is_persistable(name)):
            return None
        prod = ir.steps[i]
        x, y = prod.inputs["X"][0], prod.inputs["Y"][0]
        k = int(np.prod(y.shape[:prod.op.attrs["y_num_col_dims"]]))
        if k > MAX_K or x.dtype not in (np.float32, np.float64):
            return None
        if any(i < w < j for n in prod.in_names for w in written_at.get(n, ())):
            return None  # an operand changes in between (an optimizer's update): the product must stay put
        return i

    for j, step in enumerate(ir.steps):
        if step.op.type != "sum" or len(step.in_names) != 2:
            continue
        out = ir.metas[step.out_names[0]]
        for k, name in enumerate(step.in_names):
            i, acc = product(name, j), step.inputs["X"][1 - k]
            if i is None or ir.metas[name].shape != out.shape or acc.shape != out.shape or acc.dtype != out.dtype:
                continue
            prod = ir.steps[i]
            op = copy.copy(prod.op)  # the program's ops are left alone: only this plan's steps change
            op.type, op.attrs = "mul_acc", dict(prod.op.attrs)
            op.inputs = {"X": prod.op.inputs["X"], "Y": prod.op.inputs["Y"], "Acc": [acc.name]}
            op.outputs = dict(step.op.outputs)
            replace[j] = Step(op, get_op_def("mul_acc"), {"X": prod.inputs["X"], "Y": prod.inputs["Y"], "Acc": [acc]})
            drop.add(i)
            break
    ir.steps = [replace.get(i, s) for i, s in enumerate(ir.steps) if i not in drop]
    return ir
