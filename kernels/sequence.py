"""Variable-length sequence kernels over time-major [T, B, ...] tensors viewed as (T, B, row)."""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def sequence_mask(lengths, maxlen, like):
    """mask[b, t] = 1 if t < lengths[b] else 0, in like's dtype; maxlen < 0 means max(lengths)."""
    n = lengths.size
    if maxlen < 0:
        maxlen = 0
        for b in range(n):
            maxlen = max(maxlen, lengths[b])
    out = np.zeros((n, maxlen), like.dtype)
    for b in range(n):
        if lengths[b] < 0:
            raise ValueError("sequence_mask: a length is negative")
        for t in range(min(lengths[b], maxlen)):
            out[b, t] = 1
    return out


@njit(cache=True, error_model="numpy")
def sequence_reverse(x, lengths):
    """out[t, b] = x[L_b - 1 - t, b] for t < L_b (L_b = lengths[b] clamped to [0, T]), else x[t, b].

    It is its own inverse, so it is also its gradient."""
    steps, batch, row = x.shape
    out = np.empty_like(x)
    for b in range(batch):
        n = min(max(lengths[b], 0), steps)
        for t in range(steps):
            src = n - 1 - t if t < n else t
            for k in range(row):
                out[t, b, k] = x[src, b, k]
    return out
