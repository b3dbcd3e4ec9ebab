"""Saving work: programs as JSON, persistable values as checksummed .npy checkpoints.

Programs (`save_program`/`load_program`): a JSON document with `format_version`, the
program's `random_seed` and every block's variables and ops. Nothing is pickled. Loading
checks the structure, op types, references and attribute types, then rebuilds the program
with `Block.append_op`, so shapes are inferred and checked again. Objects hanging off
variables (`error_clip`, a parameter's `regularizer`, `gradient_clip_attr`, `initializer`)
are stored as `{"class", "fields"}` when they are plain objects of a fluidlite module whose
fields are JSON scalars, and rebuilt from that allow-list only; anything else is stored as
`{"repr"}` and loads as None with a warning. Clip objects are the exact classes of
`fluidlite.clip.SAVABLE_CLASSES`, stored as `fluidlite.clip.<name>` with their constructor
arguments (`_config()`) and rebuilt through their constructors. What gradient-clip builds made
(`program._clip_records`, variable names) is saved as `clip_records`.

Checkpoints (`save_persistables`/`load_persistables`) live in `fluidlite.checkpoint` and are
re-exported here.
"""
from __future__ import annotations

import importlib
import json
import os
import uuid
import warnings

import numpy as np

from .checkpoint import _need, load_persistables, save_persistables
from .framework import ROLES, Block, Parameter, Program, Variable
from .registry import get_op_def

FORMAT_VERSION = 1
_OBJ_MODULES = ("fluidlite.regularizer", "fluidlite.initializer")
_CLIP = "fluidlite.clip."
_SCALARS = (bool, int, float, str, type(None))


# ---------------------------------------------------------------- programs

def _clip_classes() -> dict:
    from .clip import SAVABLE_CLASSES  # the allow-list: public name -> exact class

    return SAVABLE_CLASSES


def _clip_from_json(name, fields, where):
    cls = _clip_classes().get(name[len(_CLIP):])
    _need(cls is not None and isinstance(fields, dict), where,
          f"cannot rebuild class {name!r} (clip classes: {', '.join(_clip_classes())})")
    fields = {k: v for k, v in fields.items() if k != "global_norm"}  # a link files from before 2026-11-29 held
    _need(all(isinstance(v, _SCALARS) for v in fields.values()), where, f"fields of {name} must be JSON scalars")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot rebuild {name} from {fields}: {exc}") from None


def _obj_to_json(obj):
    if obj is None:
        return None
    cls = type(obj)
    if _clip_classes().get(cls.__name__) is cls:
        return {"class": _CLIP + cls.__name__, "fields": obj._config()}
    fields = getattr(obj, "__dict__", None)
    if (cls.__module__ in _OBJ_MODULES and isinstance(fields, dict)
            and all(isinstance(v, _SCALARS + (Variable,)) for v in fields.values())):
        return {"class": f"{cls.__module__}.{cls.__qualname__}",
                "fields": {k: {"variable": v.name} if isinstance(v, Variable) else v for k, v in fields.items()}}
    return {"repr": repr(obj)}


def _obj_from_json(data, where, pending):
    """Rebuild an allow-listed object; Variable-valued fields are queued in `pending` for later."""
    if data is None:
        return None
    if not isinstance(data, dict) or not ("class" in data or "repr" in data):
        raise ValueError(f"{where}: expected null or an object with 'class' or 'repr', got {data!r}")
    if "class" not in data:
        warnings.warn(f"{where}: {data['repr']} was saved only as its repr; left unset")
        return None
    if str(data["class"]).startswith(_CLIP):
        return _clip_from_json(str(data["class"]), data.get("fields"), where)
    module, _, name = str(data["class"]).rpartition(".")
    fields = data.get("fields")
    if module not in _OBJ_MODULES or not isinstance(fields, dict):
        raise ValueError(f"{where}: cannot rebuild class {data['class']!r} (allowed modules: {_OBJ_MODULES})")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        warnings.warn(f"{where}: class {data['class']!r} is not available; left unset")
        return None
    refs = {k: v["variable"] for k, v in fields.items() if isinstance(v, dict) and isinstance(v.get("variable"), str)}
    plain = {k: (None if k in refs else v) for k, v in fields.items()}
    _need(all(isinstance(v, _SCALARS) for v in plain.values()), where, f"fields of {data['class']} must be JSON scalars")
    try:
        obj = cls(**plain)
        if vars(obj) != plain:
            raise TypeError("constructor arguments differ from the stored fields")
    except Exception:  # rebuild from the fields the object stored
        obj = cls.__new__(cls)
        obj.__dict__.update(plain)
    pending.extend((obj, k, n, where) for k, n in refs.items())
    return obj


def _jsonable(value, where):
    """Attribute values as JSON (tuples become lists; normalize_attrs turns them back)."""
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: value {value!r} of type {type(value).__name__} cannot be saved as JSON")


def _var_to_dict(var: Variable) -> dict:
    d = {"name": var.name, "shape": None if var.shape is None else list(var.shape),
         "dtype": None if var.dtype is None else var.dtype.name, "persistable": var.persistable,
         "stop_gradient": var.stop_gradient, "is_data": bool(var.is_data), "error_clip": _obj_to_json(var.error_clip)}
    if isinstance(var, Parameter):
        d["parameter"] = {
            "trainable": bool(var.trainable), "need_clip": bool(var.need_clip),
            "optimize_attr": _jsonable(var.optimize_attr, f"parameter {var.name!r} optimize_attr"),
            "regularizer": _obj_to_json(var.regularizer),
            "gradient_clip_attr": _obj_to_json(var.gradient_clip_attr),
            "initializer": _obj_to_json(var.initializer)}
    return d


def program_to_dict(program: Program) -> dict:
    """The JSON-ready form of `program`."""
    if not isinstance(program, Program):
        raise TypeError(f"expected a Program, got {type(program).__name__}")
    blocks = []
    for b in program.blocks:
        ops = [{"type": op.type, "role": op.role,
                "inputs": {k: list(v) for k, v in op.inputs.items()},
                "outputs": {k: list(v) for k, v in op.outputs.items()},
                "attrs": {k: _jsonable(v, f"block {b.idx} op #{i} '{op.type}' attribute {k!r}")
                          for k, v in op.attrs.items()}}
               for i, op in enumerate(b.ops)]
        blocks.append({"idx": b.idx, "parent_idx": b.parent_idx,
                       "vars": [_var_to_dict(v) for v in b.vars.values()], "ops": ops})
    out = {"format_version": FORMAT_VERSION, "random_seed": program.random_seed, "blocks": blocks}
    if program._clip_records:
        out["clip_records"] = program._clip_records
    return out


def save_program(program: Program, path):
    """Write `program` as JSON to `path` (replacing it atomically)."""
    text = json.dumps(program_to_dict(program), indent=1)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_program(path) -> Program:
    """Read a program written by `save_program`; raises ValueError saying what is wrong and where."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return program_from_dict(data, source=path)


def _typed(d, key, types, where, what):
    _need(key in d, where, f"missing field {key!r}")
    val = d[key]
    ok = isinstance(val, types) and (types is bool or not isinstance(val, bool))  # JSON true is no int
    _need(ok, where, f"field {key!r} must be {what}, got {val!r}")
    return val


def _slot_map(d, key, where):
    m = _typed(d, key, dict, where, "an object of slot -> list of names")
    for slot, names in m.items():
        _need(isinstance(names, list) and all(isinstance(n, str) and n for n in names), where,
              f"{key} slot {slot!r} must be a list of variable names, got {names!r}")
    return m


def program_from_dict(data, source="<program>") -> Program:
    """Rebuild a Program from `program_to_dict` output, checking everything on the way."""
    _need(isinstance(data, dict), source, "top level must be a JSON object")
    version = _typed(data, "format_version", int, source, "an int")
    _need(version <= FORMAT_VERSION, source, f"format_version {version} is newer than this fluidlite reads ({FORMAT_VERSION})")
    blocks = _typed(data, "blocks", list, source, "a list")
    _need(blocks, source, "'blocks' is empty (block 0 is required)")
    program = Program()
    program.random_seed = _typed(data, "random_seed", int, source, "an int") if "random_seed" in data else 0
    program.blocks = []
    for i, bd in enumerate(blocks):
        where = f"{source}: blocks[{i}]"
        _need(isinstance(bd, dict), where, "must be an object")
        _need(_typed(bd, "idx", int, where, "an int") == i, where, f"idx is {bd['idx']}, expected {i}")
        parent = _typed(bd, "parent_idx", int, where, "an int")
        _need(parent == -1 if i == 0 else 0 <= parent < i, where, f"bad parent_idx {parent}")
        program.blocks.append(Block(program, i, parent))
    pending = []  # (object, field, variable name, where): links resolved once every variable exists
    for block, bd in zip(program.blocks, blocks):
        for j, vd in enumerate(_typed(bd, "vars", list, f"{source}: blocks[{block.idx}]", "a list")):
            _add_var(block, vd, f"{source}: blocks[{block.idx}].vars[{j}]", pending)
    for obj, field, name, where in pending:
        var = next((b.vars[name] for b in program.blocks if name in b.vars), None)
        _need(var is not None, where, f"field {field!r} refers to variable {name!r}, which no block declares")
        setattr(obj, field, var)
    for block, bd in zip(program.blocks, blocks):
        for j, od in enumerate(_typed(bd, "ops", list, f"{source}: blocks[{block.idx}]", "a list")):
            _add_op(block, od, f"{source}: blocks[{block.idx}].ops[{j}]")
    program._current_block_idx = 0
    if "clip_records" in data:
        from .clip import check_records

        try:
            program._clip_records = check_records(data["clip_records"], program)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: clip_records: {exc}") from None
    return program


def _add_var(block, vd, where, pending):
    _need(isinstance(vd, dict), where, "must be an object")
    name = _typed(vd, "name", str, where, "a non-empty string")
    where = f"{where} ({name!r})"
    _need(name and name not in block.vars, where, "empty or duplicate variable name")
    shape = vd.get("shape")
    _need(shape is None or (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                                            for d in shape)), where, f"bad shape {shape!r}")
    dtype = vd.get("dtype")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"{where}: unknown dtype {dtype!r}") from None
    flags = {k: _typed(vd, k, bool, where, "true or false") for k in ("persistable", "stop_gradient", "is_data")}
    error_clip = _obj_from_json(vd.get("error_clip"), f"{where} error_clip", pending)
    pd = vd.get("parameter")
    if pd is None:
        var = Variable(block, name, shape, dtype, flags["persistable"], flags["stop_gradient"], error_clip, flags["is_data"])
    else:
        _need(isinstance(pd, dict) and shape is not None and dtype is not None, where,
              "a parameter needs 'parameter' fields, a shape and a dtype")
        opt = _typed(pd, "optimize_attr", dict, where, "an object")
        var = Parameter(block, name, shape, dtype, trainable=_typed(pd, "trainable", bool, where, "true or false"),
                        optimize_attr=opt, regularizer=_obj_from_json(pd.get("regularizer"), f"{where} regularizer", pending),
                        gradient_clip_attr=_obj_from_json(pd.get("gradient_clip_attr"), f"{where} gradient_clip_attr", pending),
                        need_clip=_typed(pd, "need_clip", bool, where, "true or false"),
                        initializer=_obj_from_json(pd.get("initializer"), f"{where} initializer", pending))
        var._persistable = flags["persistable"]
        var.stop_gradient = flags["stop_gradient"]
        var.error_clip, var.is_data = error_clip, flags["is_data"]
    block.vars[name] = var


def _add_op(block, od, where):
    _need(isinstance(od, dict), where, "must be an object")
    op_type = _typed(od, "type", str, where, "a string")
    where = f"{where} ('{op_type}')"
    try:
        get_op_def(op_type)
    except ValueError:
        raise ValueError(f"{where}: unknown op type {op_type!r}") from None
    role = _typed(od, "role", str, where, "a string")
    _need(role in ROLES, where, f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    inputs, outputs = _slot_map(od, "inputs", where), _slot_map(od, "outputs", where)
    attrs = _typed(od, "attrs", dict, where, "an object")
    for what, slots in (("reads", inputs), ("writes", outputs)):
        for slot, names in slots.items():
            for n in names:
                _need(block._find_var(n) is not None, where,
                      f"op '{op_type}' {what} variable {n!r} (slot {slot}), which no block declares")
    try:
        block.append_op(op_type, inputs, outputs, attrs, role=role)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


__all__ = ["FORMAT_VERSION", "load_persistables", "load_program", "program_from_dict", "program_to_dict",
           "save_persistables", "save_program"]
