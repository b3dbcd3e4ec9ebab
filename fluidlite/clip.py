"""Error clipping (during backward) and gradient clipping (between backward and the update).

- Error clip: `var.error_clip = ErrorClipByValue(...)` plus `append_backward(..., callback=error_clip_callback)`
  clips d(loss)/d(var) in place (same name) right after the op that completes it.
- Gradient clip: a clip per parameter (`ParamAttr(gradient_clip=...)`, `set_gradient_clip`) or the
  `grad_clip` given to `minimize`; `append_gradient_clip_ops` appends the ops (role grad_clip) and
  returns the pairs holding the clipped gradients, named `<grad>@CLIP`.
- Each global-norm group's norm (before clipping) is the Variable `global_norm_var(group_name)`.
- `skip_nonfinite=True` on a global-norm clip: see `update_gate` and docs/clipping.md.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from .framework import ROLE_ERROR_CLIP, ROLE_GRAD_CLIP, Parameter, default_main_program, default_startup_program

GLOBAL_NORM_SUFFIX = "@GLOBAL_NORM"
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


def _fresh(block, name):
    """`name`, or `name@k` if the block already has that variable."""
    k, fresh = 0, name
    while block.has_var(fresh):
        k += 1
        fresh = f"{name}@{k}"
    return fresh


# ---- error clipping ---------------------------------------------------------------------------

class BaseErrorClip:
    """An error clip: appends ops that clip a gradient in place (same variable name)."""

    def _append_clip_op(self, block, grad_name):
        raise NotImplementedError


class ErrorClipByValue(BaseErrorClip):
    """Clip a variable's gradient to [min, max] during backward (`min` defaults to -max)."""

    def __init__(self, max, min=None):
        self.min, self.max = _bounds("ErrorClipByValue", max, min)

    def _append_clip_op(self, block, grad_name):
        block.append_op("clip", {"X": grad_name}, {"Out": grad_name}, {"min": self.min, "max": self.max})

    def __repr__(self):
        return f"ErrorClipByValue(max={self.max}, min={self.min})"


def error_clip_callback(block, context):
    """Backward callback: clip each gradient the just-appended op completed whose variable has an error_clip."""
    for grad_name in context.completed:
        var = block._find_var(context.grad_to_var.get(grad_name, ""))
        clip = getattr(var, "error_clip", None)
        if clip is None:
            continue
        if not isinstance(clip, BaseErrorClip):
            raise TypeError(f"variable {var.name!r}: error_clip must be an ErrorClipByValue (a BaseErrorClip), "
                            f"got {clip!r}")
        with block.program._role_guard(ROLE_ERROR_CLIP):
            clip._append_clip_op(block, grad_name)


# ---- gradient clipping ------------------------------------------------------------------------

class GradientClipBase:
    """A gradient clip. Per-parameter clips clip each gradient alone; group clips (`_group_key` not
    None) clip all gradients sharing a key together and must agree on `_settings()`."""

    def _group_key(self):
        return None

    def _settings(self):
        return ()

    def _append(self, block, pairs, state) -> list:
        """Append this clip's ops for `pairs`; returns the clipped gradient Variables."""
        raise NotImplementedError

    def _each(self, block, pairs, op_type, attrs, with_param=False):
        outs = []
        for p, g in pairs:
            out = _fresh(block, g.name + CLIP_SUFFIX)
            inputs = {"Param": p, "X": g} if with_param else {"X": g}
            block.append_op(op_type, inputs, {"Out": out}, attrs)
            outs.append(block.var(out))
        return outs


class GradientClipByValue(GradientClipBase):
    """g <- clip(g, min, max); `min` defaults to -max. NaN stays NaN, +-Inf saturate."""

    def __init__(self, max, min=None):
        self.min, self.max = _bounds("GradientClipByValue", max, min)

    def _append(self, block, pairs, state):
        return self._each(block, pairs, "clip", {"min": self.min, "max": self.max})

    def __repr__(self):
        return f"GradientClipByValue(max={self.max}, min={self.min})"


class GradientClipByNorm(GradientClipBase):
    """g <- g * clip_norm / max(norm(g), clip_norm) per gradient (L2, or max-abs with norm_type=inf)."""

    def __init__(self, clip_norm, norm_type=2):
        self.clip_norm = _number("GradientClipByNorm", "clip_norm", clip_norm, positive=True)
        self.norm_type = _norm_type("GradientClipByNorm", norm_type)

    def _append(self, block, pairs, state):
        return self._each(block, pairs, "clip_by_norm", {"max_norm": self.clip_norm, "norm_type": self.norm_type})

    def __repr__(self):
        return f"GradientClipByNorm(clip_norm={self.clip_norm}, norm_type={self.norm_type})"


class GradientClipByGlobalNorm(GradientClipBase):
    """Every gradient of a group: g <- g * clip_norm / max(global_norm, clip_norm), where global_norm is
    sqrt(sum of sum(g**2)) over the group (or the max |g| with norm_type=inf).

    A non-finite global norm makes the group's gradients NaN; with `skip_nonfinite=True` they become
    zeros instead, the step is counted in `skipped_steps_var()` and `update_gate` tells the optimizer
    to leave parameters and optimizer state untouched for that step."""

    def __init__(self, clip_norm, group_name="default_group", norm_type=2, skip_nonfinite=False):
        self.clip_norm = _number("GradientClipByGlobalNorm", "clip_norm", clip_norm, positive=True)
        if not isinstance(group_name, str) or not group_name:
            raise TypeError(f"GradientClipByGlobalNorm: group_name must be a non-empty str, got {group_name!r}")
        self.group_name = group_name
        self.norm_type = _norm_type("GradientClipByGlobalNorm", norm_type)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.global_norm = None  # the norm Variable of the last program this clip was built into

    def _group_key(self):
        return ("global_norm", self.group_name)

    def _settings(self):
        return (("clip_norm", self.clip_norm), ("norm_type", self.norm_type), ("skip_nonfinite", self.skip_nonfinite))

    def _norm(self, block, grads):
        norm = _fresh(block, self.group_name + GLOBAL_NORM_SUFFIX)
        block.append_op("global_norm", {"X": grads}, {"Out": norm}, {"norm_type": self.norm_type,
                                                                     "group": self.group_name})
        self.global_norm = block.var(norm)
        return self.global_norm

    def _append(self, block, pairs, state):
        grads = [g for _, g in pairs]
        norm = self._norm(block, grads)
        if self.skip_nonfinite:
            state.setdefault("skip_norms", []).append(norm)
        outs = [_fresh(block, g.name + CLIP_SUFFIX) for g in grads]
        block.append_op("scale_by_global_norm", {"X": grads, "GlobalNorm": norm}, {"Out": outs},
                        {"clip_norm": self.clip_norm, "nonfinite": "zero" if self.skip_nonfinite else "nan"})
        return [block.var(o) for o in outs]

    def __repr__(self):
        return (f"GradientClipByGlobalNorm(clip_norm={self.clip_norm}, group_name={self.group_name!r}, "
                f"norm_type={self.norm_type}, skip_nonfinite={self.skip_nonfinite})")


def _resolve(params_grads, default):
    """The clip that applies to each pair (None: not clipped)."""
    clips = []
    for p, g in params_grads:
        clip = getattr(p, "gradient_clip_attr", None)
        if clip is None:
            clip = default
        if g is None or clip is None or not getattr(p, "need_clip", True):
            clips.append(None)
            continue
        if not isinstance(clip, GradientClipBase):
            raise TypeError(f"parameter {p.name!r}: gradient clip must be a GradientClip* object, got {clip!r}")
        clips.append(clip)
    return clips


def _append_clip_ops(params_grads, default=None, startup_program=None):
    params_grads = list(params_grads)
    clips = _resolve(params_grads, default)
    groups = OrderedDict()  # group key -> indices (per-parameter clips get their own key)
    for i, clip in enumerate(clips):
        if clip is not None:
            key = clip._group_key()
            groups.setdefault(("param", i) if key is None else key, []).append(i)
    for key, idxs in groups.items():
        settings = {clips[i]._settings() for i in idxs}
        kinds = {type(clips[i]) for i in idxs}
        if len(settings) > 1 or len(kinds) > 1:
            raise ValueError(f"gradient clip group {key[1]!r} mixes different clips: "
                             + "; ".join(sorted({repr(clips[i]) for i in idxs})))
    if not groups:
        return params_grads
    block = next(g for (_, g), c in zip(params_grads, clips) if c is not None).block
    state = {"startup": startup_program or default_startup_program()}
    out = list(params_grads)
    with block.program._role_guard(ROLE_GRAD_CLIP):
        for idxs in groups.values():
            clipped = clips[idxs[0]]._append(block, [params_grads[i] for i in idxs], state)
            for i, g in zip(idxs, clipped):
                out[i] = (params_grads[i][0], g)
        if state.get("skip_norms"):
            _append_skip_counter(block, state["skip_norms"], state["startup"])
    return out


def _persistable(block, startup, name, shape, dtype, value=0.0):
    """A persistable var in `block`, initialised to `value` by an op in `startup`."""
    var = block.create_var(name=name, shape=shape, dtype=dtype, persistable=True, stop_gradient=True)
    sblock = startup.global_block()
    sblock.create_var(name=name, shape=shape, dtype=dtype, persistable=True)
    sblock.append_op("fill_constant", {}, {"Out": name}, {"shape": list(shape), "dtype": dtype, "value": value})
    return var


def _append_skip_counter(block, norms, startup):
    counter = _persistable(block, startup, _fresh(block, SKIPPED_STEPS), (1,), "int64")
    found = _fresh(block, FOUND_NONFINITE)
    block.append_op("count_nonfinite", {"X": norms, "Count": counter}, {"Found": found, "CountOut": counter})


def append_gradient_clip_ops(params_grads):
    """Append the clip ops of every pair whose parameter has a clip and need_clip; returns the clipped pairs."""
    return _append_clip_ops(params_grads)


def _minimize_clip(params_grads, grad_clip, startup_program=None):
    """What `minimize(grad_clip=...)` does: `grad_clip` applies to parameters without a clip of their own
    (resolved per call; parameters are not modified); returns the clipped pairs."""
    if grad_clip is not None and not isinstance(grad_clip, GradientClipBase):
        raise TypeError(f"grad_clip must be a GradientClip* object, got {grad_clip!r}")
    return _append_clip_ops(params_grads, grad_clip, startup_program)


def set_gradient_clip(clip, param_list=None, program=None):
    """Attach `clip` to the given parameters (Parameters or names; default: every trainable one of `program`)."""
    if not isinstance(clip, GradientClipBase):
        raise TypeError(f"set_gradient_clip: clip must be a GradientClip* object, got {clip!r}")
    program = program or default_main_program()
    block = program.global_block()
    if param_list is None:
        params = [p for p in program.all_parameters() if p.trainable]
    else:
        params = [block.var(p) if isinstance(p, str) else p for p in param_list]
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"set_gradient_clip: {p!r} is not a Parameter")
        p.gradient_clip_attr = clip


# ---- observing ----------------------------------------------------------------------------------

def _find_op_output(program, op_type, slot, match):
    block = (program or default_main_program()).global_block()
    for op in reversed(block.ops):
        if op.type == op_type and match(op):
            return block.var(op.output(slot)[0])
    return None


def global_norm_var(group_name="default_group", program=None):
    """The Variable holding a global-norm group's norm (before clipping), fetchable every step; None if
    `program` (default: the main program) has no such group. The latest one wins."""
    return _find_op_output(program, "global_norm", "Out",
                           lambda op: op.role == ROLE_GRAD_CLIP and op.attrs.get("group") == group_name)


def skipped_steps_var(program=None):
    """The persistable int64 [1] counter of steps skipped for a non-finite gradient (skip_nonfinite=True)."""
    return _find_op_output(program, "count_nonfinite", "CountOut", lambda op: True)


def update_gate(params_grads):
    """The name of the bool [1] flag that is True when this step's update must be skipped, or None.

    The optimizer gives this name to each of its update ops (optional input `SkipUpdate`); an update
    op whose flag is True leaves its parameter and all its state (moments, beta powers...) unchanged."""
    norms = set()
    for _, g in params_grads:
        op = getattr(g, "op", None)
        if op is not None and op.type == "scale_by_global_norm" and op.attrs["nonfinite"] == "zero":
            norms.update(op.input("GlobalNorm"))
    if not norms:
        return None
    block = next(g for _, g in params_grads if g is not None).block
    for op in reversed(block.ops):
        if op.type == "count_nonfinite" and norms & set(op.input("X")):
            return op.output("Found")[0]
    return None


from .clip_extra import GradientClipAdaptive, GradientClipAutoClip  # noqa: E402


def __getattr__(name):
    # DP-SGD's clip lives in fluidlite.privacy (which imports this module), so it is looked up lazily
    if name in ("GradientClipPerExample", "per_example_norm_var"):
        from . import privacy

        return getattr(privacy, name)
    raise AttributeError(f"module 'fluidlite.clip' has no attribute {name!r}")

__all__ = [
    "BaseErrorClip", "ErrorClipByValue", "error_clip_callback", "GradientClipBase", "GradientClipByValue",
    "GradientClipByNorm", "GradientClipByGlobalNorm", "GradientClipAdaptive", "GradientClipAutoClip",
    "set_gradient_clip", "append_gradient_clip_ops", "global_norm_var", "skipped_steps_var", "update_gate",
    "GradientClipPerExample", "per_example_norm_var",
]
