"""Activation kernels: unary functions by op code, their gradients, and softmax over a (pre, n, post) view.

Unary codes: 0 relu, 1 sigmoid, 2 exp, 3 log, 4 square, 5 sqrt, 6 abs. A gradient kernel reads the
forward value its rule needs: Out for relu, sigmoid, exp, sqrt; X for log, square, abs.
"""
import numpy as np
from numba import literal_unroll, njit, prange


@njit(cache=True, error_model="numpy", inline="always")
def _u(op, x):
    if op == 0:
        return x if x > 0 else x * 0
    if op == 1:  # stable on both sides
        if x >= 0:
            return 1 / (1 + np.exp(-x))
        e = np.exp(x)
        return e / (1 + e)
    if op == 2:
        return np.exp(x)
    if op == 3:
        return np.log(x)
    if op == 4:
        return x * x
    if op == 5:
        return np.sqrt(x)
    return np.abs(x)


@njit(cache=True, error_model="numpy", inline="always")
def _du(op, v, g):
    if op == 0:
        return g if v > 0 else g * 0
    if op == 1:
        return g * v * (1 - v)
    if op == 2:
        return g * v
    if op == 3:
        return g / v
    if op == 4:
        return g * (v + v)
    if op == 5:
        return g / (v + v)
    if v > 0:
        return g
    if v < 0:
        return -g
    return g * 0


@njit(cache=True, error_model="numpy", inline="always")
def _map(xf, of, op):
    for i in range(xf.size):
        of[i] = _u(op, xf[i])


@njit(cache=True, error_model="numpy", inline="always")
def _map_parallel(xf, of, op):
    for i in prange(xf.size):
        of[i] = _u(op, xf[i])


@njit(cache=True, error_model="numpy", inline="always")
def _map_grad(vf, gf, df, op):
    for i in range(vf.size):
        df[i] = _du(op, vf[i], gf[i])


@njit(cache=True, error_model="numpy", inline="always")
def _map_grad_parallel(vf, gf, df, op):
    for i in prange(vf.size):
        df[i] = _du(op, vf[i], gf[i])


# The op code is tested once, outside the loop: literal_unroll versions the loop per code, so the
# inlined body folds to one function and vectorizes (a 7-way switch per element did not: 28x slower).
_CODES = (0, 1, 2, 3, 4, 5, 6)


@njit(cache=True, error_model="numpy")
def unary(x, op):
    xf = x.reshape(-1)
    of = np.empty(xf.size, x.dtype)  # a fresh flat output vectorises better; callers reshape
    for code in literal_unroll(_CODES):
        if code == op:
            _map(xf, of, code)
    return of


@njit(cache=True, error_model="numpy", parallel=True)
def unary_parallel(x, op):
    xf = x.reshape(-1)
    of = np.empty(xf.size, x.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_parallel(xf, of, code)
    return of


@njit(cache=True, error_model="numpy")
def unary_grad(v, dout, op):
    vf = v.reshape(-1)
    gf = dout.reshape(-1)
    df = np.empty(vf.size, v.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_grad(vf, gf, df, code)
    return df


@njit(cache=True, error_model="numpy", parallel=True)
def unary_grad_parallel(v, dout, op):
    vf = v.reshape(-1)
    gf = dout.reshape(-1)
    df = np.empty(vf.size, v.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_grad_parallel(vf, gf, df, code)
    return df


@njit(cache=True, error_model="numpy", inline="always")
def _softmax_block(xf, of, p, n, post):
    for q in range(post):
        base = p * n * post + q
        m = xf[base]
        for j in range(1, n):
            m = max(m, xf[base + j * post])
        s = 0.0
        for j in range(n):
            e = np.exp(xf[base + j * post] - m)
            of[base + j * post] = e
            s += e
        for j in range(n):
            of[base + j * post] /= s


@njit(cache=True, error_model="numpy")
def softmax(x, pre, n, post):
    """Softmax over the middle axis of x viewed as (pre, n, post); subtracts the max for stability."""
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for p in range(pre):
        _softmax_block(xf, of, p, n, post)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def softmax_parallel(x, pre, n, post):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for p in prange(pre):
        _softmax_block(xf, of, p, n, post)
    return out


@njit(cache=True, error_model="numpy")
def softmax_grad(out, dout, pre, n, post):
    """dX = Out * (dOut - sum(dOut * Out)) along the softmax axis."""
    dx = np.empty_like(out)
    of = out.reshape(-1)
    gf = dout.reshape(-1)
    df = dx.reshape(-1)
    for p in range(pre):
        for q in range(post):
            base = p * n * post + q
            s = 0.0
            for j in range(n):
                s += gf[base + j * post] * of[base + j * post]
            for j in range(n):
                k = base + j * post
                df[k] = of[k] * (gf[k] - s)
    return dx
