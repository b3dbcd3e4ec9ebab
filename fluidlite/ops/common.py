"""Small pieces shared by op declarations."""
from __future__ import annotations

from ..registry import GradOpSpec
from ..shapes import numel

# arrays of at least this many elements use the prange kernels
PARALLEL_MIN = 1 << 19  # below this, threads cost more than they save on memory-bound kernels (2 cores)
# Optimizer updates (in place, vectorized): one thread beats two below this, since waking Numba's
# workqueue threads costs ~0.1 ms a call (benchmarks/update_kernels.py: sgd on 2^20 float32 0.10 ms
# on one thread, 0.19 on two; adam, rmsprop and momentum break even at 2^22 to 2^23).
UPDATE_PARALLEL_MIN = 1 << 23


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


def is_large(meta) -> bool:
    return numel(meta.shape) >= PARALLEL_MIN


def is_large_update(meta) -> bool:
    """Does an optimizer update of a Param of `meta`'s size run its two-thread kernel?"""
    return numel(meta.shape) >= UPDATE_PARALLEL_MIN


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
