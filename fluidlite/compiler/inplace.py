"""Pass `inplace`: persistable results written into the scope's existing arrays.

An op whose output is a persistable variable (a clipped gradient kept between runs, say) would
allocate a new array every step: 400 MB per step for 100M floats, fresh pages each time. When its
OpDef declares `writes_out`, this pass marks such outputs; codegen then passes the scope's old
array as the destination (`out=[...]`), and `reusable` decides at run time that it may be written:
same shape and dtype, C-contiguous, writeable, owning its memory, and held by nothing but the scope.

Only outputs whose old value the plan never reads are marked (not a scope input, one writer, not
an input of the same op - that case is the alias pass's in-place update). Off: every such op
allocates its result, as before.
"""
from __future__ import annotations

import sys

from .ir import PlanIR

# references to the old array while `reusable` checks it: the scope's dict, the local, getrefcount's argument
_OWN_REFS = 3


def reusable(arrays: dict, name: str, shape: tuple, dtype):
    """The scope's array for `name` if a kernel may overwrite it with a new value, else None."""
    old = arrays.get(name)
    if (old is None or old.shape != shape or old.dtype != dtype or old.base is not None
            or not old.flags.c_contiguous or not old.flags.writeable):
        return None
    return old if sys.getrefcount(old) <= _OWN_REFS else None


def inplace(ir: PlanIR, options) -> PlanIR:
    writers = {}
    for step in ir.steps:
        for n in step.out_names:
            writers[n] = writers.get(n, 0) + 1
    off = "inplace" in options.disabled
    read_from_scope = set(ir.scope_inputs) | set(ir.feed)
    for step in ir.steps:
        step.reuse = []
        if off or not step.opdef.writes_out:
            continue
        ins = set(step.in_names)
        marks = [n if (ir.is_persistable(n) and n not in ins and n not in read_from_scope and writers[n] == 1)
                 else None for n in step.out_names]
        if any(marks):
            step.reuse = marks
    return ir
