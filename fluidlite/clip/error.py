"""Error clipping and error norms: backward callbacks acting on d(loss)/d(hidden variable).

`error_clip_callback` clips a variable's complete gradient in place (role `error_clip`) right after
the op that completes it. `error_norm_callback` records that gradient's L2 norm in
`norm_var_name(var)`. Combined, the order of the callback list decides what the norm sees:
`[error_clip_callback, error_norm_callback]` records the norm *after* the clip (what the ops below
receive), `[error_norm_callback, error_clip_callback]` the norm *before* it (what arrived).
"""
from __future__ import annotations

from ..framework import ROLE_ERROR_CLIP, Parameter, default_main_program
from ._base import BaseErrorClip, _bounds

NORM_SUFFIX = "@GRAD@NORM"


class ErrorClipByValue(BaseErrorClip):
    """Clip a variable's gradient to [min, max] during backward (`min` defaults to -max)."""

    _ARGS = ("max", "min")

    def __init__(self, max, min=None):
        self.min, self.max = _bounds("ErrorClipByValue", max, min)

    def _append_clip_op(self, block, grad_name):
        block.append_op("clip", {"X": grad_name}, {"Out": grad_name}, {"min": self.min, "max": self.max})


def _completed_vars(block, context):
    """(forward variable, gradient name) for each gradient the just-appended op completed."""
    for grad_name in context.completed:
        var = block._find_var(context.grad_to_var.get(grad_name, ""))
        if var is not None:
            yield var, grad_name


def error_clip_callback(block, context):
    """Backward callback: clip each gradient the just-appended op completed whose variable has an error_clip."""
    for var, grad_name in _completed_vars(block, context):
        clip = var.error_clip
        if clip is None:
            continue
        if not isinstance(clip, BaseErrorClip):
            raise TypeError(f"variable {var.name!r}: error_clip must be an ErrorClipByValue (a BaseErrorClip), "
                            f"got {clip!r}")
        with block.program.role_guard(ROLE_ERROR_CLIP):
            clip._append_clip_op(block, grad_name)


def norm_var_name(var_name) -> str:
    """The name of the variable `error_norm_callback` writes the norm of `var_name`'s gradient to."""
    return f"{getattr(var_name, 'name', var_name)}{NORM_SUFFIX}"


def _hidden(var):
    return not isinstance(var, Parameter) and not var.is_data


def error_norm_callback(block, context):
    """Backward callback: for each hidden (non-parameter, non-data) variable whose complete gradient the
    just-appended op produced, append an op writing that gradient's L2 norm to `norm_var_name(var)`
    (shape [1], the gradient's dtype; role of the op it follows, `backward`)."""
    for var, grad_name in _completed_vars(block, context):
        if _hidden(var) and not block.has_var(norm_var_name(var.name)):
            block.append_op("global_norm", {"X": grad_name}, {"Out": norm_var_name(var.name)})


def error_norm_vars(program=None) -> list:
    """The Variables `error_norm_callback` made in `program` (default: the main program), in the order
    backward produced them: from the loss toward the inputs."""
    block = (program or default_main_program()).global_block()
    out = []
    for name, v in block.vars.items():  # creation order
        base = block.vars.get(name[:-len(NORM_SUFFIX)]) if name.endswith(NORM_SUFFIX) else None
        if base is not None and _hidden(base):
            out.append(v)
    return out
