"""Update ops of the adaptive optimizers: rmsprop, adagrad, adamw (in place like sgd, momentum, adam)."""
from ..kernels import adaptive as K
from ..registry import NO_GRAD, Attr, defop
from .common import is_large
from .optim_ops import (_ADAM_POWS, _ADAM_STATE, _buffers, _check_update, _gated, _in_unit, _lower_adam,
                        _non_negative, _out)


def _unit_closed(v):
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def _lower_rmsprop(ctx):
    kernel = K.rmsprop_parallel if is_large(ctx.meta("Param")) else K.rmsprop
    rho, eps, mu = ctx.attrs["rho"], ctx.attrs["epsilon"], ctx.attrs["momentum"]
    ip, ims, imom = _buffers(ctx, ("Param", "MeanSquare", "Moment"))
    return _gated(ctx, lambda p, g, ms, mom, lr: kernel(p, g, ms, mom, lr, rho, eps, mu, _out(ip, p), _out(ims, ms),
                                                        _out(imom, mom)), (0, 2, 3))


defop("rmsprop", inputs=("Param", "Grad", "MeanSquare", "Moment", "LearningRate", "SkipUpdate"),
      outputs=("ParamOut", "MeanSquareOut", "MomentOut"), optional=("SkipUpdate",),
      attrs={"rho": Attr(float, 0.95, _unit_closed), "epsilon": Attr(float, 1e-6, _non_negative),
             "momentum": Attr(float, 0.0, _non_negative)},
      infer=lambda ctx: _check_update(ctx, ("MeanSquare", "Moment")), lower=_lower_rmsprop, grad=NO_GRAD,
      doc="MeanSquareOut = rho * MeanSquare + (1 - rho) * Grad^2; MomentOut = momentum * Moment + "
          "lr * Grad / sqrt(MeanSquareOut + epsilon); ParamOut = Param - MomentOut (Paddle's rmsprop).")


def _lower_adagrad(ctx):
    kernel = K.adagrad_parallel if is_large(ctx.meta("Param")) else K.adagrad
    eps = ctx.attrs["epsilon"]
    ip, im = _buffers(ctx, ("Param", "Moment"))
    return _gated(ctx, lambda p, g, m, lr: kernel(p, g, m, lr, eps, _out(ip, p), _out(im, m)), (0, 2))


defop("adagrad", inputs=("Param", "Grad", "Moment", "LearningRate", "SkipUpdate"), outputs=("ParamOut", "MomentOut"),
      optional=("SkipUpdate",), attrs={"epsilon": Attr(float, 1e-6, _non_negative)},
      infer=lambda ctx: _check_update(ctx, ("Moment",)), lower=_lower_adagrad, grad=NO_GRAD,
      doc="MomentOut = Moment + Grad^2; ParamOut = Param - lr * Grad / (sqrt(MomentOut) + epsilon).")


defop("adamw", inputs=("Param", "Grad", "LearningRate") + _ADAM_STATE + _ADAM_POWS + ("SkipUpdate",),
      outputs=("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"), optional=("SkipUpdate",),
      attrs={"beta1": Attr(float, 0.9, _in_unit), "beta2": Attr(float, 0.999, _in_unit),
             "epsilon": Attr(float, 1e-8, _non_negative), "coeff": Attr(float, 0.01, _non_negative)},
      infer=lambda ctx: _check_update(ctx, _ADAM_STATE, _ADAM_POWS), lower=_lower_adam, grad=NO_GRAD,
      doc="Decoupled weight decay (Loshchilov & Hutter): Param <- Param - lr * coeff * Param, then the adam "
          "step on it with the same Moment/BetaPow semantics.")
