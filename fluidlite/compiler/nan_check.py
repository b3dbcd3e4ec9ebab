"""The NaN/Inf check of `Executor(check_nan_inf=True)`: generated into the plan, absent when off.

With `CompileOptions(check_nan_inf=True)` codegen puts one call after every op's kernel, before
the op's inputs are freed: `N3((v7,), (v2, v5))` checks the floating outputs the op just wrote. The
first op (in execution order) whose output holds a NaN or an Inf raises `NanInfError` naming the
op, its role, the output, its inputs' shapes and statistics (min, max, non-finite count) and, for a
gradient op, the forward op it differentiates. Later ops never run. Persistable values reach the
scope only at the end of a plan, and the check mode copies the persistables a plan updates before
the first op and switches off the passes that would write into the scope's arrays earlier
(`inplace`) or change or drop inputs before the check reports them (`alias`, `fold`), so a failing
run changes nothing.
"""
from __future__ import annotations

import numpy as np

from ..registry import GRAD_SUFFIX


class NanInfError(FloatingPointError):
    """An op wrote NaN or Inf while `check_nan_inf` was on. `.op` is the Operator, `.var_name` the output."""

    def __init__(self, message, op=None, var_name=None):
        super().__init__(message)
        self.op = op
        self.var_name = var_name


def _stats(value) -> str:
    a = np.asarray(value)
    if a.dtype.kind not in "fiub":
        return f"{a.dtype}{list(a.shape)}"
    head = f"{a.dtype}{list(a.shape)}"
    if a.size == 0:
        return head + " (empty)"
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        bad = int(a.size - np.count_nonzero(finite))
        vals = a[finite]
        rng = f"min {vals.min():.4g}, max {vals.max():.4g}" if vals.size else "no finite value"
        nan = int(np.isnan(a).sum())
        return f"{head} {rng}, non-finite {bad}" + (f" ({nan} NaN, {bad - nan} Inf)" if bad else "")
    return f"{head} min {a.min()}, max {a.max()}, non-finite 0"


def forward_op_of(op):
    """For a gradient op `<type>_grad`, the forward op of `<type>` whose output gradient it reads, or None."""
    if not op.type.endswith("_grad"):
        return None
    base = op.type[: -len("_grad")]
    wanted = {n.split(GRAD_SUFFIX, 1)[0] for n in op.input_names if GRAD_SUFFIX in n}
    for candidate in op.block.ops:
        if candidate.type == base and wanted & set(candidate.output_names):
            return candidate
    return None


def checker(step, index: int):
    """The function codegen calls after step `index`: `check(outputs, inputs)`."""
    op = step.op
    out_names, in_names = step.out_names, step.in_names

    def check(outs, ins):
        for name, value in zip(out_names, outs):
            if type(value) is np.ndarray and value.dtype.kind == "f" and not np.isfinite(value).all():
                raise NanInfError(_message(op, index, name, value, in_names, ins), op, name)
    return check


def _message(op, index, name, value, in_names, ins) -> str:
    bad = int(value.size - np.count_nonzero(np.isfinite(value)))
    lines = [f"op '{op.type}' (role {op.role}, step {index} of the plan) wrote {bad} NaN/Inf value(s) of "
             f"{value.size} into {name!r} ({_stats(value)}); it is the first op of this run to do so"]
    fwd = forward_op_of(op)
    if fwd is not None:
        lines.append(f"it differentiates forward op {fwd.to_string()}")
    slot_of = {n: slot for slot, names in op.inputs.items() for n in names}
    for n, v in zip(in_names, ins):
        lines.append(f"  input {slot_of.get(n, '?')}={n!r}: {_stats(v)}")
    lines.append("the scope's persistable values are left as they were before this run")
    return "\n".join(lines)
