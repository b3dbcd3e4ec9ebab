"""Sum reductions and their gradient (a broadcast back), over a (pre, n, post) view or general strides.

`scale` multiplies the result (1 for a sum, 1/count for a mean).
"""
import numpy as np
from numba import njit

from .shape import advance


@njit(cache=True, error_model="numpy")
def reduce_pnp(x, pre, n, post, scale):
    """Flat [pre * post] sums of x viewed as (pre, n, post) over its middle axis."""
    out = np.zeros(pre * post, x.dtype)
    xf = x.reshape(-1)
    for p in range(pre):
        if post == 1:  # contiguous rows: accumulate in float64
            acc = 0.0
            for j in range(n):
                acc += xf[p * n + j]
            out[p] = acc * scale
        else:
            for j in range(n):
                base = (p * n + j) * post
                for q in range(post):
                    out[p * post + q] += xf[base + q]
            for q in range(post):
                out[p * post + q] *= scale
    return out


@njit(cache=True, error_model="numpy")
def reduce_strided(x, shape, ost, nout, scale):
    """Flat [nout] sums: element i of x adds to out[offset], offset stepping by ost (0 on reduced dims)."""
    out = np.zeros(nout, x.dtype)
    xf = x.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    o = 0
    for i in range(xf.size):
        out[o] += xf[i]
        o = advance(idx, shape, ost, o)
    for k in range(nout):
        out[k] *= scale
    return out


@njit(cache=True, error_model="numpy")
def expand_pnp(g, pre, n, post, scale):
    """Flat [pre * n * post]: g (pre, post) repeated along the middle axis, times scale."""
    dx = np.empty(pre * n * post, g.dtype)
    gf = g.reshape(-1)
    k = 0
    for p in range(pre):
        for j in range(n):
            for q in range(post):
                dx[k] = gf[p * post + q] * scale
                k += 1
    return dx
