"""Pass `mul_acc`: a product added to one other value becomes one `mul_acc` step in which BLAS adds
X @ Y into that value's buffer (beta = 1), instead of making the product and then adding it.

Three forms:
- `sum(A, mul(X, Y))`, A of the product's shape. An unrolled RNN's gates are x_t W_ih + h_{t-1} W_hh,
  the first term precomputed for every step at once (StaticRNN's input projection) and sliced per step
  by `unstack`: each step made a [B, 4H] product and a sum of it. With the slices' memory free once
  read (the alias pass's disjoint views), BLAS writes the gates straight into the slice.
- `elementwise_add(mul(X, Y), b)`, b one row added to every row (fc's bias). BLAS adds the product
  into rows filled with b, where it would have zeroed them (its beta = 0 pass): the add's pass over
  the result is gone (0.6-1.1 ms of an LSTM step, for the [1600, 1024] input projection). Not when an
  elementwise op reads the sum: the fuse pass makes the add free there (bias + GELU in one kernel), and
  BLAS adding into filled rows costs more than its zeroing pass (a Transformer step: +0.45 ms). The add's
  gradient op also names the product, though for a row bias it reads only its shape (dX is dOut, db
  the column sums of dOut); it is pointed at dOut, of the same shape, so the product need not exist.
- `momentum(Grad = mul_grad's Y@GRAD)`, plain momentum (no Nesterov, no SkipUpdate) whose weight gradient
  X^T @ dOut nothing else reads: the velocity is scaled by mu and BLAS adds the product into it right
  where mul_grad made the gradient (`mul_grad_decay_acc`); momentum becomes sgd on the new velocity. The
  gradient is never stored and read back (an MLP step with Momentum: 0.95-0.97x in an in-process A/B).
  The velocity must be neither read nor written between the product and the update.

Bit for bit: BLAS rounds the product once and adds it to A last, as the two steps did, when it sums the
inner dimension in one block; OpenBLAS blocks it by 256 to 384, and at K = 512 its float32 results
differ in the last bit. So only products with K <= MAX_K (tests/test_mul_acc.py checks an LSTM and
the kernel at K = MAX_K bit for bit). Only sums of exactly two inputs, an A of the product's shape, the
product read by nothing else (but the add's gradient), a float dtype, and neither of its operands nor
the addend written between the product and the sum. For momentum K is the batch: a plan rebound for a
batch above MAX_K makes the product, then adds it (the kernel's two-step path), as a fresh plan does.
BLAS's own beta != 1 may round mu * v + product once (its small-matrix kernels do), so the velocity is
scaled first and BLAS adds with beta = 1. Off: the two steps run.
"""
from __future__ import annotations

import copy

import numpy as np

from ..kernels.blas import ONE_BLOCK_K
from ..ops.elementwise import canonical
from ..registry import get_op_def
from .ir import PlanIR, Step

MAX_K = ONE_BLOCK_K


def _row_bias_form(step) -> bool:
    """An elementwise_add (or its gradient op) of X and a row Y repeated over X's rows."""
    x, y = step.inputs["X"][0], step.inputs["Y"][0]
    if len(y.shape) != 1 or not x.shape or x.shape[-1] != y.shape[0]:
        return False
    try:
        form = canonical(x.shape, y.shape, step.op.attrs["axis"])
    except ValueError:
        return False
    return form[0] == "pnp" and form[3] == 1 and form[4]


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
    position = {id(s): i for i, s in enumerate(ir.steps)}

    def product(name, j, addend, extra_readers=()):
        """The `mul` step making `name` for step j (and `extra_readers`) alone, or None."""
        i = producer.get(name)
        if (i is None or i in drop or ir.steps[i].op.type != "mul" or len(written_at[name]) != 1
                or name in ir.fetch_names or ir.is_persistable(name)
                or any(r is not ir.steps[j] and r not in extra_readers for r in readers.get(name, ()))):
            return None
        prod = ir.steps[i]
        x, y = prod.inputs["X"][0], prod.inputs["Y"][0]
        k = int(np.prod(y.shape[:prod.op.attrs["y_num_col_dims"]]))
        if k > MAX_K or x.dtype not in (np.float32, np.float64) or addend.dtype != x.dtype:
            return None
        if any(i < w < j for n in prod.in_names + [addend.name] for w in written_at.get(n, ())):
            return None  # an operand changes in between (an optimizer's update): the product must stay put
        return i

    def fuse(i, j, step, acc):
        prod = ir.steps[i]
        op = copy.copy(prod.op)  # the program's ops are left alone: only this plan's steps change
        op.type, op.attrs = "mul_acc", dict(prod.op.attrs)
        op.inputs = {"X": prod.op.inputs["X"], "Y": prod.op.inputs["Y"], "Acc": [acc.name]}
        op.outputs = dict(step.op.outputs)
        replace[j] = Step(op, get_op_def("mul_acc"), {"X": prod.inputs["X"], "Y": prod.inputs["Y"], "Acc": [acc]})
        drop.add(i)

    for j, step in enumerate(ir.steps):
        if step.op.type == "sum" and len(step.in_names) == 2:
            out = ir.metas[step.out_names[0]]
            for k, name in enumerate(step.in_names):
                acc = step.inputs["X"][1 - k]
                if ir.metas[name].shape != out.shape or acc.shape != out.shape:
                    continue
                i = product(name, j, acc)
                if i is not None:
                    fuse(i, j, step, acc)
                    break
        elif (step.op.type == "elementwise_add" and _row_bias_form(step)
              and not any(r.opdef.elementwise for n in step.out_names for r in readers.get(n, ()))):
            name, bias = step.in_names[0], step.inputs["Y"][0]
            grads = [r for r in readers.get(name, ()) if r.op.type == "elementwise_add_grad"
                     and r.op.inputs["X"] == [name] and _row_bias_form(r)]
            i = product(name, j, bias, grads)
            if i is None:
                continue
            fuse(i, j, step, bias)
            for g in grads:  # reads the product's shape only: dOut has it
                op = copy.copy(g.op)
                op.inputs = dict(g.op.inputs, X=list(g.op.inputs["Out@GRAD"]))
                replace[position[id(g)]] = Step(op, g.opdef, dict(g.inputs, X=list(g.inputs["Out@GRAD"])))
        elif step.op.type == "momentum":
            i = _velocity_form(ir, j, step, producer, readers, written_at, position)
            if i is not None and i not in drop and i not in replace:
                replace[i], replace[j] = _into_velocity(ir.steps[i], step)
    steps = []
    for i, s in enumerate(ir.steps):
        if i not in drop:
            new = replace.get(i, s)
            steps.extend(new if isinstance(new, list) else [new])
    ir.steps = steps
    return ir


def _velocity_form(ir, j, step, producer, readers, written_at, position):
    """The index of the `mul_grad` step whose weight gradient this plain momentum step alone reads, when
    that product may be added into the velocity right there (the velocity untouched until this step)."""
    op = step.op
    (grad,), (vel,) = op.inputs["Grad"], op.inputs["Velocity"]
    if op.attrs["use_nesterov"] or op.inputs.get("SkipUpdate") or op.outputs["VelocityOut"] != [vel]:
        return None
    i = producer.get(grad)
    if (i is None or ir.steps[i].op.type != "mul_grad" or ir.steps[i].op.outputs.get("Y@GRAD") != [grad]
            or len(written_at[grad]) != 1 or grad in ir.fetch_names or ir.is_persistable(grad)
            or readers.get(grad) != [step]):
        return None
    x = ir.steps[i].inputs["X"][0]
    k = int(np.prod(x.shape[:ir.steps[i].op.attrs["x_num_col_dims"]]))
    if k > MAX_K or x.dtype not in (np.float32, np.float64) or ir.metas[vel].dtype != x.dtype:
        return None
    if any(i < w < j for w in written_at.get(vel, ())) or any(
            i <= position[id(r)] < j for r in readers.get(vel, ())):
        return None
    return i


def _into_velocity(prod, step):
    """(the steps replacing `prod`, the step replacing momentum `step`): the weight gradient's product is
    added by BLAS into the velocity scaled by mu, and momentum becomes sgd on the new velocity."""
    vel = step.op.inputs["Velocity"]
    acc = copy.copy(prod.op)
    acc.type, acc.attrs = "mul_grad_decay_acc", {"x_num_col_dims": prod.op.attrs["x_num_col_dims"],
                                                 "beta": step.op.attrs["mu"]}
    acc.inputs = {"X": prod.op.inputs["X"], "D": prod.op.inputs["Out@GRAD"], "Acc": vel}
    acc.outputs = {"Out": vel}
    new = [Step(acc, get_op_def(acc.type), {"X": prod.inputs["X"], "D": prod.inputs["Out@GRAD"],
                                          "Acc": step.inputs["Velocity"]})]
    if prod.op.outputs.get("X@GRAD"):
        dx = copy.copy(prod.op)
        dx.outputs = {"X@GRAD": prod.op.outputs["X@GRAD"]}
        new.insert(0, Step(dx, prod.opdef, prod.inputs))
    sgd = copy.copy(step.op)
    sgd.type, sgd.attrs = "sgd", {}
    sgd.inputs = {"Param": step.op.inputs["Param"], "Grad": vel, "LearningRate": step.op.inputs["LearningRate"]}
    sgd.outputs = {"ParamOut": step.op.outputs["ParamOut"]}
    return new, Step(sgd, get_op_def("sgd"), {"Param": step.inputs["Param"], "Grad": step.inputs["Velocity"],
                                              "LearningRate": step.inputs["LearningRate"]})
