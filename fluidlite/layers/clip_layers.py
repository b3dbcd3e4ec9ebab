"""clip, clip_by_norm, clip_by_global_norm: differentiable clipping layers."""
from __future__ import annotations

from .helper import LayerHelper, check_variable

__all__ = ["clip", "clip_by_norm", "clip_by_global_norm"]


def clip(x, min, max, name=None):
    """min(max(x, min), max) elementwise; the gradient passes where min <= x <= max."""
    return LayerHelper("clip", name).append_op("clip", {"X": check_variable(x, "x", "clip")},
                                               {"min": min, "max": max})


def clip_by_norm(x, max_norm, name=None):
    """x * max_norm / max(l2_norm(x), max_norm)."""
    return LayerHelper("clip_by_norm", name).append_op("clip_by_norm", {"X": check_variable(x, "x", "clip_by_norm")},
                                                       {"max_norm": max_norm})


def clip_by_global_norm(t_list, clip_norm, name=None):
    """(clipped list, global_norm): each t * clip_norm / max(global_norm, clip_norm), global_norm over all of t_list."""
    if not isinstance(t_list, (list, tuple)) or not t_list:
        raise TypeError("clip_by_global_norm: t_list must be a non-empty list of Variables")
    ts = [check_variable(t, "t_list", "clip_by_global_norm") for t in t_list]
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) or not clip_norm > 0:
        raise ValueError(f"clip_by_global_norm: clip_norm must be a number > 0, got {clip_norm!r}")
    helper = LayerHelper("clip_by_global_norm", name)
    norm = helper.append_op("global_norm", {"X": ts})
    outs = [helper.tmp_name() for _ in ts]
    helper.block.append_op("scale_by_global_norm", {"X": ts, "GlobalNorm": norm}, {"Out": outs},
                           {"clip_norm": clip_norm})
    return [helper.block.var(o) for o in outs], norm
