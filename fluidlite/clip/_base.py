"""What every clip shares: argument checks, names, the base classes and the result a build returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GLOBAL_NORM_SUFFIX = "@GLOBAL_NORM"
TENSOR_NORMS_SUFFIX = "@TENSOR_NORMS"
CLIP_SUFFIX = "@CLIP"
FOUND_NONFINITE = "clip@FOUND_NONFINITE"
SKIPPED_STEPS = "clip@SKIPPED_STEPS"
INF = float("inf")


def _number(owner, name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} is NaN")
    if positive and not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value}")
    return value


def _bounds(owner, max, min):
    hi = _number(owner, "max", max)
    lo = -hi if min is None else _number(owner, "min", min)
    if hi < lo:
        raise ValueError(f"{owner}: max ({hi}) < min ({lo})")
    return lo, hi


def _norm_type(owner, norm_type):
    nt = _number(owner, "norm_type", norm_type)
    if nt not in (2.0, INF):
        raise ValueError(f"{owner}: norm_type must be 2 or float('inf'), got {norm_type!r}")
    return nt


def _group_name(owner, group_name):
    if not isinstance(group_name, str) or not group_name:
        raise TypeError(f"{owner}: group_name must be a non-empty str, got {group_name!r}")
    return group_name


def _fresh(block, name):
    """`name`, or `name@k` if the block already has that variable."""
    k, fresh = 0, name
    while block.has_var(fresh):
        k += 1
        fresh = f"{name}@{k}"
    return fresh


def _persistable(block, startup, name, shape, dtype, value=0.0):
    """A persistable var in `block`, initialised to `value` by an op in `startup`."""
    var = block.create_var(name=name, shape=shape, dtype=dtype, persistable=True, stop_gradient=True)
    sblock = startup.global_block()
    sblock.create_var(name=name, shape=shape, dtype=dtype, persistable=True)
    sblock.append_op("fill_constant", {}, {"Out": name}, {"shape": list(shape), "dtype": dtype, "value": value})
    return var


class Savable:
    """A clip object that `fl.io.save_program` stores as its constructor arguments: `_ARGS` names them,
    each kept as an attribute of that name, so `type(obj)(**obj._config())` rebuilds it."""

    _ARGS = ()

    def _config(self) -> dict:
        return {a: getattr(self, a) for a in self._ARGS}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._config().items())})"


class BaseErrorClip(Savable):
    """An error clip: appends ops that clip a gradient in place (same variable name)."""

    def _append_clip_op(self, block, grad_name):
        raise NotImplementedError


class GradientClipBase(Savable):
    """A gradient clip. Per-parameter clips clip each gradient alone; group clips (`_group_key` not
    None) clip all gradients sharing a key together and must agree on `_config()`."""

    def _group_key(self):
        return None

    def _append(self, block, pairs, build) -> list:
        """Append this clip's ops for `pairs` (recording what it made in `build`, a `_Build`);
        returns the clipped gradient Variables."""
        raise NotImplementedError

    def _each(self, block, pairs, op_type, attrs, with_param=False):
        outs = []
        for p, g in pairs:
            out = _fresh(block, g.name + CLIP_SUFFIX)
            inputs = {"Param": p, "X": g} if with_param else {"X": g}
            block.append_op(op_type, inputs, {"Out": out}, attrs)
            outs.append(block.var(out))
        return outs


@dataclass
class ClipGroup:
    """One norm-clipped group: its norm (before clipping), the per-tensor norms from the same pass,
    the gradients it read and wrote, and the scale it applied ([1], in the gradients' dtype)."""

    norm: object
    tensor_norms: object
    inputs: list
    outputs: list
    scale: object
    norm_type: float

    def to_record(self) -> dict:
        return {"norm": self.norm.name, "tensor_norms": self.tensor_norms.name, "inputs": [v.name for v in self.inputs],
                "outputs": [v.name for v in self.outputs], "scale": self.scale.name,
                "norm_type": str(float(self.norm_type))}  # "2.0" or "inf": strict JSON


@dataclass
class ClipResult:
    """What one gradient-clip build made (`fluidlite.clip.build_gradient_clip`).

    - `params_grads`: the pairs with the clipped gradients (unclipped pairs as given)
    - `groups`: group name -> `ClipGroup` for every global-norm-like group
    - `skip`: the bool [1] flag that is True when this step's update must be skipped, or None
    - `skipped_steps`: the persistable int64 [1] count of skipped steps, or None"""

    params_grads: list
    groups: dict = field(default_factory=dict)
    skip: object = None
    skipped_steps: object = None

    @property
    def norms(self) -> dict:
        """group name -> the group's norm Variable (before clipping)."""
        return {k: g.norm for k, g in self.groups.items()}

    def to_record(self) -> dict:
        """The same, by variable names (kept in the program, saved with it, copied by clone)."""
        return {"groups": {k: g.to_record() for k, g in self.groups.items()},
                "outputs": [g.name for _, g in self.params_grads if g is not None],
                "skip": None if self.skip is None else self.skip.name,
                "skipped_steps": None if self.skipped_steps is None else self.skipped_steps.name}
