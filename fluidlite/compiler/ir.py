"""The compiler's IR: a typed list of steps (one per op) and the plan-wide facts the passes fill in.

Each pass (prune, infer, alias, lower, fold, codegen) reads and extends a `PlanIR`; `check(ir, after)`
is the verifier the debug mode runs between passes (compare JAX's `check_jaxpr` after each transform).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..registry import InferContext, Meta, OpDef


@dataclass
class Step:
    """One op of the plan, as the passes see it.

    - `op`, `opdef`: the program's Operator and its registered OpDef (prune);
    - `inputs`: slot -> [Meta] with concrete (fed) shapes (infer);
    - `overwritable`: input slots whose buffers the kernel may reuse for its output (alias);
    - `ctx`, `kernel`: the lowering context and the bound callable `kernel(*in_names values)` (lower);
    - `fold`: `f(acc, x) -> acc` when this op's inputs are accumulated as they are made (fold);
    - `reuse`: per output variable, its name when the scope's old array may receive the result, else None
      (inplace; empty when none may);
    - `poly`: the bound kernel (and fold step) work for any batch size (lower; `OpDef.is_batch_poly`);
    - `into`: per output variable, `(stack result, t)` when the kernel writes it into slice t of that
      stack's buffer, else None (stack_into; empty when none is); `assembles`: this stack only names the
      buffer its inputs were written into.
    """

    op: Any
    opdef: OpDef
    inputs: dict = field(default_factory=dict)
    overwritable: frozenset = frozenset()
    ctx: InferContext | None = None
    kernel: Callable | None = None
    fold: Callable | None = None
    reuse: list = field(default_factory=list)
    poly: bool = False
    into: list = field(default_factory=list)
    assembles: bool = False

    @property
    def in_names(self) -> list:
        """Input variable names, flattened in slot order: the kernel's positional arguments."""
        return self.op.input_names

    @property
    def out_names(self) -> list:
        return self.op.output_names

    @property
    def ops(self) -> list:
        """The program operators this step runs."""
        return [self.op]

    @property
    def note(self) -> str:
        """A comment for this step's line of the generated source."""
        return ""


@dataclass
class FusedStep(Step):
    """Consecutive elementwise steps run as one generated kernel (the fuse pass).

    `op`, `opdef`, `inputs` and `ctx` are the last member's (an error inside the kernel names it);
    `members` the fused Steps in order; `ins` the kernel's arguments (values made before the group);
    `outs` the values it materialises (read after it, fetched or persistable; the others are never stored).
    """

    members: list = field(default_factory=list)
    ins: list = field(default_factory=list)
    outs: list = field(default_factory=list)

    @property
    def in_names(self) -> list:
        return self.ins

    @property
    def out_names(self) -> list:
        return self.outs

    @property
    def ops(self) -> list:
        return [m.op for m in self.members]

    @property
    def note(self) -> str:
        return "  # fused: " + ", ".join(m.op.type for m in self.members)


@dataclass
class PlanIR:
    """Everything one plan is compiled from and into.

    Inputs: the block, the feed signature `feed` (name -> (shape, dtype), in feed order) and the
    fetch names. The passes add the steps, concrete `metas` (name -> Meta), `scope_inputs` (the
    persistable values read from the scope), `persist_out` (persistable values written back),
    `declared` (their declared shape and dtype), and finally `source`, `step_fn` and `line_to_op`
    (codegen keeps the compiled `code` and the `env` it ran in: rebatch binds them for other batch sizes).
    """

    block: Any
    feed: dict
    fetch_names: tuple
    steps: list = field(default_factory=list)
    metas: dict = field(default_factory=dict)
    scope_inputs: list = field(default_factory=list)
    persist_out: list = field(default_factory=list)
    declared: dict = field(default_factory=dict)
    source: str = ""
    step_fn: Callable | None = None
    line_to_op: dict = field(default_factory=dict)
    code: Any = None
    env: dict = field(default_factory=dict)
    done: list = field(default_factory=list)  # names of the passes run so far
    assembled: dict = field(default_factory=dict)  # stack result -> its buffer's number in codegen (stack_into)

    def var(self, name: str):
        """The program variable `name` (searching parent blocks), or None."""
        return self.block._find_var(name)

    def is_persistable(self, name: str) -> bool:
        var = self.block._find_var(name)
        return var is not None and var.persistable


class IRError(AssertionError):
    """A pass left the step list malformed (raised by `check` in debug mode)."""


def check(ir: PlanIR, after: str) -> None:
    """Verify the invariants every pass must keep; raise IRError naming the pass that broke one."""
    problems = []
    done = set(ir.done)
    defined = set(ir.feed) | set(ir.scope_inputs)
    made_at = {}
    for i, step in enumerate(ir.steps):
        where = f"step {i} '{step.op.type}'"
        if step.opdef.type != step.op.type:
            problems.append(f"{where}: OpDef is for '{step.opdef.type}'")
        if isinstance(step, FusedStep):
            made = {n for m in step.members for n in m.out_names}
            if not step.outs or not set(step.outs) <= made or set(step.ins) & made:
                problems.append(f"{where}: fused outputs {step.outs} / inputs {step.ins} do not match its members")
        if "infer" in done:
            for slot, names in step.op.inputs.items():
                metas = step.inputs.get(slot, [])
                if [m.name for m in metas] != list(names):
                    problems.append(f"{where}: slot {slot} metas {[m.name for m in metas]} != {names}")
            for n in step.in_names:
                if n not in defined:
                    problems.append(f"{where}: input {n!r} is read before it is fed, read from the scope or made")
            for n in step.out_names:
                if not isinstance(ir.metas.get(n), Meta):
                    problems.append(f"{where}: output {n!r} has no concrete Meta")
        if not step.overwritable <= set(step.op.inputs):
            problems.append(f"{where}: overwritable slots {sorted(step.overwritable)} are not input slots")
        for slot in step.overwritable:
            for n in step.op.inputs.get(slot, ()):
                if n in ir.feed or (ir.is_persistable(n) and n not in step.out_names):
                    problems.append(f"{where}: may overwrite {n!r}, which is fed or a persistable it does not update")
        if "lower" in done and not callable(step.kernel):
            problems.append(f"{where}: no kernel after lowering")
        if step.reuse and (len(step.reuse) != len(step.out_names) or not step.opdef.writes_out):
            problems.append(f"{where}: reuse marks {step.reuse} do not match its outputs or its OpDef")
        if step.into and (len(step.into) != len(step.out_names) or not step.opdef.writes_out
                          or any(a and r for a, r in zip(step.into, step.reuse))):
            problems.append(f"{where}: stack slices {step.into} do not match its outputs, OpDef or reuse marks")
        if step.fold is not None:
            for n in step.in_names:
                if n not in made_at:
                    problems.append(f"{where}: folds {n!r}, which no earlier step makes")
        for n in step.out_names:
            made_at.setdefault(n, i)
            defined.add(n)
    if "infer" in done:
        for n in ir.fetch_names:
            if n not in defined:
                problems.append(f"fetch {n!r} is neither fed, read from the scope nor made")
    if "codegen" in done and (not ir.source or ir.step_fn is None):
        problems.append("codegen left no source or step function")
    if problems:
        raise IRError(f"plan IR does not verify after pass '{after}':\n  " + "\n  ".join(problems))
