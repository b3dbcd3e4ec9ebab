"""The IR verifier: checks a program is well formed (run it after backward, clipping, optimizing)."""
from __future__ import annotations

from .framework import ROLES
from .registry import OPS


def verify(program) -> None:
    """Raise ValueError listing every problem: undefined inputs, untyped or doubly written vars, unknown ops."""
    problems = []
    for block in program.blocks:
        written = set()
        for i, op in enumerate(block.ops):
            where = f"block {block.idx} op {i} '{op.type}'"
            if op.type not in OPS:
                problems.append(f"{where}: unknown op type")
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
                # single assignment, except ops that update a variable in place (they read it too)
                if n in written and n not in op.input_names:
                    problems.append(f"{where}: output {n!r} is written a second time")
                written.add(n)
    if problems:
        raise ValueError("program does not verify:\n  " + "\n  ".join(problems))
