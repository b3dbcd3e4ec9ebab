"""All-or-nothing program edits: `with atomic(main, startup): ...` undoes every edit if the body raises.

`append_backward`, `gradients`, `Optimizer.minimize`/`apply_gradients` run inside it, so an error
halfway (a bad `error_clip`, a user callback that raises, a clip that refuses its gradients) leaves
each program exactly as it was: its blocks' op lists and variables (and each variable's shape,
dtype and producer), its version (so cached plans stay valid), the unique-name counters, and the
given objects' attributes (an optimizer's learning-rate variables). A retry then builds the same
names (`w@GRAD`, never `w@GRAD@1`). Nested uses are fine: each restores its own snapshot.
"""
from __future__ import annotations

import contextlib

from . import unique_name

_VAR_FIELDS = ("shape", "dtype", "op", "stop_gradient", "error_clip")


def _snapshot_program(program):
    blocks = []
    for block in program.blocks:
        fields = {name: tuple(getattr(v, f, None) for f in _VAR_FIELDS) for name, v in block.vars.items()}
        blocks.append((block, list(block.ops), dict(block.vars), fields, block.parent_idx))
    state = {k: v for k, v in vars(program).items() if k != "blocks" and not isinstance(v, (list, dict, set))}
    state["_clip_records"] = list(program._clip_records)  # what clip builds made (fluidlite.clip)
    return program, list(program.blocks), blocks, state


def _restore_program(snap):
    program, block_list, blocks, state = snap
    program.blocks[:] = block_list
    for block, ops, vars_, fields, parent in blocks:
        block.ops[:] = ops
        block.vars.clear()
        block.vars.update(vars_)
        block.parent_idx = parent
        for name, values in fields.items():
            v = vars_[name]
            for f, value in zip(_VAR_FIELDS, values):
                if getattr(v, f, None) is not value:
                    setattr(v, f, value)
    for k in [k for k in vars(program) if k not in state and k != "blocks"
              and not isinstance(vars(program)[k], (list, dict, set))]:
        delattr(program, k)  # e.g. a seed counter first made during the failed edit
    for k, v in state.items():
        setattr(program, k, v)


def _snapshot_object(obj):
    return obj, {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(obj).items()}


def _restore_object(snap):
    obj, state = snap
    for k in [k for k in vars(obj) if k not in state]:
        delattr(obj, k)
    for k, v in state.items():
        if isinstance(v, dict) and isinstance(getattr(obj, k, None), dict):
            getattr(obj, k).clear()
            getattr(obj, k).update(v)
        else:
            setattr(obj, k, v)


@contextlib.contextmanager
def atomic(*programs, objects=()):
    """Run the body; if it raises, put `programs`, the unique-name counters and `objects` back."""
    seen, snaps = set(), []
    for p in programs:
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            snaps.append(_snapshot_program(p))
    objs = [_snapshot_object(o) for o in objects if o is not None and hasattr(o, "__dict__")]
    generator = unique_name._generator
    counters = dict(generator.counters)
    try:
        yield
    except BaseException:
        for snap in snaps:
            _restore_program(snap)
        for snap in objs:
            _restore_object(snap)
        unique_name.switch(generator)
        generator.counters.clear()
        generator.counters.update(counters)
        raise


__all__ = ["atomic"]
