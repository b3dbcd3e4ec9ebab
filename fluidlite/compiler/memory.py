"""The memory plan of a compiled step: which values are alive after each step and the peak.

Counted from the concrete shapes (`PlanIR.metas`) and the schedule codegen emits: feeds and the
persistables the plan reads are alive from the start (persistables are reported apart: they live
in the scope between steps anyway); each step's outputs are alive from that step to their last use,
or to the last use of a view of them (a reshape, a sum_grad's outputs);
a folded sum holds one accumulator; an output written into an overwritable input of the same size
(alias pass), a view (`returns_view`) and a persistable result written into the scope's old array
(inplace pass) take no new bytes; a stack assembled in place (stack_into) is alive whole from the first
op writing a slice of it. Kernels' own scratch space is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..shapes import numel
from .alias import alias_groups
from .ir import PlanIR


@dataclass
class MemoryPlan:
    peak_bytes: int  # largest sum of live values while a step runs (the scope's persistables not counted)
    peak_step: int  # index of that step (-1: before any step)
    persistable_bytes: int  # persistable values the plan reads or writes (they stay in the scope)
    feed_bytes: int
    timeline: list = field(default_factory=list)  # (step index, op type, live bytes while it runs)

    def summary(self, steps=None) -> str:
        where = "before the first op" if self.peak_step < 0 or steps is None else (
            f"at step {self.peak_step} ({steps[self.peak_step].op.type})")
        return (f"peak live bytes of a step: {self.peak_bytes:,} ({self.peak_bytes / 2**20:.2f} MiB) {where}\n"
                f"feeds: {self.feed_bytes:,} bytes; persistables read or written: {self.persistable_bytes:,} bytes "
                f"({self.persistable_bytes / 2**20:.2f} MiB, kept in the scope between steps)")


def nbytes(meta) -> int:
    return max(numel(meta.shape), 0) * meta.dtype.itemsize


def memory_plan(ir: PlanIR) -> MemoryPlan:
    persist = set(ir.scope_inputs) | set(ir.persist_out)
    size = {n: nbytes(m) for n, m in ir.metas.items()}
    groups = alias_groups(ir.steps)  # a buffer lives while any value viewing it does
    buf = lambda n: groups.get(n, n)  # noqa: E731
    last_use = {}
    for i, step in enumerate(ir.steps):
        for n in step.in_names + step.out_names:
            last_use[buf(n)] = i
    keep = {buf(n) for n in (*ir.fetch_names, *ir.persist_out)}  # alive to the end (persistables are stored back last)
    live = {buf(n): size[n] for n in ir.feed if n not in persist}
    feed_bytes = sum(size[n] for n in ir.feed)
    peak, peak_step, timeline = sum(live.values()), -1, []
    for i, step in enumerate(ir.steps):
        dead_inputs = [buf(n) for slot in step.overwritable for n in step.op.inputs.get(slot, ()) if buf(n) in live]
        for k, n in enumerate(step.out_names):
            if step.into and step.into[k] is not None:  # a slice of a stack's buffer, allocated whole here
                live.setdefault(buf(n), size[step.into[k][0]])
                continue
            if (n in step.in_names or (step.reuse and step.reuse[k] is not None) or step.opdef.returns_view
                    or step.assembles):
                continue  # updated in place, written into the scope's old array, a view, or a stacked buffer
            same = next((d for d in dead_inputs if live[d] == size[n]), None)
            if same is not None:  # the kernel writes into a dead input of its size: that buffer changes name
                dead_inputs.remove(same)
                live.pop(same)
            live[buf(n)] = size[n]  # a new persistable array too: the old one stays in the scope until the end
        now = sum(live.values())
        timeline.append((i, "+".join(op.type for op in step.ops), now))  # a fused step runs several ops
        if now > peak:
            peak, peak_step = now, i
        for b in dict.fromkeys(map(buf, step.in_names + step.out_names)):
            if last_use.get(b) == i and b not in keep:
                live.pop(b, None)
    persistable_bytes = sum(size[n] for n in persist if n in size)
    return MemoryPlan(peak, peak_step, persistable_bytes, feed_bytes, timeline)
