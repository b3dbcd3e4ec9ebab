"""Clips beyond the classic three: adaptive gradient clipping (AGC) and AutoClip (see fluidlite.clip)."""
from __future__ import annotations

from .clip import CLIP_SUFFIX, GradientClipByGlobalNorm, GradientClipBase, _fresh, _number, _persistable


class GradientClipAdaptive(GradientClipBase):
    """Adaptive gradient clipping (Brock et al. 2021), unit-wise: each unit u (a column of an (in, out)
    weight, an element of a vector) gets g_u <- g_u * clipping * max(|w_u|, eps) / |g_u| when |g_u| is
    larger than that. A non-finite unit norm makes the whole gradient NaN."""

    def __init__(self, clipping=0.01, eps=1e-3):
        self.clipping = _number("GradientClipAdaptive", "clipping", clipping, positive=True)
        self.eps = _number("GradientClipAdaptive", "eps", eps, positive=True)

    def _append(self, block, pairs, state):
        return self._each(block, pairs, "adaptive_clip", {"clipping": self.clipping, "eps": self.eps},
                          with_param=True)

    def __repr__(self):
        return f"GradientClipAdaptive(clipping={self.clipping}, eps={self.eps})"


class GradientClipAutoClip(GradientClipByGlobalNorm):
    """AutoClip (Seetharaman et al. 2020): a global-norm clip whose clip_norm is the `percentile` of
    every global norm observed so far, the current one included. The history is a persistable ring
    buffer `<group>@AUTOCLIP_HISTORY` of `history_size` norms plus a counter `<group>@AUTOCLIP_COUNT`,
    so it survives a checkpoint; the threshold used this step is `<group>@AUTOCLIP_NORM`."""

    def __init__(self, percentile=10, history_size=10000, group_name="autoclip", norm_type=2):
        p = _number("GradientClipAutoClip", "percentile", percentile)
        if not 0 <= p <= 100:
            raise ValueError(f"GradientClipAutoClip: percentile must be in [0, 100], got {percentile}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"GradientClipAutoClip: history_size must be a positive int, got {history_size!r}")
        super().__init__(1.0, group_name, norm_type)
        self.percentile, self.history_size = p, history_size

    def _group_key(self):
        return ("autoclip", self.group_name)

    def _settings(self):
        return (("percentile", self.percentile), ("history_size", self.history_size), ("norm_type", self.norm_type))

    def _append(self, block, pairs, state):
        grads = [g for _, g in pairs]
        dtype = grads[0].dtype.name
        norm = self._norm(block, grads)
        prefix = self.group_name + "@AUTOCLIP"
        history = _persistable(block, state["startup"], _fresh(block, prefix + "_HISTORY"), (self.history_size,), dtype)
        count = _persistable(block, state["startup"], _fresh(block, prefix + "_COUNT"), (1,), "int64")
        threshold = _fresh(block, prefix + "_NORM")
        block.append_op("autoclip_threshold", {"Norm": norm, "History": history, "Count": count},
                        {"ClipNorm": threshold, "HistoryOut": history, "CountOut": count},
                        {"percentile": self.percentile})
        outs = [_fresh(block, g.name + CLIP_SUFFIX) for g in grads]
        block.append_op("scale_by_global_norm", {"X": grads, "GlobalNorm": norm, "ClipNorm": threshold},
                        {"Out": outs})
        return [block.var(o) for o in outs]

    def __repr__(self):
        return (f"GradientClipAutoClip(percentile={self.percentile}, history_size={self.history_size}, "
                f"group_name={self.group_name!r}, norm_type={self.norm_type})")
