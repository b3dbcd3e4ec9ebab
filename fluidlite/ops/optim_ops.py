"""Parameter update ops (sgd, momentum, adam), update_clip_rate (Adam's update clipping) and sign (for L1 decay).

An update op names its outputs like its inputs (`ParamOut` = Param's name, ...): the executor then
lists those slots in `ctx.overwritable` and the kernel updates the scope's arrays in place. With
other output names the op writes fresh arrays and leaves its inputs alone. The optional bool [1]
input `SkipUpdate` (from `fluidlite.clip.update_gate`) leaves parameter and state unchanged when True.
"""
import numpy as np

from ..kernels import optim as K
from ..registry import NO_GRAD, Attr, defop
from ..shapes import dims_match, numel
from .common import float_same_as, is_large


def _in_unit(v):
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _non_negative(v):
    return None if 0 <= v < float("inf") else "must be finite and >= 0"


def _check_update(ctx, state=(), scalars=()):
    """Grad and `state` slots shaped like Param, `scalars` and LearningRate of one element, all floats."""
    ctx.expect_dtype("Param", "Grad", *state, *scalars)
    ctx.expect_dtype("LearningRate")
    p = ctx.shape("Param")
    for slot in ("Grad",) + tuple(state):
        s = ctx.shape(slot)
        if len(s) != len(p) or not all(map(dims_match, s, p)):
            raise ctx.error(f"{slot} must have Param's shape {list(p)}, got {list(s)}", "Param", slot)
    for slot in ("LearningRate",) + tuple(scalars):
        if numel(ctx.shape(slot)) != 1:
            raise ctx.error(f"{slot} must hold one element, got shape {list(ctx.shape(slot))}", slot)
    if ctx.has("SkipUpdate") and (ctx.dtype("SkipUpdate") != np.bool_ or numel(ctx.shape("SkipUpdate")) != 1):
        raise ctx.error("SkipUpdate must be a bool of one element", "SkipUpdate")
    return {f"{slot}Out": (ctx.shape(slot), ctx.dtype(slot)) for slot in ("Param",) + tuple(state) + tuple(scalars)}


def _buffers(ctx, slots):
    """For each slot: may its input buffer be written as the output (in-place update)?"""
    return tuple(s in ctx.overwritable for s in slots)


def _out(inplace, a):
    return a if inplace else np.empty_like(a)


def _gated(ctx, run, state):
    """`run`, or when the op has a SkipUpdate input, a callable that returns the `state` inputs
    (positions in the input list) unchanged whenever the flag is True."""
    if not ctx.has("SkipUpdate"):
        return run
    keep = _buffers(ctx, [ctx.opdef.inputs[i] for i in state])

    def gated(*ins):
        if ins[-1][0]:
            outs = tuple(a if k else a.copy() for a, k in zip((ins[i] for i in state), keep))
            return outs[0] if len(outs) == 1 else outs
        return run(*ins[:-1])

    return gated


def _lower_sgd(ctx):
    kernel = K.sgd_parallel if is_large(ctx.meta("Param")) else K.sgd
    (ip,) = _buffers(ctx, ("Param",))
    return _gated(ctx, lambda p, g, lr: kernel(p, g, lr, _out(ip, p)), (0,))


defop("sgd", inputs=("Param", "Grad", "LearningRate", "SkipUpdate"), outputs=("ParamOut",), optional=("SkipUpdate",),
      infer=lambda ctx: _check_update(ctx), lower=_lower_sgd, grad=NO_GRAD,
      doc="ParamOut = Param - LearningRate * Grad (in place when ParamOut names Param).")


def _lower_momentum(ctx):
    kernel = K.momentum_parallel if is_large(ctx.meta("Param")) else K.momentum
    # mu in Param's precision: float32 arithmetic vectorizes twice as wide (as Paddle's and torch's kernels compute)
    mu, nesterov = ctx.dtype("Param").type(ctx.attrs["mu"]), ctx.attrs["use_nesterov"]
    ip, iv = _buffers(ctx, ("Param", "Velocity"))
    return _gated(ctx, lambda p, g, v, lr: kernel(p, g, v, lr, mu, nesterov, _out(ip, p), _out(iv, v)), (0, 2))


defop("momentum", inputs=("Param", "Grad", "Velocity", "LearningRate", "SkipUpdate"),
      outputs=("ParamOut", "VelocityOut"), optional=("SkipUpdate",),
      attrs={"mu": Attr(float, 0.9, _non_negative), "use_nesterov": Attr(bool, False)},
      infer=lambda ctx: _check_update(ctx, ("Velocity",)), lower=_lower_momentum, grad=NO_GRAD,
      doc="VelocityOut = mu * Velocity + Grad; ParamOut = Param - lr * VelocityOut, or with "
          "use_nesterov Param - lr * (Grad + mu * VelocityOut).")

_ADAM_STATE = ("Moment1", "Moment2")
_ADAM_POWS = ("Beta1Pow", "Beta2Pow")


def _lower_adam(ctx):
    """adam and adamw (coeff > 0)."""
    kernel = K.adam_parallel if is_large(ctx.meta("Param")) else K.adam
    b1, b2, eps = ctx.attrs["beta1"], ctx.attrs["beta2"], ctx.attrs["epsilon"]
    coeff = ctx.attrs.get("coeff", 0.0)  # adamw's decoupled weight decay
    ip, i1, i2, ib1, ib2 = _buffers(ctx, ("Param",) + _ADAM_STATE + _ADAM_POWS)

    def run(p, g, lr, m1, m2, b1p, b2p):
        return kernel(p, g, lr, m1, m2, b1p, b2p, b1, b2, eps, coeff,
                      _out(ip, p), _out(i1, m1), _out(i2, m2), _out(ib1, b1p), _out(ib2, b2p))

    return _gated(ctx, run, (0, 3, 4, 5, 6))


defop("adam", inputs=("Param", "Grad", "LearningRate") + _ADAM_STATE + _ADAM_POWS + ("SkipUpdate",),
      outputs=("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"), optional=("SkipUpdate",),
      attrs={"beta1": Attr(float, 0.9, _in_unit), "beta2": Attr(float, 0.999, _in_unit),
             "epsilon": Attr(float, 1e-8, _non_negative)},
      infer=lambda ctx: _check_update(ctx, _ADAM_STATE, _ADAM_POWS), lower=_lower_adam, grad=NO_GRAD,
      doc="Adam with bias correction folded into the rate: lr_t = lr * sqrt(1 - Beta2Pow) / (1 - Beta1Pow); "
          "m1 = beta1*m1 + (1-beta1)*g; m2 = beta2*m2 + (1-beta2)*g^2; p -= lr_t * m1 / (sqrt(m2) + epsilon); "
          "Beta1Pow *= beta1, Beta2Pow *= beta2.")

def _lower_update_clip_rate(ctx):
    kernel = K.update_rms_parallel if is_large(ctx.meta("Grad")) else K.update_rms
    beta2, eps = ctx.attrs["beta2"], ctx.attrs["epsilon"]
    dtype = ctx.dtype("LearningRate")

    with_rms = ctx.has_output("Rms")

    def run(g, v, b2p, lr):
        rms = kernel(g, v, beta2, 1.0 - float(b2p[0]), eps * eps)
        out = np.array([lr[0] / max(1.0, rms)], dtype)
        return (out, np.array([rms], dtype)) if with_rms else out

    return run


def _update_clip_infer(ctx):
    ctx.expect_dtype("Grad", "Moment2", "Beta2Pow")
    ctx.expect_dtype("LearningRate")
    g, v = ctx.shape("Grad"), ctx.shape("Moment2")
    if len(g) != len(v) or not all(map(dims_match, g, v)):
        raise ctx.error(f"Moment2 must have Grad's shape {list(g)}, got {list(v)}", "Grad", "Moment2")
    for slot in ("Beta2Pow", "LearningRate"):
        if numel(ctx.shape(slot)) != 1:
            raise ctx.error(f"{slot} must hold one element, got shape {list(ctx.shape(slot))}", slot)
    lr = (ctx.shape("LearningRate"), ctx.dtype("LearningRate"))
    return {"Out": lr, "Rms": lr}


defop("update_clip_rate", inputs=("Grad", "Moment2", "Beta2Pow", "LearningRate"), outputs=("Out", "Rms"),
      optional=("Rms",), attrs={"beta2": Attr(float, 0.999, _in_unit), "epsilon": Attr(float, 1e-8, _non_negative)},
      infer=_update_clip_infer, lower=_lower_update_clip_rate, grad=NO_GRAD,
      doc="StableAdamW's update clipping, read before the adam step: with v = beta2 * Moment2 + (1 - beta2) * "
          "Grad^2 (the second moment that step will hold) and v_hat = v / (1 - Beta2Pow), Rms = "
          "sqrt(mean(Grad^2 / max(v_hat, epsilon^2))) over the tensor and Out = LearningRate / max(1, Rms).")

defop("sign", inputs=("X",), infer=float_same_as("X"), kernel=K.sign, grad=NO_GRAD,
      doc="Out = sign(X) (1, -1 or 0); no gradient flows through it (its derivative is 0 almost everywhere).")
