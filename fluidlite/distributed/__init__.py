"""Data-parallel training over MPI (SPEC §11); see docs/distributed.md.

    fl.distributed.init()
    opt = fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1))
    opt.minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    exe.run(startup); fl.distributed.broadcast_persistables(main)

`minimize` appends, after the backward ops and before every clip op, `allreduce` ops (role backward)
that replace each gradient by its average over the workers, bucketed into a few contiguous buffers.
Every clip, norm and skip-step decision then sees the same global gradient on every worker.
"""
from __future__ import annotations

import copy
import hashlib

import numpy as np

from .. import random_state
from ..framework import ROLE_BACKWARD, default_main_program
from ..scope import global_scope
from .comm import DistributedError, barrier, bcast_inplace, init, require

DEFAULT_BUCKET_MB = 25.0


def rank() -> int:
    """This worker's rank (0 in a single process)."""
    return require("fl.distributed.rank()").rank


def world_size() -> int:
    """The number of workers (1 in a single process)."""
    return require("fl.distributed.world_size()").size


def _batch_var(block):
    """The first data variable with a batch dimension (-1) that a forward op reads, and that axis."""
    for op in block.ops:
        for name in op.input_names:
            var = block._find_var(name)
            if var is not None and var.is_data and var.shape and -1 in var.shape:
                return var, list(var.shape).index(-1)
    return None, 0


def buckets(grads, bucket_bytes):
    """Consecutive gradients of one dtype, cut when a bucket would pass `bucket_bytes` (a gradient larger
    than that gets a bucket of its own)."""
    out, size = [], 0
    for g in grads:
        nbytes = max(1, int(np.prod([max(d, 1) for d in g.shape]))) * g.dtype.itemsize
        if out and out[-1][0].dtype == g.dtype and size + nbytes <= bucket_bytes:
            out[-1].append(g)
            size += nbytes
        else:
            out.append([g])
            size = nbytes
    return out


class DistributedOptimizer:
    """Wraps an optimizer: its `minimize` also averages every gradient over the workers before clipping.

    - `reduce="mean"` (default): each worker's gradient is weighted by its batch size (the leading -1
      dimension of the first data variable the program reads, or `batch_var`), so uneven shards give
      exactly the gradient of one process on the whole batch for a loss that is a mean over the batch.
      `weight_by_batch=False` averages the workers' gradients plainly, as PyTorch DDP does.
    - `reduce="sum"`: for a loss summed over the batch.
    - `bucket_size_mb`: gradients are packed into buffers of at most this size (default 25 MB), one
      allreduce each; 0 gives one allreduce per gradient.
    """

    def __init__(self, optimizer, reduce="mean", weight_by_batch=True, batch_var=None,
                 bucket_size_mb=DEFAULT_BUCKET_MB):
        require("DistributedOptimizer")
        if not hasattr(optimizer, "minimize") or not hasattr(optimizer, "gradient_transforms"):
            raise TypeError(f"DistributedOptimizer wraps a fluidlite optimizer, got {optimizer!r}")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"DistributedOptimizer: reduce must be 'mean' or 'sum', got {reduce!r}")
        if isinstance(bucket_size_mb, bool) or not isinstance(bucket_size_mb, (int, float)) or bucket_size_mb < 0:
            raise ValueError(f"DistributedOptimizer: bucket_size_mb must be a number >= 0, got {bucket_size_mb!r}")
        self.inner = optimizer
        self.reduce, self.weight_by_batch, self.batch_var = reduce, bool(weight_by_batch), batch_var
        self.bucket_bytes = float(bucket_size_mb) * 2**20
        self.allreduce_ops = []  # the ops the last minimize appended

    def __getattr__(self, name):  # learning_rate_name, apply_gradients, ... of the wrapped optimizer
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def backward(self, loss, *args, **kwargs):
        """The wrapped optimizer's backward, then the allreduce: (param, averaged gradient) pairs, for
        backward -> your own clipping -> apply_gradients."""
        require("DistributedOptimizer.backward")
        return self.allreduce_gradients(loss, self.inner.backward(loss, *args, **kwargs))

    def minimize(self, loss, startup_program=None, parameter_list=None, no_grad_set=None, grad_clip=None,
                 callback=None):
        """The wrapped optimizer's minimize (same arguments and result), with the gradient allreduce
        between its backward and its clipping.

        With per-example clipping (fluidlite.privacy.GradientClipPerExample) each worker clips its own
        examples and sums them; the allreduce comes after the noise, which every worker draws alike
        (its random state is a broadcast persistable) at 1/K of the standard deviation, so the
        average holds the clipped sum of every example plus the noise once."""
        world = require("DistributedOptimizer.minimize")
        if getattr(grad_clip, "replaces_backward", False) and getattr(grad_clip, "noise_multiplier", 0) > 0:
            grad_clip = copy.copy(grad_clip)
            grad_clip.noise_multiplier /= world.size
        inner = self.inner
        had = "gradient_transforms" in vars(inner)
        old = inner.gradient_transforms
        inner.gradient_transforms = (*old, self.allreduce_gradients)
        try:
            return inner.minimize(loss, startup_program, parameter_list, no_grad_set, grad_clip, callback)
        finally:
            if had:
                inner.gradient_transforms = old
            else:
                del inner.gradient_transforms

    def allreduce_gradients(self, loss, params_grads):
        """Append the allreduce ops for these gradients (in place: same names); returns the pairs."""
        block = loss.block
        grads = list(dict.fromkeys(g.name for _, g in params_grads if g is not None))
        grads = [block.var(n) for n in grads]
        inputs = {}
        attrs = {"reduce": self.reduce}
        if self.reduce == "mean" and self.weight_by_batch:
            var, axis = (block.var(self.batch_var) if isinstance(self.batch_var, str) else self.batch_var), 0
            if var is None:
                var, axis = _batch_var(block)
            elif -1 in (var.shape or ()):
                axis = list(var.shape).index(-1)
            if var is not None:
                inputs["Weight"] = [var]
                attrs["batch_axis"] = axis
        self.allreduce_ops = []
        with block.program._role_guard(ROLE_BACKWARD):
            for k, bucket in enumerate(buckets(grads, self.bucket_bytes)):
                op = block.append_op("allreduce", {"X": bucket, **inputs}, {"Out": bucket}, {**attrs, "bucket": k})
                self.allreduce_ops.append(op)
        return params_grads


# ---- same start, same program ------------------------------------------------------------------

def program_lines(program) -> list:
    return str(program).splitlines()


def check_same_program(program, root=0):
    """Raise DistributedError naming the first line of str(program) where some rank differs from `root`."""
    world = require("check_same_program")
    if world.comm is None:
        return
    lines = program_lines(program)
    digest = np.frombuffer(hashlib.sha256("\n".join(lines).encode()).digest(), np.uint8)
    mine = np.zeros((world.size, digest.size), np.uint8)
    mine[world.rank] = digest
    from .comm import allreduce_inplace

    allreduce_inplace(mine, "comparing program hashes")
    if all((mine[r] == mine[root]).all() for r in range(world.size)):
        return
    root_lines = world.comm.bcast(lines if world.rank == root else None, root=root)
    first = next((i for i, (a, b) in enumerate(zip(root_lines, lines)) if a != b), min(len(lines), len(root_lines)))
    diffs = world.comm.allgather(None if lines == root_lines else first)
    r = min((d, r) for r, d in enumerate(diffs) if d is not None)[1]
    theirs = world.comm.bcast(lines[first] if first < len(lines) else "<end of program>", root=r)
    i = diffs[r]
    at = root_lines[i] if i < len(root_lines) else "<end of program>"
    raise DistributedError(f"the program on rank {r} differs from rank {root}'s at line {i} of str(program): "
                           f"rank {root} has {at.strip()!r}, rank {r} has {theirs.strip()!r}")


def broadcast_persistables(program=None, scope=None, root=0) -> list:
    """Give every worker rank `root`'s values of the program's persistable variables (after the startup
    program, or after rank `root` loaded a checkpoint). Checks first that every rank built the same
    program. Dropout's random streams are then derived per rank (`random_state.for_rank`), so workers
    draw different masks; every other stream (DP noise, random ops) stays the same on every worker.
    Returns the names broadcast."""
    world = require("broadcast_persistables")
    program = program or default_main_program()
    scope = scope or global_scope()
    check_same_program(program, root)
    names = sorted(v.name for v in program.global_block().vars.values() if v.persistable)
    dropout = _dropout_states(program)
    if world.rank == root:  # made when a plan first reads them: make them now, so every rank derives from them
        random_state.init_missing(scope, dropout)
    if world.comm is None:
        return [n for n in names if scope.get_array(n) is not None]
    have = [(n, a.shape, a.dtype.str) for n in names if (a := scope.get_array(n)) is not None]
    have = world.comm.bcast(have if world.rank == root else None, root=root)
    for name, shape, dtype in have:
        value = scope.get_array(name)
        if world.rank != root and (value is None or value.shape != shape or value.dtype.str != dtype
                                   or not value.flags.c_contiguous):
            value = np.empty(shape, np.dtype(dtype))
        bcast_inplace(value, root, f"broadcast of {name!r}")
        scope.set_array(name, value)
    if world.rank != root:  # each worker drops out its own units: its own dropout streams, derived from root's
        for name in dropout:
            if scope.get_array(name) is not None:
                scope.set_array(name, random_state.for_rank(scope.get_array(name), world.rank))
    return [n for n, _, _ in have]


def _dropout_states(program) -> set:
    """The random-state variables of the program's dropout ops (DP noise and other draws stay shared)."""
    return {n for block in program.blocks for op in block.ops if op.type == "dropout"
            for n in op.inputs.get("State", ())}


# ---- checkpoints ---------------------------------------------------------------------------------

def save_persistables(dirname, program=None, scope=None, root=0):
    """Rank `root` writes the checkpoint (fl.io.save_persistables); the others wait until it is written
    and raise if it failed."""
    from .. import io

    world = require("save_persistables")
    status, message = np.zeros(1, np.int8), ""
    if world.rank == root:
        try:
            io.save_persistables(dirname, program, scope)
        except Exception as exc:
            status[0], message = 1, f"{type(exc).__name__}: {exc}"
            if world.comm is None:
                raise
    bcast_inplace(status, root, "waiting for the checkpoint")
    if status[0]:
        if world.rank == root:
            raise DistributedError(f"rank {root} could not save {dirname!r}: {message}")
        raise DistributedError(f"rank {root} could not save the checkpoint {dirname!r}")


def load_persistables(dirname, program=None, scope=None, root=0) -> list:
    """Rank `root` reads the checkpoint, then every rank gets its values (broadcast_persistables), so
    only rank `root` needs the files."""
    from .. import io

    world = require("load_persistables")
    if world.rank == root:
        io.load_persistables(dirname, program, scope)
    return broadcast_persistables(program, scope, root)


__all__ = ["DistributedError", "DistributedOptimizer", "barrier", "broadcast_persistables", "check_same_program",
           "init", "load_persistables", "rank", "save_persistables", "world_size"]
