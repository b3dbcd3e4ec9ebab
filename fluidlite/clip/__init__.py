"""Error clipping (during backward) and gradient clipping (between backward and the update).

- Error clip: `var.error_clip = ErrorClipByValue(...)` plus `append_backward(..., callback=error_clip_callback)`
  clips d(loss)/d(var) in place (same name) right after the op that completes it;
  `error_norm_callback` records that gradient's norm (`error_norm_vars`).
- Gradient clip: a clip per parameter (`ParamAttr(gradient_clip=...)`, `set_gradient_clip`) or the
  `grad_clip` given to `minimize`; `build_gradient_clip` appends the ops (role grad_clip) and returns a
  `ClipResult` (the pairs holding the clipped gradients, named `<grad>@CLIP`, the norm of each group,
  the skip flag); `append_gradient_clip_ops` returns just the pairs.
- Each global-norm group's norm (before clipping) is `global_norm_var(group_name)`; per-parameter
  gradient norms: `gradient_norms(params_grads)`.
- Skipping a step: `skip_nonfinite=True` (global norm) or `skip_spikes=True` (ZScore), see `update_gate`.

Modules: `_base` (checks, base classes, ClipResult), `error`, `gradient` (value, norm, global norm,
AGC, AutoClip), `zscore` (ZClip), `build` (building and reading back). See docs/clipping.md.
"""
from ._base import (  # noqa: F401
    CLIP_SUFFIX, FOUND_NONFINITE, GLOBAL_NORM_SUFFIX, SKIPPED_STEPS, BaseErrorClip, ClipGroup, ClipResult,
    GradientClipBase,
)
from .build import (  # noqa: F401
    _minimize_clip, append_gradient_clip_ops, build_gradient_clip, check_records, global_norm_var, gradient_norms,
    set_gradient_clip, skipped_steps_var, update_gate,
)
from .error import ErrorClipByValue, error_clip_callback, error_norm_callback, error_norm_vars, norm_var_name
from .gradient import (
    GradientClipAdaptive, GradientClipAutoClip, GradientClipByGlobalNorm, GradientClipByNorm, GradientClipByValue,
)
from .zscore import GradientClipZScore

# The public classes are known by their public name, fluidlite.clip.<name>, wherever they are
# defined: that is how fl.io saves them (fluidlite.io_objects.ALLOWED lists which it rebuilds).
for _cls in (BaseErrorClip, GradientClipBase, ErrorClipByValue, GradientClipByValue, GradientClipByNorm,
             GradientClipByGlobalNorm, GradientClipAdaptive, GradientClipAutoClip, GradientClipZScore):
    _cls.__module__ = __name__



def __getattr__(name):
    # DP-SGD's clip lives in fluidlite.privacy (which imports this package), so it is looked up lazily;
    # it works only as minimize(grad_clip=...), so it is not among the per-parameter clips of __all__
    if name in ("GradientClipPerExample", "per_example_norm_var"):
        from .. import privacy

        return getattr(privacy, name)
    raise AttributeError(f"module 'fluidlite.clip' has no attribute {name!r}")


__all__ = [
    "BaseErrorClip", "ClipGroup", "ClipResult", "ErrorClipByValue", "GradientClipAdaptive", "GradientClipAutoClip",
    "GradientClipBase", "GradientClipByGlobalNorm", "GradientClipByNorm", "GradientClipByValue",
    "GradientClipZScore", "append_gradient_clip_ops", "build_gradient_clip",
    "error_clip_callback", "error_norm_callback", "error_norm_vars", "global_norm_var", "gradient_norms",
    "norm_var_name", "set_gradient_clip", "skipped_steps_var", "update_gate",
]
