"""The plan compiler: named passes over a typed step list (see docs/design.md, "The executor plan").

    prune -> infer -> batch_grad -> mul_acc -> lstm_seq -> stack_into -> alias -> inplace -> lower -> fold -> fuse -> codegen

Each pass is a function `pass_(ir: PlanIR, options: CompileOptions) -> PlanIR` in its own module and
can be run alone on a hand-made `PlanIR`. `compile_plan` runs them in order; with `options.debug` the
IR verifier (`ir.check`) runs after every pass (the feed counts as defining values, unlike `fl.verify`).
Passes that only optimise (`batch_grad`, `mul_acc`, `lstm_seq`, `stack_into`, `alias`, `inplace`, `fold`, `fuse`) and
`prune` can be switched off for debugging:

    fl.Executor(compile_options=CompileOptions(disabled={"fold", "alias"}, debug=True))

`check_nan_inf=True` (what `fl.Executor(check_nan_inf=True)` sets) makes codegen check every op's
floating outputs for NaN/Inf (see `nan_check`); it also switches off `stack_into`, `alias`, `inplace`, `fold` and
`fuse`.

or, for every Executor made afterwards without explicit options, the environment variables
`FLUIDLITE_PASSES_OFF=fold,alias` and `FLUIDLITE_DEBUG_PASSES=1`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .alias import alias
from .batch_grad import batch_grad
from .codegen import codegen
from .fold import fold
from .fuse import fuse
from .infer import infer
from .inplace import inplace
from .ir import FusedStep, IRError, PlanIR, Step, check
from .lower import lower
from .lstm_seq import lstm_seq
from .mul_acc import mul_acc
from .prune import prune
from .stack_into import stack_into

PASSES = (("prune", prune), ("infer", infer), ("batch_grad", batch_grad), ("mul_acc", mul_acc),
          ("lstm_seq", lstm_seq), ("stack_into", stack_into), ("alias", alias), ("inplace", inplace),
          ("lower", lower), ("fold", fold), ("fuse", fuse), ("codegen", codegen))
SWITCHABLE = frozenset({"prune", "batch_grad", "mul_acc", "lstm_seq", "stack_into", "alias", "inplace", "fold", "fuse"})


@dataclass(frozen=True)
class CompileOptions:
    """How plans are compiled. `disabled`: names of switchable passes to skip (their safe fallback is
    used: keep every op, overwrite nothing, allocate every result, fold nothing); `debug`: verify the IR after
    every pass; `batch_grad`: run the batch_grad pass (off by default: it changes rounding, and the docs'
    demo figures are bit-exact runs; FLUIDLITE_BATCH_GRAD=1 turns it on).
    Options are part of the plan: an Executor's plans all share its options."""

    disabled: frozenset = field(default_factory=frozenset)
    debug: bool = False
    check_nan_inf: bool = False
    batch_grad: bool = False  # opt in: changes the rounding of summed weight gradients (see batch_grad.py)

    def __post_init__(self):
        disabled = frozenset(self.disabled)
        unknown = disabled - SWITCHABLE
        if unknown:
            raise ValueError(f"CompileOptions: cannot switch off {sorted(unknown)}; switchable passes: "
                             f"{sorted(SWITCHABLE)}")
        if self.check_nan_inf:  # no write into the scope before the end, inputs intact, every op's output
            disabled |= {"stack_into", "alias", "inplace", "fold", "fuse"}
        object.__setattr__(self, "disabled", disabled)

    @classmethod
    def from_env(cls) -> "CompileOptions":
        """Options from FLUIDLITE_PASSES_OFF (comma-separated pass names) and FLUIDLITE_DEBUG_PASSES=1."""
        off = os.environ.get("FLUIDLITE_PASSES_OFF", "")
        return cls(disabled=frozenset(p.strip() for p in off.split(",") if p.strip()),
                   debug=os.environ.get("FLUIDLITE_DEBUG_PASSES", "") not in ("", "0"),
                   batch_grad=os.environ.get("FLUIDLITE_BATCH_GRAD", "") not in ("", "0"))


def compile_plan(block, feed_sig: tuple, fetch_names: tuple, options: CompileOptions | None = None) -> PlanIR:
    """Run every pass on `block` for feeds `((name, shape, dtype), ...)` and the fetch names."""
    options = CompileOptions() if options is None else options
    ir = PlanIR(block, {name: (shape, dtype) for name, shape, dtype in feed_sig}, tuple(fetch_names))
    for name, pass_ in PASSES:
        ir = pass_(ir, options)
        ir.done.append(name)
        if options.debug:
            check(ir, name)
    return ir


__all__ = ["CompileOptions", "FusedStep", "IRError", "PASSES", "PlanIR", "Step", "check", "compile_plan",
           "alias", "batch_grad", "codegen", "fold", "fuse", "infer", "inplace", "lower", "lstm_seq", "mul_acc", "prune"]
