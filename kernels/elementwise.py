"""Binary elementwise kernels (add, sub, mul, div, max) over canonical broadcast layouts.

`op` codes: 0 add, 1 sub, 2 mul, 3 div, 4 max. Layouts:
- same: both operands have the output's shape (flat loop);
- pnp: the big operand viewed as (pre, n, post), the small one as [n] (a scalar is n == 1);
- strided: any broadcast, with per-dimension element strides (0 along broadcast dims).
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _f(op, a, b):
    if op == 0:
        return a + b
    if op == 1:
        return a - b
    if op == 2:
        return a * b
    if op == 3:
        return a / b
    # max propagates NaN from either side, as np.maximum
    return a if (a >= b or a != a) else b


@njit(cache=True, inline="always")
def _df(op, a, b, g):
    """(d/da, d/db) of f(a, b) times g; max splits ties 0.5/0.5."""
    if op == 0:
        return g, g
    if op == 1:
        return g, -g
    if op == 2:
        return g * b, g * a
    if op == 3:
        return g / b, -g * a / (b * b)
    if a > b:
        return g, g * 0
    if a < b:
        return g * 0, g
    h = g * 0.5
    return h, h


@njit(cache=True)
def same(x, y, op):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for i in range(of.size):
        of[i] = _f(op, xf[i], yf[i])
    return out


@njit(cache=True, parallel=True)
def same_parallel(x, y, op):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for i in prange(of.size):
        of[i] = _f(op, xf[i], yf[i])
    return out


@njit(cache=True)
def pnp(big, small, pre, n, post, op, small_is_y):
    out = np.empty_like(big)
    bf = big.reshape(-1)
    sf = small.reshape(-1)
    of = out.reshape(-1)
    k = 0
    for p in range(pre):
        for j in range(n):
            s = sf[j]
            for q in range(post):
                if small_is_y:
                    of[k] = _f(op, bf[k], s)
                else:
                    of[k] = _f(op, s, bf[k])
                k += 1
    return out


@njit(cache=True, parallel=True)
def pnp_parallel(big, small, pre, n, post, op, small_is_y):
    out = np.empty_like(big)
    bf = big.reshape(-1)
    sf = small.reshape(-1)
    of = out.reshape(-1)
    for r in prange(pre * n):
        s = sf[r % n]
        base = r * post
        for q in range(post):
            if small_is_y:
                of[base + q] = _f(op, bf[base + q], s)
            else:
                of[base + q] = _f(op, s, bf[base + q])
    return out


@njit(cache=True)
def strided(x, y, shape, xst, yst, op):
    """Flat output of the broadcast; shape/xst/yst are int64 arrays (element strides, 0 = broadcast)."""
    total = 1
    for d in shape:
        total *= d
    out = np.empty(total, x.dtype)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    xo = 0
    yo = 0
    for i in range(total):
        out[i] = _f(op, xf[xo], yf[yo])
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            xo += xst[d]
            yo += yst[d]
            if idx[d] < shape[d]:
                break
            xo -= xst[d] * shape[d]
            yo -= yst[d] * shape[d]
            idx[d] = 0
            d -= 1
    return out


@njit(cache=True)
def grad_same(x, y, dout, op):
    dx = np.empty_like(x)
    dy = np.empty_like(y)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    for i in range(gf.size):
        da, db = _df(op, xf[i], yf[i], gf[i])
        dxf[i] = da
        dyf[i] = db
    return dx, dy


@njit(cache=True, parallel=True)
def grad_same_parallel(x, y, dout, op):
    dx = np.empty_like(x)
    dy = np.empty_like(y)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    for i in prange(gf.size):
        da, db = _df(op, xf[i], yf[i], gf[i])
        dxf[i] = da
        dyf[i] = db
    return dx, dy


@njit(cache=True)
def grad_pnp(big, small, dout, pre, n, post, op, small_is_y):
    """(d_big, d_small): d_small sums over the pre and post dims."""
    dbig = np.empty_like(big)
    dsmall = np.zeros_like(small)
    bf = big.reshape(-1)
    sf = small.reshape(-1)
    gf = dout.reshape(-1)
    dbf = dbig.reshape(-1)
    dsf = dsmall.reshape(-1)
    k = 0
    for p in range(pre):
        for j in range(n):
            s = sf[j]
            acc = dsf[j]
            for q in range(post):
                if small_is_y:
                    db, ds = _df(op, bf[k], s, gf[k])
                else:
                    ds, db = _df(op, s, bf[k], gf[k])
                dbf[k] = db
                acc += ds
                k += 1
            dsf[j] = acc
    return dbig, dsmall


@njit(cache=True, parallel=True)
def grad_pnp_parallel(big, small, dout, pre, n, post, op, small_is_y):
    # one iteration per small element j: it alone writes dsmall[j] and its slice of dbig
    dbig = np.empty_like(big)
    dsmall = np.zeros_like(small)
    bf = big.reshape(-1)
    sf = small.reshape(-1)
    gf = dout.reshape(-1)
    dbf = dbig.reshape(-1)
    dsf = dsmall.reshape(-1)
    for j in prange(n):
        s = sf[j]
        acc = dsf[j]
        for p in range(pre):
            base = (p * n + j) * post
            for q in range(post):
                k = base + q
                if small_is_y:
                    db, ds = _df(op, bf[k], s, gf[k])
                else:
                    ds, db = _df(op, s, bf[k], gf[k])
                dbf[k] = db
                acc += ds
        dsf[j] = acc
    return dbig, dsmall


@njit(cache=True)
def grad_strided(x, y, dout, shape, xst, yst, op):
    """(dx, dy) shaped like x and y; broadcast dims (stride 0) accumulate."""
    dx = np.zeros_like(x)
    dy = np.zeros_like(y)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    xo = 0
    yo = 0
    for i in range(gf.size):
        da, db = _df(op, xf[xo], yf[yo], gf[i])
        dxf[xo] += da
        dyf[yo] += db
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            xo += xst[d]
            yo += yst[d]
            if idx[d] < shape[d]:
                break
            xo -= xst[d] * shape[d]
            yo -= yst[d] * shape[d]
            idx[d] = 0
            d -= 1
    return dx, dy
