"""Sum reductions and their gradient (a broadcast back), over a (pre, n, post) view or general strides,
and max/min reductions with their gradient (to the extreme elements).

`scale` multiplies a sum (1 for a sum, 1/count for a mean).
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


@njit(cache=True, error_model="numpy")
def extreme_strided(x, shape, ost, nout, is_max):
    """Flat [nout] maxima (or minima): element i of x meets out[offset], offset stepping by ost (0 on
    reduced dims). NaN propagates, as np.max."""
    out = np.empty(nout, x.dtype)
    seen = np.zeros(nout, np.bool_)
    xf = x.reshape(-1)
    idx = np.zeros(shape.size, np.int64)
    o = 0
    for i in range(xf.size):
        v = xf[i]
        if not seen[o]:
            out[o] = v
            seen[o] = True
        elif out[o] == out[o] and (v != v or (v > out[o] if is_max else v < out[o])):
            out[o] = v
        o = advance(idx, shape, ost, o)
    return out


@njit(cache=True, error_model="numpy")
def extreme_grad_strided(x, out, dout, shape, ost):
    """dX: dOut[o] split evenly among the elements equal to their extreme out[o], 0 elsewhere."""
    xf = x.reshape(-1)
    of = out.reshape(-1)
    gf = dout.reshape(-1)
    ties = np.zeros(of.size, np.int64)
    idx = np.zeros(shape.size, np.int64)
    o = 0
    for i in range(xf.size):
        if xf[i] == of[o]:
            ties[o] += 1
        o = advance(idx, shape, ost, o)
    dx = np.zeros(xf.size, x.dtype)
    o = 0
    for i in range(xf.size):
        if xf[i] == of[o]:
            dx[i] = gf[o] / ties[o]
        o = advance(idx, shape, ost, o)
    return dx
