"""Gradient clips: by value, by norm, by global norm, adaptive (AGC) and AutoClip."""
from __future__ import annotations

from ._base import (
    CLIP_SUFFIX, GLOBAL_NORM_SUFFIX, TENSOR_NORMS_SUFFIX, ClipGroup, GradientClipBase, _bounds, _fresh, _group_name,
    _norm_type, _number, _persistable,
)


class GradientClipByValue(GradientClipBase):
    """g <- clip(g, min, max); `min` defaults to -max. NaN stays NaN, +-Inf saturate."""

    _ARGS = ("max", "min")

    def __init__(self, max, min=None):
        self.min, self.max = _bounds("GradientClipByValue", max, min)

    def _append(self, block, pairs, build):
        return self._each(block, pairs, "clip", {"min": self.min, "max": self.max})


class GradientClipByNorm(GradientClipBase):
    """g <- g * clip_norm / max(norm(g), clip_norm) per gradient (L2, or max-abs with norm_type=inf)."""

    _ARGS = ("clip_norm", "norm_type")

    def __init__(self, clip_norm, norm_type=2):
        self.clip_norm = _number("GradientClipByNorm", "clip_norm", clip_norm, positive=True)
        self.norm_type = _norm_type("GradientClipByNorm", norm_type)

    def _append(self, block, pairs, build):
        return self._each(block, pairs, "clip_by_norm", {"max_norm": self.clip_norm, "norm_type": self.norm_type})


class GroupClip(GradientClipBase):
    """A clip that scales a whole group by one factor computed from the group's norm. Subclasses set
    `group_name` and `norm_type` and implement `_threshold`."""

    def _group_key(self):
        return ("group", self.group_name)  # one name, one clip: two kinds under one name raise

    def _threshold(self, block, norm, build):
        """-> (ClipNorm Variable or None for the `clip_norm` attribute, attrs of scale_by_global_norm)."""
        raise NotImplementedError

    def _append(self, block, pairs, build):
        grads = [g for _, g in pairs]
        norm = _fresh(block, self.group_name + GLOBAL_NORM_SUFFIX)
        tensor_norms = _fresh(block, self.group_name + TENSOR_NORMS_SUFFIX)
        block.append_op("global_norm", {"X": grads}, {"Out": norm, "TensorNorms": tensor_norms},
                        {"norm_type": self.norm_type, "group": self.group_name})
        norm = block.var(norm)
        clip_norm, attrs = self._threshold(block, norm, build)
        outs = [_fresh(block, g.name + CLIP_SUFFIX) for g in grads]
        scale = _fresh(block, self.group_name + "@SCALE")
        inputs = {"X": grads, "GlobalNorm": norm}
        if clip_norm is not None:
            inputs["ClipNorm"] = clip_norm
        block.append_op("scale_by_global_norm", inputs, {"Out": outs, "Scale": scale}, attrs)
        outs = [block.var(o) for o in outs]
        build.groups[self.group_name] = ClipGroup(norm, block.var(tensor_norms), grads, outs, block.var(scale),
                                                  self.norm_type)
        return outs


class GradientClipByGlobalNorm(GroupClip):
    """Every gradient of a group: g <- g * clip_norm / max(global_norm, clip_norm), where global_norm is
    sqrt(sum of sum(g**2)) over the group (or the max |g| with norm_type=inf).

    A non-finite global norm makes the group's gradients NaN; with `skip_nonfinite=True` they become
    zeros instead, the step is counted in `skipped_steps_var()` and `update_gate` tells the optimizer
    to leave parameters and optimizer state untouched for that step."""

    _ARGS = ("clip_norm", "group_name", "norm_type", "skip_nonfinite")

    def __init__(self, clip_norm, group_name="default_group", norm_type=2, skip_nonfinite=False):
        self.clip_norm = _number("GradientClipByGlobalNorm", "clip_norm", clip_norm, positive=True)
        self.group_name = _group_name("GradientClipByGlobalNorm", group_name)
        self.norm_type = _norm_type("GradientClipByGlobalNorm", norm_type)
        self.skip_nonfinite = bool(skip_nonfinite)

    def _threshold(self, block, norm, build):
        if self.skip_nonfinite:
            build.skip_norms.append(norm)
        return None, {"clip_norm": self.clip_norm, "nonfinite": "zero" if self.skip_nonfinite else "nan"}


class GradientClipAdaptive(GradientClipBase):
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise: each unit u (a column of an (in, out)
    weight, an element of a vector) gets g_u <- g_u * clipping * max(|w_u|, eps) / |g_u| when |g_u| is
    larger than that. A non-finite unit norm makes the whole gradient NaN."""

    _ARGS = ("clipping", "eps")

    def __init__(self, clipping=0.01, eps=1e-3):
        self.clipping = _number("GradientClipAdaptive", "clipping", clipping, positive=True)
        self.eps = _number("GradientClipAdaptive", "eps", eps, positive=True)

    def _append(self, block, pairs, build):
        return self._each(block, pairs, "adaptive_clip", {"clipping": self.clipping, "eps": self.eps},
                          with_param=True)


class GradientClipAutoClip(GroupClip):
    """AutoClip (Seetharaman et al. 2020): a global-norm clip whose clip_norm is the `percentile` of
    every global norm observed so far, the current one included. The history is a persistable ring
    buffer `<group>@AUTOCLIP_HISTORY` of `history_size` norms plus a counter `<group>@AUTOCLIP_COUNT`,
    so it survives a checkpoint; the threshold used this step is `<group>@AUTOCLIP_NORM`."""

    _ARGS = ("percentile", "history_size", "group_name", "norm_type")

    def __init__(self, percentile=10, history_size=10000, group_name="autoclip", norm_type=2):
        p = _number("GradientClipAutoClip", "percentile", percentile)
        if not 0 <= p <= 100:
            raise ValueError(f"GradientClipAutoClip: percentile must be in [0, 100], got {percentile}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"GradientClipAutoClip: history_size must be a positive int, got {history_size!r}")
        self.percentile, self.history_size = p, history_size
        self.group_name = _group_name("GradientClipAutoClip", group_name)
        self.norm_type = _norm_type("GradientClipAutoClip", norm_type)

    def _threshold(self, block, norm, build):
        prefix = self.group_name + "@AUTOCLIP"
        history = _persistable(block, build.startup, _fresh(block, prefix + "_HISTORY"), (self.history_size,),
                               norm.dtype.name)
        count = _persistable(block, build.startup, _fresh(block, prefix + "_COUNT"), (1,), "int64")
        threshold = _fresh(block, prefix + "_NORM")
        block.append_op("autoclip_threshold", {"Norm": norm, "History": history, "Count": count},
                        {"ClipNorm": threshold, "HistoryOut": history, "CountOut": count},
                        {"percentile": self.percentile})
        return block.var(threshold), {}
