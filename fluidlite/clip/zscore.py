"""ZClip (Kumar et al. 2025): clip a group's global norm at a z-score threshold learned online."""
from __future__ import annotations

import math

from ._base import _fresh, _group_name, _number, _persistable
from .gradient import GroupClip


class GradientClipZScore(GroupClip):
    """ZClip on a group's global L2 norm g (SPEC §9).

    - The first `warmup_steps` steps pass unchanged; their norms are recorded. At the end of warm-up
      mu = their mean, var = their biased variance.
    - Afterwards, with sigma = sqrt(var) and z = (g - mu) / sigma: if sigma > 0 and z > z_thresh the
      group is scaled so that its norm becomes g_c = mu + (z_thresh**2 / z) * sigma, otherwise
      g_c = g; then mu <- alpha * mu + (1 - alpha) * g_c and var <- alpha * var + (1 - alpha) *
      (g_c - mu)**2, with the mu just updated.
    - `skip_spikes=True`: a spike skips the whole update instead (parameters and optimizer state stay,
      the step is counted in `skipped_steps_var`); the statistics still take g_c, as when scaling.
    - A non-finite g leaves the state untouched and makes the group NaN (zeros and a skipped step with
      `skip_spikes=True`).

    State, all persistable (a checkpoint resumes it exactly): `<group>@ZCLIP_MU`, `@ZCLIP_VAR`
    (float64 [1]), `@ZCLIP_STEP` (int64 [1], finite norms seen) and `@ZCLIP_WARMUP` (float64
    [warmup_steps]). `<group>@ZCLIP_SPIKE` (bool [1]) says whether this step was a spike."""

    _ARGS = ("alpha", "z_thresh", "warmup_steps", "group_name", "skip_spikes")
    norm_type = 2.0

    def __init__(self, alpha=0.97, z_thresh=2.5, warmup_steps=25, group_name="default_group", skip_spikes=False):
        owner = "GradientClipZScore"
        self.alpha = _number(owner, "alpha", alpha)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"{owner}: alpha must be in (0, 1), got {alpha!r}")
        self.z_thresh = _number(owner, "z_thresh", z_thresh, positive=True)
        if math.isinf(self.z_thresh):
            raise ValueError(f"{owner}: z_thresh must be finite, got {z_thresh!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"{owner}: warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.group_name = _group_name(owner, group_name)
        self.skip_spikes = bool(skip_spikes)

    def _threshold(self, block, norm, build):
        prefix = self.group_name + "@ZCLIP"
        state = {}
        for slot, suffix, shape, dtype in (("Mu", "_MU", (1,), "float64"), ("Var", "_VAR", (1,), "float64"),
                                           ("Step", "_STEP", (1,), "int64"),
                                           ("Warmup", "_WARMUP", (self.warmup_steps,), "float64")):
            state[slot] = _persistable(block, build.startup, _fresh(block, prefix + suffix), shape, dtype)
        clip_norm, spike = _fresh(block, prefix + "_NORM"), _fresh(block, prefix + "_SPIKE")
        block.append_op("zclip_threshold", {"Norm": norm, **state},
                        {"ClipNorm": clip_norm, "Spike": spike, **{k + "Out": v for k, v in state.items()}},
                        {"alpha": self.alpha, "z_thresh": self.z_thresh, "skip_spikes": self.skip_spikes})
        if self.skip_spikes:
            build.skip_flags.append(block.var(spike))
        return block.var(clip_norm), {"nonfinite": "zero" if self.skip_spikes else "nan"}
