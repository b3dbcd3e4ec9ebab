"""Differential privacy: DP-SGD's per-example clip and the privacy it buys.

- `GradientClipPerExample(l2_norm_clip, noise_multiplier=0.0, seed=None)` (also `fl.clip.GradientClipPerExample`),
  given to `optimizer.minimize(loss, grad_clip=...)`, makes the update use
  `(1/B) (sum_i g_i min(1, C / ||g_i||) + N(0, (noise_multiplier C)^2 I))`; the graph it builds is
  described in fluidlite/per_example.py and docs/privacy.md.
- `per_example_norm_var(program)`: the [B] Variable of the `||g_i||` before clipping.
- `epsilon(noise_multiplier, sample_rate, steps, delta)`: the epsilon of that many Poisson-subsampled
  Gaussian steps, from Google's dp-accounting (RDP or PLD accountant; no privacy math of our own).
"""
from __future__ import annotations

import math

from .clip import GradientClipBase
from .framework import default_main_program
from .per_example import NORM_NAME


def _real(name, value, low, strict):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"GradientClipPerExample: {name} must be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"GradientClipPerExample: {name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


class GradientClipPerExample(GradientClipBase):
    """DP-SGD's clip: each example's gradient (all trainable parameters together) is scaled to norm at most
    `l2_norm_clip`, the clipped gradients are summed, Gaussian noise of standard deviation
    `noise_multiplier * l2_norm_clip` is added once per parameter per step, and the result is divided
    by the batch size (for a mean loss). Only through `minimize(grad_clip=...)`; combines with no other clip.
    `seed=None` draws the noise key from the OS when the startup program runs; an int makes it repeatable."""

    replaces_backward = True  # Optimizer.minimize hands the whole build to `_minimize`
    _ARGS = ("l2_norm_clip", "noise_multiplier", "seed")

    def __init__(self, l2_norm_clip, noise_multiplier=0.0, seed=None):
        self.l2_norm_clip = _real("l2_norm_clip", l2_norm_clip, 0.0, strict=True)
        self.noise_multiplier = _real("noise_multiplier", noise_multiplier, 0.0, strict=False)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
            raise ValueError(f"GradientClipPerExample: seed must be None or an int in [0, 2**63), got {seed!r}")
        self.seed = seed

    def _minimize(self, optimizer, loss, startup_program=None, parameter_list=None, no_grad_set=None, callback=None):
        from .per_example import build

        return build(optimizer, loss, self, startup_program, parameter_list, no_grad_set, callback)

    def _group_key(self):
        return ("per_example",)

    def _append(self, block, pairs, build):
        raise ValueError("GradientClipPerExample works only as minimize(loss, grad_clip=...): it replaces the "
                         "backward pass, so it cannot be attached to parameters or combined with another clip")



GradientClipPerExample.__module__ = "fluidlite.clip"  # its public name, as fl.io saves it


def per_example_norm_var(program=None):
    """The [B] Variable of the per-example gradient norms ||g_i|| (before clipping) of the latest
    per-example clip built into `program` (default: the main program); None if there is none."""
    block = (program or default_main_program()).global_block()
    found, k = None, 0
    name = NORM_NAME
    while block.has_var(name):
        found = block.var(name)
        k += 1
        name = f"{NORM_NAME}@{k}"
    return found


def epsilon(noise_multiplier, sample_rate, steps, delta, accountant="rdp"):
    """Epsilon of `steps` DP-SGD steps, each sampling examples with probability `sample_rate` (Poisson)
    and adding Gaussian noise of `noise_multiplier` times the clip norm, at the given `delta`
    (add-or-remove-one adjacency). `accountant` is "rdp" or "pld" (dp-accounting's)."""
    import dp_accounting

    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier > 0):
        raise ValueError(f"epsilon: noise_multiplier must be > 0, got {noise_multiplier!r}")
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ValueError(f"epsilon: sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"epsilon: steps must be an int >= 0, got {steps!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"epsilon: delta must be in (0, 1), got {delta!r}")
    if accountant == "rdp":
        acc = dp_accounting.rdp.RdpAccountant()
    elif accountant == "pld":
        acc = dp_accounting.pld.PLDAccountant()
    else:
        raise ValueError(f"epsilon: accountant must be 'rdp' or 'pld', got {accountant!r}")
    if steps == 0:
        return 0.0
    event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


__all__ = ["GradientClipPerExample", "epsilon", "per_example_norm_var"]
