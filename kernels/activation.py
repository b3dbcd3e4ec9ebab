"""Activation kernels: unary functions by op code and their gradients (softmax: kernels/softmax.py).

The op codes below are the one table: fluidlite/ops/activation.py looks each op's code up here by
name. A gradient kernel reads the forward value its rule declares (X or Out). `a` is the op's one
float parameter (leaky_relu's alpha), ignored by the others.
"""
import math

import numpy as np
from numba import literal_unroll, njit, prange

from .vecmath_fma import expf_fma, fmaf

RELU, SIGMOID, EXP, LOG, SQUARE, SQRT, ABS, GELU, GELU_TANH, LEAKY_RELU, GELU_VEC = range(11)
_CODES = (RELU, SIGMOID, EXP, LOG, SQUARE, SQRT, ABS, GELU, GELU_TANH, LEAKY_RELU, GELU_VEC)
# GELU_VEC: float32 gelu in vectorizing float32 arithmetic (erfc as vecmath_fma's, within 7 ulp; 30x
# faster than math.erf's libm call per element); float64 keeps math.erf's full precision.

_RSQRT2 = 0.7071067811865476  # 1 / sqrt(2)
_RSQRT2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_SQRT2_PI = 0.7978845608028654  # sqrt(2 / pi)
_C = 0.044715


# One small per-element function per op (`_<name>_el`, `_<name>_grad_el`): the kernels below reach them
# through `_u`/`_du`; the fuse pass's generated kernels call them directly (OpDef.elementwise), so a
# fused chain rounds exactly as the ops do, and compiles only the function it needs (inlining `_u`
# types all eleven branches: ~0.2 s of compile per call site).
@njit(cache=True, error_model="numpy", inline="always")
def _relu_el(x, a):
    return x if x > 0 else x * 0


@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid_el(x, a):
    if x >= 0:  # stable on both sides
        return 1 / (1 + np.exp(-x))
    e = np.exp(x)
    return e / (1 + e)


@njit(cache=True, error_model="numpy", inline="always")
def _exp_el(x, a):
    return np.exp(x)


@njit(cache=True, error_model="numpy", inline="always")
def _log_el(x, a):
    return np.log(x)


@njit(cache=True, error_model="numpy", inline="always")
def _square_el(x, a):
    return x * x


@njit(cache=True, error_model="numpy", inline="always")
def _sqrt_el(x, a):
    return np.sqrt(x)


@njit(cache=True, error_model="numpy", inline="always")
def _abs_el(x, a):
    return np.abs(x)


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_el(x, a):
    return 0.5 * x * (1 + math.erf(x * _RSQRT2))


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_tanh_el(x, a):
    return 0.5 * x * (1 + np.tanh(_SQRT2_PI * (x + _C * x * x * x)))




@njit(cache=True, error_model="numpy", inline="always")
def _leaky_relu_el(x, a):
    return x if x > 0 else x * a


@njit(cache=True, error_model="numpy", inline="always")
def _relu_grad_el(v, g, a):
    return g if v > 0 else g * 0


@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid_grad_el(v, g, a):
    return g * v * (1 - v)


@njit(cache=True, error_model="numpy", inline="always")
def _exp_grad_el(v, g, a):
    return g * v


@njit(cache=True, error_model="numpy", inline="always")
def _log_grad_el(v, g, a):
    return g / v


@njit(cache=True, error_model="numpy", inline="always")
def _square_grad_el(v, g, a):
    return g * (v + v)


@njit(cache=True, error_model="numpy", inline="always")
def _sqrt_grad_el(v, g, a):
    return g / (v + v)


@njit(cache=True, error_model="numpy", inline="always")
def _abs_grad_el(v, g, a):
    if v > 0:
        return g
    if v < 0:
        return -g
    return g * 0


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_grad_el(v, g, a):
    return g * (0.5 * (1 + math.erf(v * _RSQRT2)) + v * _RSQRT2PI * np.exp(-0.5 * v * v))


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_tanh_grad_el(v, g, a):
    t = np.tanh(_SQRT2_PI * (v + _C * v * v * v))
    return g * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * _SQRT2_PI * (1 + 3 * _C * v * v))


_F32 = np.float32
# Numerical Recipes' erfcc coefficients (as vecmath_fma.erfc_fma), highest degree first, in float32
(_E9, _E8, _E7, _E6, _E5, _E4, _E3, _E2, _E1, _E0) = (
    _F32(c) for c in (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
                      0.37409196, 1.00002368, -1.26551223))


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_vec_el(v, a):
    """x Phi(x) in float32 fused multiply-adds, Phi(x) = erfc(-x / sqrt 2) / 2: within 7 ulp of the
    exact value wherever that is a normal float (6.5 measured over 6M points, tails included; float64
    arithmetic, 3 ulp, took 2x longer). erfc(z) = t exp(P(t) - z^2) as vecmath_fma.erfc_fma; z^2 is
    carried as two floats and P - z^2's rounding error put back after the exp, since an error e in
    the exponent is a relative error e of the value (up to 7e-6 near x = -13 if dropped)."""
    x = _F32(v)
    b = min(abs(x), _F32(16))  # beyond 16, erfc(b / sqrt 2) underflows float32 (a NaN stays NaN)
    sq = b * b
    h = _F32(0.5) * sq
    lo = _F32(0.5) * fmaf(b, b, -sq)  # b^2 / 2 = h + lo exactly
    t = _F32(1) / fmaf(_F32(0.5 * _RSQRT2), b, _F32(1))
    p = fmaf(fmaf(fmaf(fmaf(fmaf(_E9, t, _E8), t, _E7), t, _E6), t, _E5), t, _E4)
    p = fmaf(fmaf(fmaf(fmaf(p, t, _E3), t, _E2), t, _E1), t, _E0)
    s = p - h
    r = s - p
    err = (p - (s - r)) - (h + r)  # s + err = p - h exactly (Knuth's two-sum)
    ex = expf_fma(s)
    ex = fmaf(ex, err - lo, ex)  # erfc(|x| / sqrt 2) / t; t multiplies last, as t * ex can be subnormal
    # one select, not two returns: the prange loop of unary_parallel vectorized only this way
    return (_F32(0.5) * x * t) * ex if x <= 0 else x * fmaf(_F32(-0.5) * t, ex, _F32(1))


# exp(P) for P(t) in [-1.27, 0]: exp(_PC) times a degree-8 Taylor polynomial in P - _PC (|P - _PC| <= 0.64,
# truncation below 1e-7 relative): cheaper than a second full exp with its range reduction
_PC = -0.6328
_EXP_PC = _F32(math.exp(_PC))
(_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8) = (_F32(1 / math.factorial(k)) for k in range(9))


@njit(cache=True, error_model="numpy", inline="always")
def _gelu_vec_grad_el(v, g, a):
    """Phi(v) + v phi(v), times g, in float32 fused multiply-adds with one full exp: E = exp(-v^2 / 2)
    gives phi, and erfc(|v| / sqrt 2) = t exp(P(t)) E. Within 3e-7 absolute of the exact value
    (2.4e-7 measured over 5M points, near v = 0.03: 4 ulp of the value there); 1.35x faster than
    two full exps. float32 rounding in exp's argument costs relative accuracy only in the
    tails, where the values are small."""
    x = _F32(v)
    e2 = expf_fma(_F32(-0.5) * x * x)
    t = _F32(1) / fmaf(_F32(0.5 * _RSQRT2), abs(x), _F32(1))
    p = fmaf(fmaf(fmaf(fmaf(fmaf(_E9, t, _E8), t, _E7), t, _E6), t, _E5), t, _E4)
    p = fmaf(fmaf(fmaf(fmaf(p, t, _E3), t, _E2), t, _E1), t, _E0)
    u = p - _F32(_PC)
    q = fmaf(fmaf(fmaf(fmaf(_Q8, u, _Q7), u, _Q6), u, _Q5), u, _Q4)
    q = fmaf(fmaf(fmaf(fmaf(q, u, _Q3), u, _Q2), u, _Q1), u, _Q0)
    e = (t * (q * _EXP_PC)) * e2  # erfc(|v| / sqrt 2)
    phi_ = _F32(0.5) * e if x <= 0 else fmaf(_F32(-0.5), e, _F32(1))  # Phi(v) = erfc(-v / sqrt 2) / 2
    return g * fmaf(x * _F32(_RSQRT2PI), e2, phi_)


@njit(cache=True, error_model="numpy", inline="always")
def _leaky_relu_grad_el(v, g, a):
    return g if v > 0 else g * a


@njit(cache=True, error_model="numpy", inline="always")
def _u(op, x, a):
    if op == RELU:
        return _relu_el(x, a)
    if op == SIGMOID:
        return _sigmoid_el(x, a)
    if op == EXP:
        return _exp_el(x, a)
    if op == LOG:
        return _log_el(x, a)
    if op == SQUARE:
        return _square_el(x, a)
    if op == SQRT:
        return _sqrt_el(x, a)
    if op == ABS:
        return _abs_el(x, a)
    if op == GELU:
        return _gelu_el(x, a)
    if op == GELU_TANH:
        return _gelu_tanh_el(x, a)
    if op == GELU_VEC:
        return _gelu_vec_el(x, a)
    return _leaky_relu_el(x, a)


@njit(cache=True, error_model="numpy", inline="always")
def _du(op, v, g, a):
    if op == RELU:
        return _relu_grad_el(v, g, a)
    if op == SIGMOID:
        return _sigmoid_grad_el(v, g, a)
    if op == EXP:
        return _exp_grad_el(v, g, a)
    if op == LOG:
        return _log_grad_el(v, g, a)
    if op == SQUARE:
        return _square_grad_el(v, g, a)
    if op == SQRT:
        return _sqrt_grad_el(v, g, a)
    if op == ABS:
        return _abs_grad_el(v, g, a)
    if op == GELU:
        return _gelu_grad_el(v, g, a)
    if op == GELU_TANH:
        return _gelu_tanh_grad_el(v, g, a)
    if op == GELU_VEC:
        return _gelu_vec_grad_el(v, g, a)
    return _leaky_relu_grad_el(v, g, a)


# Serial and parallel twins share their loop body, an inlined per-element function (`_u`, `_du`);
# only the loop (range or prange) differs. (A prange over blocks of a range loop did not vectorize.)
@njit(cache=True, error_model="numpy", inline="always")
def _map(xf, of, code, a):
    for i in range(xf.size):
        of[i] = _u(code, xf[i], a)


@njit(cache=True, error_model="numpy", inline="always")
def _map_parallel(xf, of, code, a):
    for i in prange(xf.size):
        of[i] = _u(code, xf[i], a)


@njit(cache=True, error_model="numpy", inline="always")
def _map_grad(vf, gf, df, code, a):
    for i in range(vf.size):
        df[i] = _du(code, vf[i], gf[i], a)


@njit(cache=True, error_model="numpy", inline="always")
def _map_grad_parallel(vf, gf, df, code, a):
    for i in prange(vf.size):
        df[i] = _du(code, vf[i], gf[i], a)


# The op code is tested once, outside the element loop: literal_unroll versions the loop per code, so
# the inlined body folds to one function and vectorizes (a switch per element did not: 28x slower).
@njit(cache=True, error_model="numpy")
def unary(x, op, a):
    """Flat op(x) (a fresh flat output vectorises better; callers reshape)."""
    xf = x.reshape(-1)
    of = np.empty(xf.size, x.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map(xf, of, code, a)
    return of


@njit(cache=True, error_model="numpy", parallel=True)
def unary_parallel(x, op, a):
    xf = x.reshape(-1)
    of = np.empty(xf.size, x.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_parallel(xf, of, code, a)
    return of


@njit(cache=True, error_model="numpy")
def unary_grad(v, dout, op, a):
    """Flat dX from the value the gradient reads (X or Out) and dOut."""
    vf = v.reshape(-1)
    gf = dout.reshape(-1)
    df = np.empty(vf.size, v.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_grad(vf, gf, df, code, a)
    return df


@njit(cache=True, error_model="numpy", parallel=True)
def unary_grad_parallel(v, dout, op, a):
    vf = v.reshape(-1)
    gf = dout.reshape(-1)
    df = np.empty(vf.size, v.dtype)
    for code in literal_unroll(_CODES):
        if code == op:
            _map_grad_parallel(vf, gf, df, code, a)
    return df
