"""Building the gradient clip ops, and the accessors that read back what a build made.

`build_gradient_clip` returns a `ClipResult`; the optimizer uses it directly, and the program keeps it
(by variable names, in `program._clip_records`) for `global_norm_var`, `update_gate`,
`skipped_steps_var` and `gradient_norms`. Nothing is found again by scanning ops.
"""
from __future__ import annotations

from collections import OrderedDict

from ..framework import ROLE_GRAD_CLIP, Parameter, default_main_program, default_startup_program
from ._base import FOUND_NONFINITE, INF, SKIPPED_STEPS, ClipResult, GradientClipBase, _fresh, _number, _persistable


class _Build:
    """What the clips of one build share: the startup program, and the result being filled."""

    def __init__(self, startup):
        self.startup = startup
        self.groups = OrderedDict()
        self.skip_norms = []  # norms whose non-finiteness skips the step
        self.skip_flags = []  # bool [1] flags that skip the step


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


def _groups(clips):
    groups = OrderedDict()  # group key -> indices (per-parameter clips get their own key)
    for i, clip in enumerate(clips):
        if clip is not None:
            key = clip._group_key()
            groups.setdefault(("param", i) if key is None else key, []).append(i)
    for key, idxs in groups.items():
        configs = {(type(clips[i]), tuple(clips[i]._config().items())) for i in idxs}
        if len(configs) > 1:
            raise ValueError(f"gradient clip group {key[1]!r} mixes different clips: "
                             + "; ".join(sorted({repr(clips[i]) for i in idxs})))
    return groups


def build_gradient_clip(params_grads, grad_clip=None, startup_program=None) -> ClipResult:
    """Append the clip ops of every pair whose parameter has a clip (its own, else `grad_clip`) and
    need_clip; returns what was built. Parameters are not modified."""
    if grad_clip is not None and not isinstance(grad_clip, GradientClipBase):
        raise TypeError(f"grad_clip must be a GradientClip* object, got {grad_clip!r}")
    params_grads = list(params_grads)
    clips = _resolve(params_grads, grad_clip)
    groups = _groups(clips)
    if not groups:
        return ClipResult(params_grads)
    block = next(g for (_, g), c in zip(params_grads, clips) if c is not None).block
    build = _Build(startup_program or default_startup_program())
    out = list(params_grads)
    with block.program.role_guard(ROLE_GRAD_CLIP):
        for idxs in groups.values():
            clipped = clips[idxs[0]]._append(block, [params_grads[i] for i in idxs], build)
            for i, g in zip(idxs, clipped):
                out[i] = (params_grads[i][0], g)
        result = ClipResult(out, dict(build.groups))
        if build.skip_norms or build.skip_flags:
            result.skipped_steps = _persistable(block, build.startup, _fresh(block, SKIPPED_STEPS), (1,), "int64")
            found = _fresh(block, FOUND_NONFINITE)
            block.append_op("count_nonfinite", {"X": build.skip_norms, "Skip": build.skip_flags,
                                                "Count": result.skipped_steps},
                            {"Found": found, "CountOut": result.skipped_steps})
            result.skip = block.var(found)
    block.program._clip_records.append(result.to_record())
    return result


def append_gradient_clip_ops(params_grads):
    """Append the clip ops of every pair whose parameter has a clip and need_clip; returns the clipped pairs."""
    return build_gradient_clip(params_grads).params_grads


def _minimize_clip(params_grads, grad_clip, startup_program=None):
    """What `minimize(grad_clip=...)` does, as pairs (see build_gradient_clip)."""
    return build_gradient_clip(params_grads, grad_clip, startup_program).params_grads


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


def check_records(records, program) -> list:
    """Saved `program._clip_records` (from fl.io.load_program), checked: the shape `ClipResult.to_record`
    gives, every name a variable of `program`. Raises ValueError."""
    block = program.global_block()

    def name(v, what, optional=False):
        if not ((optional and v is None) or (isinstance(v, str) and block.has_var(v))):
            raise ValueError(f"{what} {v!r} is not a variable of the program")

    if not isinstance(records, list):
        raise ValueError("must be a list")
    for r in records:
        if (not isinstance(r, dict) or set(r) != {"groups", "outputs", "skip", "skipped_steps"}
                or not isinstance(r["groups"], dict) or not isinstance(r["outputs"], list)):
            raise ValueError(f"bad record {r!r:.200}")
        name(r["skip"], "skip", True)
        name(r["skipped_steps"], "skipped_steps", True)
        for n in r["outputs"]:
            name(n, "output")
        for g in r["groups"].values():
            if (not isinstance(g, dict) or set(g) != {"norm", "tensor_norms", "inputs", "outputs", "scale", "norm_type"}
                    or not isinstance(g["inputs"], list) or not isinstance(g["outputs"], list)):
                raise ValueError(f"bad group {g!r:.200}")
            for k in ("norm", "tensor_norms", "scale"):
                name(g[k], k)
            if not isinstance(g["norm_type"], str) or g["norm_type"] not in ("2.0", "inf"):
                raise ValueError(f"bad norm_type {g['norm_type']!r}")
            for n in g["inputs"] + g["outputs"]:
                name(n, "gradient")
    return records


# ---- reading back what was built ----------------------------------------------------------------

def _records(program):
    return (program or default_main_program())._clip_records


def global_norm_var(group_name="default_group", program=None):
    """The Variable holding a group's global norm (before clipping), fetchable every step, for
    GradientClipByGlobalNorm, AutoClip and ZScore groups; None if `program` (default: the main
    program) has no such group. The latest build wins."""
    program = program or default_main_program()
    for rec in reversed(_records(program)):
        if group_name in rec["groups"]:
            return program.global_block().var(rec["groups"][group_name]["norm"])
    return None


def skipped_steps_var(program=None):
    """The persistable int64 [1] counter of skipped steps (skip_nonfinite / skip_spikes), or None."""
    program = program or default_main_program()
    name = next((r["skipped_steps"] for r in reversed(_records(program)) if r["skipped_steps"]), None)
    return None if name is None else program.global_block().var(name)


def update_gate(params_grads):
    """The name of the bool [1] flag that is True when this step's update must be skipped, or None.

    `params_grads`: a `ClipResult`, or pairs holding gradients a clip build returned. The optimizer
    gives this name to each of its update ops (optional input `SkipUpdate`); an update op whose flag
    is True leaves its parameter and all its state (moments, beta powers...) unchanged."""
    if isinstance(params_grads, ClipResult):
        return None if params_grads.skip is None else params_grads.skip.name
    grads = [g for _, g in params_grads if g is not None]
    if not grads:
        return None
    names = {g.name for g in grads}
    for rec in reversed(grads[0].block.program._clip_records):
        if names & set(rec["outputs"]):
            return rec["skip"]
    return None


def gradient_norms(params_grads, norm_type=2.0) -> dict:
    """Parameter name -> a float32 [1] Variable holding the norm (L2, or max-abs for norm_type=inf) of
    the gradient in each pair, fetchable every step (role grad_clip).

    A gradient a global-norm-like group read (or wrote: a clipped one) takes its norm from the
    per-tensor norms that group's norm pass already made, so it is not read again; call this after
    `minimize` to get that. Other gradients are measured together in one more pass."""
    nt = _number("gradient_norms", "norm_type", norm_type)
    if nt not in (2.0, INF):
        raise ValueError(f"gradient_norms: norm_type must be 2 or float('inf'), got {norm_type!r}")
    pairs = [(p, g) for p, g in params_grads if g is not None]
    if not pairs:
        return {}
    block = pairs[0][1].block
    known = {}  # gradient name -> (tensor norms name, index, scale name or None)
    for rec in block.program._clip_records:  # later builds win
        for grp in rec["groups"].values():
            if float(grp["norm_type"]) == nt:
                known.update((n, (grp["tensor_norms"], i, None)) for i, n in enumerate(grp["inputs"]))
                known.update((n, (grp["tensor_norms"], i, grp["scale"])) for i, n in enumerate(grp["outputs"]))
    out = {}
    with block.program.role_guard(ROLE_GRAD_CLIP):
        rest = [g for _, g in pairs if g.name not in known]
        if rest:
            norms = _fresh(block, "gradient_norms@TENSOR_NORMS")
            block.append_op("global_norm", {"X": rest}, {"Out": _fresh(block, "gradient_norms@NORM"),
                                                         "TensorNorms": norms}, {"norm_type": nt})
            known.update((g.name, (norms, i, None)) for i, g in enumerate(rest))
        for p, g in pairs:
            tensor_norms, index, scale = known[g.name]
            name = _fresh(block, p.name + "@GRAD_NORM")
            inputs = {"TensorNorms": tensor_norms} if scale is None else {"TensorNorms": tensor_norms, "Scale": scale}
            block.append_op("pick_norm", inputs, {"Out": name}, {"index": index})
            out[p.name] = block.var(name)
    return out
