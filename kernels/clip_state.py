"""Kernels of the clips that keep state between steps: AutoClip's percentile, ZClip's statistics and
the skipped-step counter. Each updates its state arrays in place and returns the step's result."""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def autoclip_update(norm, history, count, percentile):
    """Record a finite `norm` in the ring buffer `history` (count = norms seen so far) and return the
    `percentile` (linear interpolation) of the recorded norms; `norm` itself when none is finite."""
    cap = history.size
    if np.isfinite(norm):
        history[count[0] % cap] = norm
        count[0] += 1
    n = min(count[0], cap)
    if n == 0:
        return norm
    return np.percentile(history[:n], percentile)


@njit(cache=True, error_model="numpy")
def count_nonfinite(norms, flag, count):
    """True if `flag` or any of `norms` is NaN or Inf; then count[0] += 1 (in place)."""
    found = flag
    for v in norms:
        if not np.isfinite(v):
            found = True
    if found:
        count[0] += 1
    return found


@njit(cache=True, error_model="numpy")
def zclip_update(g, mu, var, step, warmup, alpha, z_thresh):
    """One ZClip step on the global norm `g`, updating the [1] states mu, var, step and the warm-up
    record in place; returns (the norm to clip to: +inf for none, NaN for a non-finite g; spike).
    A non-finite g changes nothing."""
    if not np.isfinite(g):
        return np.nan, False
    n = warmup.size
    k = step[0]
    step[0] = k + 1
    if k < n:
        warmup[k] = g
        if k == n - 1:
            m = 0.0
            for i in range(n):
                m += warmup[i]
            m /= n
            v = 0.0
            for i in range(n):
                v += (warmup[i] - m) * (warmup[i] - m)
            mu[0] = m
            var[0] = v / n
        return np.inf, False
    sigma = np.sqrt(var[0])
    c = np.inf
    g_c = g
    spike = False
    if sigma > 0.0:
        z = (g - mu[0]) / sigma
        if z > z_thresh:
            g_c = mu[0] + (z_thresh * z_thresh / z) * sigma
            c = g_c
            spike = True
    mu[0] = alpha * mu[0] + (1.0 - alpha) * g_c
    var[0] = alpha * var[0] + (1.0 - alpha) * (g_c - mu[0]) * (g_c - mu[0])
    return c, spike
