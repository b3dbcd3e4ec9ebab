"""Optimizers: SGD, Momentum, Adam, AdamW, RMSProp and Adagrad.

`minimize(loss)` appends, in this order: the gradient ops (`append_backward`), gradient clipping
(`fluidlite.clip`), weight decay (`fluidlite.regularizer`) and one update op per parameter.
Update ops write their parameter and accumulators in place (same variable names in and out).

The learning rate is a persistable variable of shape [1] (`optimizer.learning_rate_var`, named
`optimizer.learning_rate_name`) filled by the startup program, so it can be changed between
steps: `fl.global_scope().var(opt.learning_rate_name).get_tensor().set(np.array([0.01], dtype))`.
A parameter's `optimize_attr["learning_rate"]` multiplies it (through a `scale` op).
"""
from __future__ import annotations

import math

import numpy as np

from . import clip, unique_name
from .atomic import atomic
from .backward import append_backward
from .framework import ROLE_OPTIMIZE, Variable, default_startup_program
from .regularizer import WeightDecayRegularizer, append_regularization_ops


def _number(owner, name, value, low=0.0, high=math.inf, high_open=False):
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f"in [{low}, {high})" if high_open else f">= {low}"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class; subclasses set `type` and implement `_update(param, grad, lr, startup)`, which makes the
    accumulators and returns the update op's (inputs, outputs, attrs)."""

    type = None
    # callables (loss, params_grads) -> params_grads that minimize runs between backward and clipping;
    # fluidlite.distributed.DistributedOptimizer puts its gradient allreduce here
    gradient_transforms = ()

    def __init__(self, learning_rate, regularization=None):
        owner = type(self).__name__
        if isinstance(learning_rate, Variable):
            if learning_rate.dtype is None or learning_rate.dtype.kind != "f" or learning_rate.shape not in ((1,), ()):
                raise ValueError(f"{owner}: a learning_rate Variable must be a float of shape [1], got "
                                 f"{learning_rate!r}")
            self._lr_value = None
        else:
            self._lr_value = _number(owner, "learning_rate", learning_rate)
        if regularization is not None and not isinstance(regularization, WeightDecayRegularizer):
            raise TypeError(f"{owner}: regularization must be an L2Decay or L1Decay, got {regularization!r}")
        self.regularization = regularization
        self._lr_given = learning_rate if isinstance(learning_rate, Variable) else None
        self._lr_vars = {}  # program uid -> learning-rate Variable
        self.learning_rate_var = self._lr_given

    @property
    def learning_rate_name(self):
        """Name of the learning-rate variable (None until minimize/apply_gradients made it)."""
        return None if self.learning_rate_var is None else self.learning_rate_var.name

    # -- building blocks -------------------------------------------------------------------
    def _global_lr(self, block, dtype, startup):
        if self._lr_given is not None:
            return self._lr_given
        program = block.program
        var = self._lr_vars.get(program._uid)
        if var is None:
            name = unique_name.generate("learning_rate")
            var = program.global_block().create_var(name=name, shape=(1,), dtype=dtype, persistable=True)
            self._fill(startup, var, self._lr_value)
            self._lr_vars[program._uid] = var
        self.learning_rate_var = var
        return var

    @staticmethod
    def _fill(startup, var, value):
        sblock = startup.global_block()
        out = sblock.create_var(name=var.name, shape=var.shape, dtype=var.dtype, persistable=True)
        sblock.append_op("fill_constant", outputs={"Out": out},
                         attrs={"shape": var.shape, "dtype": var.dtype.name, "value": float(value)})

    def _param_lr(self, block, param, lr):
        """The global rate, times the parameter's own multiplier when it is not 1."""
        scale = (getattr(param, "optimize_attr", None) or {}).get("learning_rate", 1.0)
        if scale == 1.0:
            return lr
        out = block.create_var(name=unique_name.generate(f"{param.name}_lr"), shape=lr.shape, dtype=lr.dtype)
        block.append_op("scale", {"X": lr}, {"Out": out}, {"scale": float(scale)})
        return out

    def _accumulator(self, kind, param, startup, value=0.0, shape=None):
        """A persistable state variable `<param>_<kind>_N` filled with `value` by the startup program."""
        block = param.block.program.global_block()
        var = block.create_var(name=unique_name.generate(f"{param.name}_{kind}"),
                               shape=param.shape if shape is None else shape, dtype=param.dtype, persistable=True)
        self._fill(startup, var, value)
        return var

    # -- public API ------------------------------------------------------------------------
    def backward(self, loss, startup_program=None, parameter_list=None, no_grad_set=None, callback=None):
        """The gradient ops only (append_backward); non-trainable parameters are dropped."""
        params_grads = append_backward(loss, parameter_list, no_grad_set, callback)
        return [(p, g) for p, g in params_grads if getattr(p, "trainable", True)]

    def apply_gradients(self, params_grads, startup_program=None):
        """Appends one update op per (parameter, gradient) pair, nothing else; returns the ops appended."""
        programs = {id(g.block.program): g.block.program for _, g in params_grads if g is not None}
        with atomic(*programs.values(), startup_program or default_startup_program(), objects=(self,)):
            return self._append_updates(params_grads, startup_program, clip.update_gate(params_grads))

    def _append_updates(self, params_grads, startup_program, gate):
        startup = startup_program or default_startup_program()
        pairs = [(p, g) for p, g in params_grads if g is not None and getattr(p, "trainable", True)]
        if not pairs:
            return []
        for p, _ in pairs:
            if not p.persistable:
                raise ValueError(f"{type(self).__name__}: cannot update {p.name!r}: it is not persistable "
                                 f"(only parameters and other persistable variables can be optimized)")
        block = pairs[0][1].block
        program = block.program
        start = len(block.ops)
        with program._role_guard(ROLE_OPTIMIZE):
            lr = self._global_lr(block, pairs[0][1].dtype, startup)
            for param, grad in pairs:
                inputs, outputs, attrs = self._update(param, grad, self._param_lr(block, param, lr), startup)
                if gate is not None:
                    inputs["SkipUpdate"] = gate
                block.append_op(self.type, inputs, outputs, attrs)
        return block.ops[start:]

    def apply_optimize(self, loss, startup_program, params_grads, grad_clip=None):
        """The second half of minimize: clipping, regularization, update ops -> (ops, params_grads).

        Clipping comes before weight decay, as in Paddle Fluid and PyTorch: the clip bounds the
        data's gradient, and the decay term is not clipped away."""
        clipped = clip.build_gradient_clip(params_grads, grad_clip, startup_program)
        params_grads = append_regularization_ops(clipped.params_grads, self.regularization)
        return self._append_updates(params_grads, startup_program, clip.update_gate(clipped)), params_grads

    def minimize(self, loss, startup_program=None, parameter_list=None, no_grad_set=None, grad_clip=None,
                 callback=None):
        """backward -> gradient_transforms -> clip -> regularization -> update ops; returns
        (update ops, [(param, final grad)]).

        All or nothing: if any step raises, the programs are left as they were (fluidlite.atomic)."""
        program = loss.block.program if isinstance(loss, Variable) else None
        clips = [getattr(p, "gradient_clip_attr", None) for p in (program.all_parameters() if program else ())]
        with atomic(program, startup_program or default_startup_program(), objects=(self, grad_clip, *clips)):
            if getattr(grad_clip, "replaces_backward", False):  # per-example clipping builds its own backward
                return grad_clip._minimize(self, loss, startup_program, parameter_list, no_grad_set, callback)
            params_grads = self.backward(loss, startup_program, parameter_list, no_grad_set, callback)
            for transform in self.gradient_transforms:
                params_grads = transform(loss, params_grads)
            return self.apply_optimize(loss, startup_program, params_grads, grad_clip)

    def _update(self, param, grad, lr, startup):
        raise NotImplementedError


class SGD(Optimizer):
    """param <- param - lr * grad."""

    type = "sgd"

    def _update(self, param, grad, lr, startup):
        return {"Param": param, "Grad": grad, "LearningRate": lr}, {"ParamOut": param}, {}


class Momentum(Optimizer):
    """v <- mu * v + grad; param <- param - lr * v (or - lr * (grad + mu * v) with use_nesterov)."""

    type = "momentum"

    def __init__(self, learning_rate, momentum, use_nesterov=False, regularization=None):
        super().__init__(learning_rate, regularization)
        self.momentum = _number("Momentum", "momentum", momentum)
        self.use_nesterov = bool(use_nesterov)

    def _update(self, param, grad, lr, startup):
        v = self._accumulator("velocity", param, startup)
        return ({"Param": param, "Grad": grad, "Velocity": v, "LearningRate": lr}, {"ParamOut": param, "VelocityOut": v},
                {"mu": self.momentum, "use_nesterov": self.use_nesterov})


class Adam(Optimizer):
    """Adam (Kingma & Ba) with the bias correction folded into the rate; beta powers are per parameter.

    `update_clip=True` clips each tensor's update as StableAdamW does (Wortsman et al. 2023): its
    learning rate is divided by max(1, RMS(g^2 / max(v_hat, epsilon^2))), the RMS taken over the tensor,
    v_hat = v / (1 - beta2^t) the bias-corrected second moment *including* this step's gradient (the
    one the update divides by), so the first step is never clipped. The factor comes from an
    `update_clip_rate` op (role optimize) before the update op; the divided rate is the update op's
    LearningRate, so AdamW's decoupled decay shrinks with it, as in StableAdamW."""

    type = "adam"

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, regularization=None,
                 update_clip=False):
        super().__init__(learning_rate, regularization)
        self.beta1 = _number("Adam", "beta1", beta1, high=1.0, high_open=True)
        self.beta2 = _number("Adam", "beta2", beta2, high=1.0, high_open=True)
        self.epsilon = _number("Adam", "epsilon", epsilon)
        self.update_clip = bool(update_clip)

    def _clipped_rate(self, param, grad, lr, m2, b2):
        block = grad.block
        out = block.create_var(name=unique_name.generate(f"{param.name}_clipped_lr"), shape=lr.shape, dtype=lr.dtype)
        rms = block.create_var(name=unique_name.generate(f"{param.name}_update_rms"), shape=lr.shape, dtype=lr.dtype)
        block.append_op("update_clip_rate", {"Grad": grad, "Moment2": m2, "Beta2Pow": b2, "LearningRate": lr},
                        {"Out": out, "Rms": rms}, {"beta2": self.beta2, "epsilon": self.epsilon})
        return out

    def _update(self, param, grad, lr, startup):
        m1 = self._accumulator("moment1", param, startup)
        m2 = self._accumulator("moment2", param, startup)
        b1 = self._accumulator("beta1_pow_acc", param, startup, self.beta1, (1,))
        b2 = self._accumulator("beta2_pow_acc", param, startup, self.beta2, (1,))
        if self.update_clip:
            lr = self._clipped_rate(param, grad, lr, m2, b2)
        return ({"Param": param, "Grad": grad, "LearningRate": lr, "Moment1": m1, "Moment2": m2,
                 "Beta1Pow": b1, "Beta2Pow": b2},
                {"ParamOut": param, "Moment1Out": m1, "Moment2Out": m2, "Beta1PowOut": b1, "Beta2PowOut": b2},
                {"beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon})


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p - lr * weight_decay * p, then the
    Adam step. The decay is not a gradient term, so no clip touches it."""

    type = "adamw"

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.01,
                 regularization=None, update_clip=False):
        super().__init__(learning_rate, beta1, beta2, epsilon, regularization, update_clip)
        self.weight_decay = _number("AdamW", "weight_decay", weight_decay)

    def _update(self, param, grad, lr, startup):
        inputs, outputs, attrs = super()._update(param, grad, lr, startup)
        return inputs, outputs, {**attrs, "coeff": self.weight_decay}


class RMSProp(Optimizer):
    """ms <- rho * ms + (1 - rho) * g^2; mom <- momentum * mom + lr * g / sqrt(ms + epsilon); p <- p - mom."""

    type = "rmsprop"

    def __init__(self, learning_rate, rho=0.95, epsilon=1e-6, momentum=0.0, regularization=None):
        super().__init__(learning_rate, regularization)
        self.rho = _number("RMSProp", "rho", rho, high=1.0)
        self.epsilon = _number("RMSProp", "epsilon", epsilon)
        self.momentum = _number("RMSProp", "momentum", momentum)

    def _update(self, param, grad, lr, startup):
        ms = self._accumulator("mean_square", param, startup)
        mom = self._accumulator("moment", param, startup)
        return ({"Param": param, "Grad": grad, "MeanSquare": ms, "Moment": mom, "LearningRate": lr},
                {"ParamOut": param, "MeanSquareOut": ms, "MomentOut": mom},
                {"rho": self.rho, "epsilon": self.epsilon, "momentum": self.momentum})


class Adagrad(Optimizer):
    """m <- m + g^2; p <- p - lr * g / (sqrt(m) + epsilon)."""

    type = "adagrad"

    def __init__(self, learning_rate, epsilon=1e-6, regularization=None):
        super().__init__(learning_rate, regularization)
        self.epsilon = _number("Adagrad", "epsilon", epsilon)

    def _update(self, param, grad, lr, startup):
        m = self._accumulator("moment", param, startup)
        return ({"Param": param, "Grad": grad, "Moment": m, "LearningRate": lr}, {"ParamOut": param, "MomentOut": m},
                {"epsilon": self.epsilon})


SGDOptimizer, MomentumOptimizer, AdamOptimizer = SGD, Momentum, Adam
AdamWOptimizer, RMSPropOptimizer, AdagradOptimizer = AdamW, RMSProp, Adagrad

__all__ = ["Adagrad", "AdagradOptimizer", "Adam", "AdamOptimizer", "AdamW", "AdamWOptimizer", "Momentum",
           "MomentumOptimizer", "Optimizer", "RMSProp", "RMSPropOptimizer", "SGD", "SGDOptimizer"]
