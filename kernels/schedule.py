"""Learning-rate schedule kernels: each maps the step counter (an int64 [1] array) to a rate in `out` ([1])."""
import math

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def increment(x, step):
    """x + step, as a new array of x's dtype (the op writes it back into the persistable counter)."""
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        of[i] = xf[i] + step
    return out


@njit(cache=True, error_model="numpy")
def piecewise(step, boundaries, values, out):
    """values[i] for the first boundary with step < boundaries[i]; values[-1] past the last one."""
    s = step[0]
    k = boundaries.size
    for i in range(boundaries.size):
        if s < boundaries[i]:
            k = i
            break
    out[0] = values[k]
    return out


@njit(cache=True, error_model="numpy")
def exponential(step, lr, decay_steps, decay_rate, staircase, out):
    """lr * decay_rate ** (step / decay_steps), the exponent floored with `staircase`."""
    e = step[0] / decay_steps
    if staircase:
        e = math.floor(e)
    out[0] = lr * decay_rate ** e
    return out


@njit(cache=True, error_model="numpy")
def cosine(step, lr, step_each_epoch, epochs, out):
    """lr * (cos(epoch * pi / epochs) + 1) / 2 with epoch = floor(step / step_each_epoch)."""
    epoch = math.floor(step[0] / step_each_epoch)
    out[0] = lr * 0.5 * (math.cos(epoch * math.pi / epochs) + 1.0)
    return out


@njit(cache=True, error_model="numpy")
def noam(step, lr, d_model, warmup_steps, out):
    """lr * d_model^-0.5 * min(n^-0.5, n * warmup_steps^-1.5) at n = step + 1."""
    n = step[0] + 1.0
    out[0] = lr * d_model ** -0.5 * min(n ** -0.5, n * warmup_steps ** -1.5)
    return out


@njit(cache=True, error_model="numpy")
def linear_warmup(step, lr, warmup_steps, start_lr, end_lr, out):
    """start_lr + (end_lr - start_lr) * step / warmup_steps while step < warmup_steps, then lr[0]."""
    s = step[0]
    if s < warmup_steps:
        out[0] = start_lr + (end_lr - start_lr) * s / warmup_steps
    else:
        out[0] = lr[0]
    return out
