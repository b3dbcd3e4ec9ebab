"""One plan for every batch size: bind a compiled plan's step function for other fed batch sizes.

A plan is compiled at the first batch size it sees. Everything but some kernels is independent of
the batch size: which ops run (prune), which buffers may be overwritten (alias, inplace: decided on
names and liveness, never on sizes), what is folded, the generated source and its bytecode.
`bind_batch(ir, feed)` gives the step function for fed shapes that differ from the plan's only in
the batch dimension (the executor's cache key guarantees that):

- shapes are inferred again (`infer.shapes_at`), so a shape error is raised as a fresh plan would;
- a step whose kernel is batch-polymorphic (`Step.poly`, `OpDef.batch_poly`), or whose input shapes
  did not change (a weight update), keeps its kernel; any other step is lowered again for its new
  input shapes with the same attributes, outputs and overwritable slots, exactly as a fresh plan
  would lower it, so results are bit for bit those of a fresh plan;
- the plan's compiled code runs in a copy of its namespace holding the new kernels.

A persistable result whose shape follows the batch (codegen writes those shapes into the source), or
a fused group whose outputs had one shape only by coincidence at the plan's batch size ([B, 4] next
to [4, 4] at B = 4), makes the plan `NotReusable`: the executor then compiles a plan per batch size.
"""
from __future__ import annotations

import dataclasses

from .infer import shapes_at
from .ir import PlanIR
from .lower import context


class NotReusable(Exception):
    """The plan cannot serve another batch size; compile one for it."""


def bind_batch(ir: PlanIR, feed: dict):
    """The step function of `ir` (compiled for other batch sizes) for `feed`: name -> (shape, dtype)."""
    metas, step_inputs = shapes_at(ir, feed)
    for n in ir.persist_out:
        if metas[n] != ir.metas[n]:
            raise NotReusable(f"persistable result {n!r} is {list(metas[n].shape)} at this batch size, "
                              f"{list(ir.metas[n].shape)} in the plan")
    for step in ir.steps:  # a fused group is made of outputs of one shape: at the plan's batch size only?
        shapes = {metas[n].shape for m in getattr(step, "members", ()) for n in m.out_names}
        if len(shapes) > 1:
            raise NotReusable(f"fused ops {[m.op.type for m in step.members]} have outputs of one shape only at "
                              f"the plan's batch size (here {sorted(shapes)})")
    env = None
    for name, k in ir.assembled.items():  # stacks assembled in place: their buffers at this batch size
        if metas[name].shape != ir.metas[name].shape:
            env = dict(ir.env) if env is None else env
            env[f"SH{k}"] = metas[name].shape
    for i, (step, ins) in enumerate(zip(ir.steps, step_inputs)):
        if step.poly or ins == step.inputs:
            continue
        if env is None:
            env = dict(ir.env)
        ctx = context(step, ins)
        if step.fold is None:
            env[f"K{i}"] = step.opdef.bind(ctx)
        elif f"F{i}" in env:
            env[f"F{i}"] = step.opdef.fold(ctx)
    if env is None:
        return ir.step_fn
    exec(ir.code, env)
    return env["_step"]


def at_batch(ir: PlanIR, feed: dict) -> PlanIR:
    """A shallow copy of `ir` whose feed and metas are those of `feed` (for the memory plan)."""
    metas, _ = shapes_at(ir, feed)
    return dataclasses.replace(ir, feed=dict(feed), metas=metas)
