"""The IR verifier: checks a program is well formed (run it after backward, clipping, optimizing).

Like JAX's `check_jaxpr`, it re-derives every op's types instead of trusting the variables:
each op's slots and attributes are checked against its OpDef, its OpDef's inference is run on
the declared input types and must agree with the declared output variables, and a gradient op
(`T_grad`) must see, in each `S@GRAD` input slot, a variable typed as forward op `T` would type
its output `S`, and write, in each `S@GRAD` output slot, a variable typed like its input `S`.
"""
from __future__ import annotations

from .framework import ROLES
from .registry import GRAD_SUFFIX, OPS, Meta
from .shapes import dims_match


def _same_type(shape, dtype, var) -> bool:
    return (var.dtype == dtype and len(var.shape) == len(shape)
            and all(map(dims_match, var.shape, shape)))


def _fmt(shape, dtype):
    return f"{dtype}{list(shape)}"


def _check_slots(opdef, op, where, problems):
    for what, declared, given in (("input", opdef.inputs, op.inputs), ("output", opdef.outputs, op.outputs)):
        for slot in set(given) - set(declared):
            problems.append(f"{where}: unknown {what} slot {slot!r}")
        for slot in declared:
            names = given.get(slot, [])
            if not names and slot not in opdef.optional:
                problems.append(f"{where}: {what} slot {slot} is missing")
            if len(names) > 1 and slot not in opdef.duplicable:
                problems.append(f"{where}: {what} slot {slot} takes one variable, has {len(names)}")
    try:
        if opdef.normalize_attrs(op.attrs) != op.attrs:
            problems.append(f"{where}: attributes {op.attrs} are not in normal form")
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {exc}")


def _metas(block, slots):
    out = {}
    for slot, names in slots.items():
        out[slot] = []
        for n in names:
            var = block._find_var(n)
            if var is None or var.shape is None or var.dtype is None:
                return None
            out[slot].append(Meta(n, var.shape, var.dtype))
    return out


def _check_types(opdef, op, block, where, problems):
    """The op's inference on its declared inputs must give its declared outputs."""
    metas = _metas(block, op.inputs)
    if metas is None:
        return
    try:
        inferred = opdef.run_infer(metas, op.attrs)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        problems.append(f"{where}: inference fails on the declared inputs: {exc}")
        return
    for slot, names in op.outputs.items():
        types = inferred.get(slot, [])
        if len(types) != len(names):
            problems.append(f"{where}: output {slot} has {len(names)} variable(s), inference gives {len(types)}")
            continue
        for n, (shape, dtype) in zip(names, types):
            var = block._find_var(n)
            if var is not None and var.shape is not None and var.dtype is not None and not _same_type(shape, dtype, var):
                problems.append(f"{where}: output {slot} {n!r} is declared {_fmt(var.shape, var.dtype)}, "
                                f"the op gives {_fmt(shape, dtype)}")
    if op.type.endswith("_grad"):
        _check_grad_types(op, metas, block, where, problems)


def _check_grad_types(op, metas, block, where, problems):
    fwd = OPS.get(op.type[:-len("_grad")])
    if fwd is None:
        return
    for slot, names in op.outputs.items():  # X@GRAD is typed like X
        base = slot[:-len(GRAD_SUFFIX)] if slot.endswith(GRAD_SUFFIX) else None
        if base in metas and len(metas[base]) == len(names):
            for n, m in zip(names, metas[base]):
                var = block._find_var(n)
                if var is not None and var.shape is not None and not _same_type(m.shape, m.dtype, var):
                    problems.append(f"{where}: gradient {slot} {n!r} is {_fmt(var.shape, var.dtype)}, "
                                    f"but {base} {m.name!r} is {_fmt(m.shape, m.dtype)}")
    for slot, ms in metas.items():  # Out@GRAD next to Out (activation grads): the same types
        base = slot[:-len(GRAD_SUFFIX)] if slot.endswith(GRAD_SUFFIX) else None
        if base in metas and len(metas[base]) == len(ms):
            for m, ref in zip(ms, metas[base]):
                if not (m.dtype == ref.dtype and len(m.shape) == len(ref.shape)
                        and all(map(dims_match, m.shape, ref.shape))):
                    problems.append(f"{where}: gradient input {slot} {m.name!r} is {_fmt(m.shape, m.dtype)}, but "
                                    f"{base} {ref.name!r} (the forward op '{fwd.type}' gives {base}) is "
                                    f"{_fmt(ref.shape, ref.dtype)}")
    fwd_in = {s: metas[s] for s in fwd.inputs if s in metas}
    if any(s not in fwd_in and s not in fwd.optional for s in fwd.inputs):
        return  # the grad op does not see every forward input: nothing to re-derive Out from
    try:
        attrs = fwd.normalize_attrs({k: v for k, v in op.attrs.items() if k in fwd.attrs})
        out_types = fwd.run_infer(fwd_in, attrs)
    except (ValueError, TypeError, KeyError, IndexError):
        return
    for slot, ms in metas.items():  # Out@GRAD is typed like the forward op's Out
        base = slot[:-len(GRAD_SUFFIX)] if slot.endswith(GRAD_SUFFIX) else None
        if base in out_types and len(out_types[base]) == len(ms):
            for m, (shape, dtype) in zip(ms, out_types[base]):
                if not (m.dtype == dtype and len(m.shape) == len(shape) and all(map(dims_match, m.shape, shape))):
                    problems.append(f"{where}: gradient input {slot} {m.name!r} is {_fmt(m.shape, m.dtype)}, but "
                                    f"the forward op '{fwd.type}' gives {base} as {_fmt(shape, dtype)}")


def verify(program) -> None:
    """Raise ValueError listing every problem: undefined inputs, untyped or doubly written vars, unknown
    ops, slots or attributes that do not match the OpDef, types that its inference contradicts."""
    problems = []
    for block in program.blocks:
        written = set()
        for i, op in enumerate(block.ops):
            where = f"block {block.idx} op {i} '{op.type}'"
            opdef = OPS.get(op.type)
            if opdef is None:
                problems.append(f"{where}: unknown op type")
            else:
                _check_slots(opdef, op, where, problems)
            if op.role not in ROLES:
                problems.append(f"{where}: unknown role {op.role!r}")
            for n in op.input_names:
                var = block._find_var(n)
                if var is None:
                    problems.append(f"{where}: input {n!r} is not a variable")
                elif n not in written and not (var.persistable or var.is_data or var.block is not block):
                    problems.append(f"{where}: input {n!r} is read before any op writes it")
            for n in op.output_names:
                var = block._find_var(n)
                if var is None or var.shape is None or var.dtype is None:
                    problems.append(f"{where}: output {n!r} has no variable, shape or dtype")
                # single assignment, except ops that update a written variable in place (they read it
                # too); an op reading its own output before anything wrote it fails the input check
                if n in written and n not in op.input_names:
                    problems.append(f"{where}: output {n!r} is written a second time")
                written.add(n)
            if opdef is not None:
                _check_types(opdef, op, block, where, problems)
    if problems:
        raise ValueError("program does not verify:\n  " + "\n  ".join(problems))
