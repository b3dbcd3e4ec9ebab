"""Weight decay: L2Decay and L1Decay add a penalty's gradient to a parameter's gradient.

A regularizer is set per parameter (`ParamAttr(regularizer=...)`, which wins) or for the rest by
the optimizer (`SGD(..., regularization=...)`). The ops are appended after gradient clipping, as
in Paddle Fluid and PyTorch: backward -> clip -> regularization -> update (see docs/backward.md).
"""
from __future__ import annotations

import math

from .framework import ROLE_OPTIMIZE


class WeightDecayRegularizer:
    """Base class: `append(param, grad, block)` returns the regularized gradient Variable."""

    def __init__(self, coeff=0.0):
        if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or math.isnan(coeff) \
                or math.isinf(coeff) or coeff < 0:
            raise ValueError(f"{type(self).__name__}: coeff must be a finite number >= 0, got {coeff!r}")
        self.coeff = float(coeff)

    def __repr__(self):
        return f"{type(self).__name__}(coeff={self.coeff})"

    def _penalty_grad(self, param, block):
        raise NotImplementedError

    def append(self, param, grad, block):
        """Appends `grad + d(penalty)/d(param)` as new ops; the raw gradient is left untouched."""
        with block.program._role_guard(ROLE_OPTIMIZE):
            decay = self._penalty_grad(param, block)
            out = block.create_var(name=_fresh(block, grad.name + "@DECAYED"), shape=grad.shape, dtype=grad.dtype)
            block.append_op("sum", {"X": [grad, decay]}, {"Out": out})
        return out


def _fresh(block, name):
    k, candidate = 0, name
    while block.has_var(candidate):
        k += 1
        candidate = f"{name}_{k}"
    return candidate


class L2Decay(WeightDecayRegularizer):
    """Penalty coeff/2 * sum(param^2): grad <- grad + coeff * param."""

    def _penalty_grad(self, param, block):
        out = block.create_var(name=_fresh(block, param.name + "@L2"), shape=param.shape, dtype=param.dtype)
        block.append_op("scale", {"X": param}, {"Out": out}, {"scale": self.coeff})
        return out


class L1Decay(WeightDecayRegularizer):
    """Penalty coeff * sum(|param|): grad <- grad + coeff * sign(param)."""

    def _penalty_grad(self, param, block):
        sign = block.create_var(name=_fresh(block, param.name + "@SIGN"), shape=param.shape, dtype=param.dtype)
        block.append_op("sign", {"X": param}, {"Out": sign})
        out = block.create_var(name=_fresh(block, param.name + "@L1"), shape=param.shape, dtype=param.dtype)
        block.append_op("scale", {"X": sign}, {"Out": out}, {"scale": self.coeff})
        return out


L2DecayRegularizer, L1DecayRegularizer = L2Decay, L1Decay


def append_regularization_ops(params_grads, regularization=None):
    """Pairs with regularized gradients: a parameter's own regularizer wins, else `regularization`."""
    if regularization is not None and not isinstance(regularization, WeightDecayRegularizer):
        raise TypeError(f"regularization must be an L2Decay or L1Decay, got {regularization!r}")
    out = []
    for param, grad in params_grads:
        reg = getattr(param, "regularizer", None) or regularization
        if grad is None or reg is None or reg.coeff == 0.0:
            out.append((param, grad))
            continue
        if not isinstance(reg, WeightDecayRegularizer):
            raise TypeError(f"parameter {param.name!r}: regularizer must be an L2Decay or L1Decay, got {reg!r}")
        out.append((param, reg.append(param, grad, grad.block)))
    return out


__all__ = ["L1Decay", "L1DecayRegularizer", "L2Decay", "L2DecayRegularizer", "WeightDecayRegularizer",
           "append_regularization_ops"]
