"""Small pieces shared by op declarations."""
from __future__ import annotations

from .. import _threads
from ..registry import GradOpSpec
from ..shapes import numel

# Arrays of at least this many elements use the prange kernels; None: the threading layer's threshold
# (fluidlite/_threads.parallel_min: 2^16 on the TBB pool, 2^23 on the workqueue, whose sleeping threads
# cost ~0.1 ms a call; benchmarks/parallel_min.py, docs/design.md). Tests set a number.
PARALLEL_MIN = None


def same_as(slot="X", out="Out"):
    """infer: one output with the shape and dtype of input `slot`."""

    def infer(ctx):
        return {out: (ctx.shape(slot), ctx.dtype(slot))}

    return infer


def float_same_as(slot="X", out="Out"):
    """infer: like `same_as`, requiring a float input."""

    def infer(ctx):
        ctx.expect_dtype(slot)
        return {out: (ctx.shape(slot), ctx.dtype(slot))}

    return infer


def parallel_min() -> int:
    return _threads.parallel_min() if PARALLEL_MIN is None else PARALLEL_MIN


def parallel_size(n: int) -> bool:
    """Does a pass over `n` elements take its multi-thread (prange) kernel?"""
    return n >= parallel_min()


def parallel_work(n: int, cost: int) -> bool:
    """Does a pass over `n` elements, each `cost` times an add's work, take its multi-thread kernel?"""
    return n * cost >= parallel_min()


def is_large(meta) -> bool:
    return parallel_size(numel(meta.shape))


def grad_op(type, g, inputs, outputs, attrs=None) -> GradOpSpec:
    """A gradient op spec; `attrs` defaults to the forward op's attributes."""
    return GradOpSpec(type, inputs, outputs, dict(g.attrs) if attrs is None else attrs)


def positive(v):
    return None if v > 0 else "must be > 0"


def batch_elementwise(attrs, batched):
    """Unary ops: nothing changes when every input gains a leading dimension."""
    return dict(attrs)


def batch_binary(attrs, batched):
    """Paddle-axis binary ops: Y aligned at `axis` of X moves one dim right when only X gains one."""
    if "X" not in batched:
        return None
    axis = attrs.get("axis", -1)
    if axis >= 0 and "Y" not in batched:
        return {**attrs, "axis": axis + 1}
    return dict(attrs)
