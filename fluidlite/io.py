"""Saving work: programs as JSON, persistable values as checksummed .npy checkpoints.

Programs (`save_program`/`load_program`): a JSON document with `format_version`, the
program's `random_seed` and every block's variables and ops. Nothing is pickled. Loading
checks the structure, op types, references and attribute types, then rebuilds the program
with `Block.append_op`, so shapes are inferred and checked again. Objects hanging off
variables (`error_clip`, a parameter's `regularizer`, `gradient_clip_attr`, `initializer`)
are stored as `{"class", "fields"}` when their exact class is in `fluidlite.io_objects.ALLOWED`,
and rebuilt only through that class's constructor; anything else is stored as `{"repr"}` and
loads as None with a warning. The file is strict JSON: a non-finite float is `{"__float__": "inf"}`.
A loaded program is verified (`fl.verify`); every problem is a ValueError or TypeError naming
the file and the place in it (docs/reliability.md).

Checkpoints (`save_persistables`/`load_persistables`) live in `fluidlite.checkpoint` and are
re-exported here.
"""
from __future__ import annotations

import json
import math
import os
import stat
import uuid

import numpy as np

from .checkpoint import _need, load_persistables, save_persistables
from .framework import ROLES, Block, Parameter, Program, Variable
from .io_objects import obj_from_json, obj_to_json
from .registry import get_op_def
from .verifier import verify

FORMAT_VERSION = 1


# ---------------------------------------------------------------- programs

_FLOAT_KEY = "__float__"  # JSON has no Infinity/NaN: {"__float__": "inf"} stands for float("inf")
_MAX_BYTES = 256 << 20
_DTYPE_KINDS = "biuf"  # bool, signed/unsigned int, float: no object, string, void or datetime dtypes


def _encode_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return {_FLOAT_KEY: "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    return v


def _decode_object(d):
    if _FLOAT_KEY in d:
        if len(d) != 1 or d[_FLOAT_KEY] not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad float encoding {d!r:.100} (expected {{{_FLOAT_KEY!r}: 'inf' | '-inf' | 'nan'}})")
        return float(d[_FLOAT_KEY])
    return d


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON (non-finite floats are written as {{{_FLOAT_KEY!r}: ...}})")


def _jsonable(value, where):
    """Attribute values as JSON (tuples become lists; normalize_attrs turns them back)."""
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _encode_float(float(value))
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: value {value!r} of type {type(value).__name__} cannot be saved as JSON")


def _var_to_dict(var: Variable) -> dict:
    d = {"name": var.name, "shape": None if var.shape is None else list(var.shape),
         "dtype": None if var.dtype is None else var.dtype.name, "persistable": var.persistable,
         "stop_gradient": var.stop_gradient, "is_data": bool(var.is_data), "error_clip": obj_to_json(var.error_clip, _encode_float)}
    if isinstance(var, Parameter):
        d["parameter"] = {
            "trainable": bool(var.trainable), "need_clip": bool(var.need_clip),
            "optimize_attr": _jsonable(var.optimize_attr, f"parameter {var.name!r} optimize_attr"),
            "regularizer": obj_to_json(var.regularizer, _encode_float),
            "gradient_clip_attr": obj_to_json(var.gradient_clip_attr, _encode_float),
            "initializer": obj_to_json(var.initializer, _encode_float)}
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
    if program._clip_records:  # what gradient-clip builds made, by variable names (fluidlite.clip)
        out["clip_records"] = program._clip_records
    return out


def save_program(program: Program, path):
    """Write `program` as JSON to `path` (replacing it atomically)."""
    text = json.dumps(program_to_dict(program), indent=1, allow_nan=False)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_program(path) -> Program:
    """Read a program written by `save_program`, then verify it (`fl.verify`).

    Any problem with the file raises ValueError (or TypeError) saying what is wrong and where;
    nothing but the allow-listed constructors (fluidlite.io_objects) is called on its data."""
    path = os.fspath(path)
    return program_from_dict(read_json_file(path), source=path)


def read_json_file(path):
    """The strict JSON document in the regular file `path` (size-limited, UTF-8, no NaN/Infinity literals);
    a missing or unreadable file is a ValueError naming it, like any other problem with the file."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:  # a missing or unreadable file is bad input like a malformed one: name it
        raise ValueError(f"{path}: cannot read the program file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _need(stat.S_ISREG(st.st_mode), path, "not a regular file")
        _need(st.st_size <= _MAX_BYTES, path, f"{st.st_size} bytes is more than a program file may hold ({_MAX_BYTES})")
        with os.fdopen(fd, "rb") as f:
            fd = None
            raw = f.read(st.st_size + 1)  # read(n) allocates n bytes: never more than the file holds
    finally:
        if fd is not None:
            os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    return _parse_json(text, path)


def loads_program(text: str, source="<program>") -> Program:
    """`load_program` from a string."""
    return program_from_dict(_parse_json(text, source), source=source)


def _parse_json(text, source):
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_hook=_decode_object)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None


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
        except ValueError as exc:
            raise ValueError(f"{source}: clip_records: {exc}") from None
    try:
        verify(program)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
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
        _need(isinstance(dtype, str), where, f"dtype must be a string, got {dtype!r:.100}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"{where}: unknown dtype {dtype!r:.100}") from None
        _need(dtype.kind in _DTYPE_KINDS and dtype.fields is None, where, f"unsupported dtype {dtype}")
    flags = {k: _typed(vd, k, bool, where, "true or false") for k in ("persistable", "stop_gradient", "is_data")}
    error_clip = obj_from_json(vd.get("error_clip"), f"{where} error_clip", pending)
    pd = vd.get("parameter")
    if pd is None:
        var = Variable(block, name, shape, dtype, flags["persistable"], flags["stop_gradient"], error_clip, flags["is_data"])
    else:
        _need(isinstance(pd, dict) and shape is not None and dtype is not None, where,
              "a parameter needs 'parameter' fields, a shape and a dtype")
        opt = _typed(pd, "optimize_attr", dict, where, "an object")
        _need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                  for v in opt.values()), where, f"optimize_attr values must be finite numbers >= 0, got {opt!r:.200}")
        _need(all(d >= 0 for d in shape), where, f"a parameter's shape must be fully known, got {shape}")
        var = Parameter(block, name, shape, dtype, trainable=_typed(pd, "trainable", bool, where, "true or false"),
                        optimize_attr=opt, regularizer=obj_from_json(pd.get("regularizer"), f"{where} regularizer", pending),
                        gradient_clip_attr=obj_from_json(pd.get("gradient_clip_attr"), f"{where} gradient_clip_attr", pending),
                        need_clip=_typed(pd, "need_clip", bool, where, "true or false"),
                        initializer=obj_from_json(pd.get("initializer"), f"{where} initializer", pending))
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


_INFERENCE = ("load_inference_model", "load_params", "save_inference_model", "save_params")


def __getattr__(name):
    # fluidlite.inference builds on this module (and the executor): it loads when first asked for
    if name in _INFERENCE:
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'fluidlite.io' has no attribute {name!r}")


__all__ = [*_INFERENCE, "FORMAT_VERSION", "load_persistables", "load_program", "loads_program", "program_from_dict", "program_to_dict",
           "save_persistables", "save_program"]
