"""Clipping ops with state or side results: adaptive_clip (AGC), autoclip_threshold (AutoClip),
zclip_threshold (ZClip), count_nonfinite (the skip-step gate) and pick_norm (per-tensor norms).

State inputs (histories, counters, ZClip's mean and variance) are persistable variables updated in
place (the output names the input) so a checkpoint holds them.
"""
import numpy as np

from ..kernels import clip as K
from ..kernels import clip_state as KS
from ..registry import NO_GRAD, Attr, defop
from ..shapes import numel
from .common import is_large, positive


def _out_buffer(ctx, slot, x):
    return x if slot in ctx.overwritable else np.empty_like(x)


def _state(ctx, slot, a):
    """The state array to update: the input itself when the op may overwrite it, else a copy."""
    return a if slot in ctx.overwritable else a.copy()


# ---- adaptive clipping ------------------------------------------------------------------------

def _agc_infer(ctx):
    ctx.expect_dtype("Param", "X")
    if ctx.shape("Param") != ctx.shape("X"):
        raise ctx.error("Param and X (its gradient) need one shape", "Param", "X")
    return {"Out": (ctx.shape("X"), ctx.dtype("X"))}


def _lower_agc(ctx):
    shape = ctx.shape("X")
    as2d = (numel(shape[:-1]), shape[-1]) if len(shape) >= 2 else (1, numel(shape))  # vectors: per element
    clipping, eps = ctx.attrs["clipping"], ctx.attrs["eps"]
    kernel = K.adaptive_clip_parallel if is_large(ctx.meta("X")) and as2d[0] >= 64 else K.adaptive_clip

    def run(p, g):
        out = _out_buffer(ctx, "X", g)
        kernel(p.reshape(as2d), g.reshape(as2d), out.reshape(as2d), clipping, eps)
        return out

    return run


defop("adaptive_clip", inputs=("Param", "X"),
      attrs={"clipping": Attr(float, 0.01, positive), "eps": Attr(float, 1e-3, positive)},
      infer=_agc_infer, lower=_lower_agc, grad=NO_GRAD,
      doc="AGC: each unit (column of a (in, out) weight; element of a vector) of gradient X is rescaled to "
          "at most clipping * max(norm of that unit of Param, eps).")


def _autoclip_infer(ctx):
    if ctx.dtype("Count").kind != "i":
        raise ctx.error("Count must be an integer var", "Count")
    return {"ClipNorm": ((1,), ctx.dtype("Norm")), "HistoryOut": (ctx.shape("History"), ctx.dtype("History")),
            "CountOut": (ctx.shape("Count"), ctx.dtype("Count"))}


def _lower_autoclip(ctx):
    p = ctx.attrs["percentile"]
    dtype = ctx.dtype("Norm")

    def run(norm, history, count):
        history, count = _state(ctx, "History", history), _state(ctx, "Count", count)
        c = KS.autoclip_update(float(norm[0]), history, count, p)
        return np.array([c], dtype), history, count

    return run


defop("autoclip_threshold", inputs=("Norm", "History", "Count"), outputs=("ClipNorm", "HistoryOut", "CountOut"),
      attrs={"percentile": Attr(float, 10.0, lambda v: None if 0 <= v <= 100 else "must be in [0, 100]")},
      infer=_autoclip_infer, lower=_lower_autoclip, grad=NO_GRAD,
      doc="Records a finite Norm in the ring buffer History (Count norms seen), ClipNorm = the percentile "
          "of the recorded norms (AutoClip).")


# ---- ZClip -------------------------------------------------------------------------------------

def _zclip_infer(ctx):
    for slot, kind in (("Mu", "f"), ("Var", "f"), ("Warmup", "f"), ("Step", "i")):
        if ctx.dtype(slot).kind != kind or (slot != "Warmup" and numel(ctx.shape(slot)) != 1):
            raise ctx.error(f"{slot} must be {'a float' if kind == 'f' else 'an integer'} state variable"
                            + ("" if slot == "Warmup" else " of one element"), slot)
    if numel(ctx.shape("Warmup")) < 1:
        raise ctx.error("Warmup must hold at least one norm", "Warmup")
    out = {"ClipNorm": ((1,), ctx.expect_dtype("Norm")), "Spike": ((1,), np.bool_)}
    out.update({f"{s}Out": (ctx.shape(s), ctx.dtype(s)) for s in ("Mu", "Var", "Step", "Warmup")})
    return out


def _lower_zclip(ctx):
    alpha, z_thresh, skip = ctx.attrs["alpha"], ctx.attrs["z_thresh"], ctx.attrs["skip_spikes"]
    dtype = ctx.dtype("Norm")

    def run(norm, mu, var, step, warmup):
        mu, var, step, warmup = (_state(ctx, s, a) for s, a in zip(("Mu", "Var", "Step", "Warmup"), (mu, var, step, warmup)))
        g = float(norm[0])
        c, spike = KS.zclip_update(g, mu, var, step, warmup, alpha, z_thresh)
        if skip and spike:
            c = np.inf  # the update is skipped instead: the gradients pass unchanged
        return np.array([c], dtype), np.array([spike or (skip and not np.isfinite(g))]), mu, var, step, warmup

    return run


def _unit(v):
    return None if 0.0 < v < 1.0 else "must be in (0, 1)"


defop("zclip_threshold", inputs=("Norm", "Mu", "Var", "Step", "Warmup"),
      outputs=("ClipNorm", "Spike", "MuOut", "VarOut", "StepOut", "WarmupOut"),
      attrs={"alpha": Attr(float, 0.97, _unit), "z_thresh": Attr(float, 2.5, positive),
             "skip_spikes": Attr(bool, False)},
      infer=_zclip_infer, lower=_lower_zclip, grad=NO_GRAD,
      doc="ZClip: during the first len(Warmup) finite norms, records them (ClipNorm = +inf: no clipping); then "
          "with z = (Norm - Mu) / sqrt(Var), a spike (z > z_thresh) gets ClipNorm = Mu + z_thresh**2 / z * "
          "sqrt(Var) (+inf with skip_spikes), and Mu, Var follow an EMA of the clipped norm. Spike = [a spike "
          "(or, with skip_spikes, a non-finite Norm)]. A non-finite Norm leaves the state unchanged.")


# ---- skip gate and per-tensor norms ---------------------------------------------------------------

def _count_infer(ctx):
    for m in ctx.metas("Skip"):
        if m.dtype != np.bool_ or numel(m.shape) != 1:
            raise ctx.error("Skip flags must be bool of one element", "Skip")
    return {"Found": ((1,), np.bool_), "CountOut": (ctx.shape("Count"), ctx.dtype("Count"))}


def _lower_count(ctx):
    n_norms = len(ctx.metas("X"))

    def run(*args):
        norms, flags, count = args[:n_norms], args[n_norms:-1], _state(ctx, "Count", args[-1])
        found = KS.count_nonfinite(np.array([float(v[0]) for v in norms]), any(bool(f[0]) for f in flags), count)
        return np.array([found]), count

    return run


defop("count_nonfinite", inputs=("X", "Skip", "Count"), outputs=("Found", "CountOut"), duplicable=("X", "Skip"),
      optional=("X", "Skip"), infer=_count_infer, lower=_lower_count, grad=NO_GRAD,
      doc="Found = [any X (norms) is NaN or Inf, or any Skip flag is True]; CountOut = Count + Found "
          "(skipped-step counter).")


def _pick_infer(ctx):
    n = numel(ctx.shape("TensorNorms"))
    if not 0 <= ctx.attrs["index"] < n:
        raise ctx.error(f"index {ctx.attrs['index']} is outside [0, {n})", "TensorNorms")
    ctx.expect_dtype("TensorNorms")
    return {"Out": ((1,), np.float32)}


def _lower_pick(ctx):
    k = ctx.attrs["index"]
    if ctx.has("Scale"):
        return lambda norms, scale: np.array([norms[k] * scale[0]], np.float32)
    return lambda norms: np.array([norms[k]], np.float32)


defop("pick_norm", inputs=("TensorNorms", "Scale"), optional=("Scale",), attrs={"index": Attr(int, 0)},
      infer=_pick_infer, lower=_lower_pick, grad=NO_GRAD,
      doc="Out = float32 [TensorNorms[index] * Scale] (Scale: the factor a group clip applied, if given): one "
          "tensor's norm out of a global_norm op's per-tensor norms.")
