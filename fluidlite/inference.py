"""Inference models and parameter files (Paddle Fluid 1.x names).

`save_inference_model(dirname, feeded_var_names, target_vars, executor, main_program=None)` writes
`dirname/__model__` (JSON: the program pruned to what the targets need, switched to inference with
`clone(for_test=True)`, and the feed and fetch names) and `dirname/params/` (a checkpoint of the
persistables the pruned program reads). `load_inference_model(dirname, executor)` reads both back,
checking them as `load_program` and `load_persistables` do, into the global scope.
"""
from __future__ import annotations

import json
import os

from . import checkpoint, io
from .executor import Executor
from .framework import Parameter, Program, Variable, default_main_program

MODEL_FILE = "__model__"
PARAMS_DIR = "params"
_FORMAT = "fluidlite-inference-model"


def prune_for_inference(program: Program, feeded_var_names, target_names) -> Program:
    """A copy of `program` in inference mode holding only the ops the targets need, given the feeds."""
    pruned = program.clone(for_test=True)
    block = pruned.global_block()
    fed = set(feeded_var_names)
    for n in list(fed) + list(target_names):
        if n not in block.vars:
            raise ValueError(f"save_inference_model: {n!r} is not a variable of the program's global block")
    needed, keep = set(target_names) - fed, []
    for op in reversed(block.ops):
        outs = set(op.output_names)
        if outs & needed and not outs <= fed:
            keep.append(op)
            needed |= set(op.input_names) - fed
    keep.reverse()
    for n in needed:
        var = block.vars.get(n)
        produced = any(n in op.output_names for op in keep)
        if var is not None and not produced and not var.persistable:
            raise ValueError(f"save_inference_model: the targets need {n!r}, which is neither fed "
                             f"({sorted(fed)}) nor computed nor a parameter")
    block.ops[:] = keep
    used = fed | set(target_names) | {n for op in keep for n in op.input_names + op.output_names}
    for name in [n for n in block.vars if n not in used]:
        del block.vars[name]
    for b in pruned.blocks[1:]:
        b.ops.clear()
    block._changed()
    return pruned


def save_inference_model(dirname, feeded_var_names, target_vars, executor, main_program=None, scope=None):
    """Write the inference program for `target_vars` given `feeded_var_names`, and its parameters."""
    if isinstance(feeded_var_names, str):
        feeded_var_names = [feeded_var_names]
    if not all(isinstance(n, str) for n in feeded_var_names):
        raise TypeError("save_inference_model: feeded_var_names must be a list of variable names")
    targets = target_vars if isinstance(target_vars, (list, tuple)) else [target_vars]
    target_names = [t.name if isinstance(t, Variable) else t for t in targets]
    if not all(isinstance(t, str) for t in target_names):
        raise TypeError("save_inference_model: target_vars must be Variables or names")
    _check_executor(executor, "save_inference_model")
    program = default_main_program() if main_program is None else main_program
    pruned = prune_for_inference(program, feeded_var_names, target_names)
    os.makedirs(dirname, exist_ok=True)
    checkpoint.save_persistables(os.path.join(dirname, PARAMS_DIR), pruned, scope)
    doc = {"format": _FORMAT, "version": 1, "feed": list(feeded_var_names), "fetch": target_names,
           "program": io.program_to_dict(pruned)}
    tmp = os.path.join(dirname, MODEL_FILE + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    os.replace(tmp, os.path.join(dirname, MODEL_FILE))
    return target_names


def load_inference_model(dirname, executor, scope=None):
    """(program, feed_target_names, fetch_targets) from `save_inference_model`; parameters go to `scope`."""
    _check_executor(executor, "load_inference_model")
    path = os.path.join(os.fspath(dirname), MODEL_FILE)
    data = io.read_json_file(path)
    io._need(isinstance(data, dict) and data.get("format") == _FORMAT and data.get("version") == 1, path,
             f"not a fluidlite inference model (format {_FORMAT!r}, version 1)")
    program = io.program_from_dict(data.get("program"), source=path)
    block = program.global_block()
    names = {}
    for key in ("feed", "fetch"):
        value = data.get(key)
        io._need(isinstance(value, list) and all(isinstance(n, str) and n in block.vars for n in value), path,
                 f"field {key!r} must list variables of the program")
        names[key] = value
    checkpoint.load_persistables(os.path.join(dirname, PARAMS_DIR), program, scope)
    return program, names["feed"], [block.var(n) for n in names["fetch"]]


def save_params(executor, dirname, main_program=None, scope=None):
    """Save the program's Parameters only (not optimizer state or counters)."""
    _check_executor(executor, "save_params")
    checkpoint.save_persistables(dirname, main_program, scope, predicate=_is_parameter)


def load_params(executor, dirname, main_program=None, scope=None):
    """Load the program's Parameters from `save_params` (other persistables are left alone)."""
    _check_executor(executor, "load_params")
    return checkpoint.load_persistables(dirname, main_program, scope, predicate=_is_parameter)


def _is_parameter(var):
    return isinstance(var, Parameter)


def _check_executor(executor, fn):
    if not isinstance(executor, Executor):
        raise TypeError(f"{fn}: argument 'executor' must be an Executor, got {type(executor).__name__}")


__all__ = ["load_inference_model", "load_params", "prune_for_inference", "save_inference_model", "save_params"]
