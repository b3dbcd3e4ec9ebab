"""Kernels for scale, tanh, mul (flattened matmul), mean and sum."""
import numpy as np
from numba import njit, prange

from . import blas


# Per-element functions (`_scale_el`, `_tanh_el`, ...) are what the kernels below and the fuse pass's
# generated kernels both call (OpDef.elementwise), so a fused chain rounds exactly as the ops do.
@njit(cache=True, error_model="numpy", inline="always")
def _scale_el(x, scale, bias):
    return x * scale + bias


@njit(cache=True, error_model="numpy", inline="always")
def _tanh_el(x):
    return np.tanh(x)


@njit(cache=True, error_model="numpy", inline="always")
def _tanh_grad_el(out, dout):
    return dout * (1 - out * out)


# serial and parallel twins share their per-element bodies (`_scale_at`, `_add_at`); only the loop differs
@njit(cache=True, error_model="numpy", inline="always")
def _scale_at(xf, of, scale, bias, i):
    of[i] = _scale_el(xf[i], scale, bias)


@njit(cache=True, error_model="numpy")
def scale(x, scale, bias):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        _scale_at(xf, of, scale, bias, i)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def scale_parallel(x, scale, bias):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in prange(xf.size):
        _scale_at(xf, of, scale, bias, i)
    return out


@njit(cache=True, error_model="numpy")
def tanh(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        of[i] = _tanh_el(xf[i])
    return out


@njit(cache=True, error_model="numpy")
def tanh_grad(out, dout):
    dx = np.empty_like(out)
    of, gf, df = out.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(of.size):
        df[i] = _tanh_grad_el(of[i], gf[i])
    return dx


@njit(cache=True, error_model="numpy")
def matmul2d(a, b):
    return blas.dot(a, b)


@njit(cache=True, error_model="numpy")
def matmul2d_tn(a, b):
    """a.T @ b (the transpose goes to BLAS as a flag, no copy)"""
    return blas.dot(a.T, b)


@njit(cache=True, error_model="numpy")
def matmul_acc(a, b, out):
    """out += a @ b"""
    blas.gemm(a, b, out, 1.0, 1.0)


@njit(cache=True, error_model="numpy", inline="always")
def _decay_at(of, beta, gf, i, one_block):
    if one_block:
        of[i] = beta * of[i]
    else:
        of[i] = beta * of[i] + gf[i]


@njit(cache=True, error_model="numpy")
def matmul_tn_decay_acc(a, d, out, beta):
    """out = beta * out + a.T @ d, rounded as the two steps `g = a.T @ d; out = beta * out + g` round it:
    out is scaled, then BLAS adds the product (beta = 1) when it sums the inner dimension in one block;
    else the product is made, then added. (BLAS's own beta may round beta * out + product once.)"""
    one_block = a.shape[0] <= blas.ONE_BLOCK_K
    g = np.empty((0, 0), out.dtype) if one_block else blas.dot(a.T, d)
    of, gf = out.reshape(-1), g.reshape(-1)
    for i in range(of.size):
        _decay_at(of, beta, gf, i, one_block)
    if one_block:
        blas.gemm(a.T, d, out, 1.0, 1.0)


@njit(cache=True, error_model="numpy", parallel=True)
def matmul_tn_decay_acc_parallel(a, d, out, beta):
    one_block = a.shape[0] <= blas.ONE_BLOCK_K
    g = np.empty((0, 0), out.dtype) if one_block else blas.dot(a.T, d)
    of = out.reshape(-1)  # one view per statement: tuple-unpacked views miscompile under parallel=True
    gf = g.reshape(-1)
    for i in prange(of.size):
        _decay_at(of, beta, gf, i, one_block)
    if one_block:
        blas.gemm(a.T, d, out, 1.0, 1.0)


@njit(cache=True, error_model="numpy")
def matmul_row_acc(a, b, row):
    """a @ b + row, `row` added to every row (blas.gemm_row: no pass of its own)."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    blas.gemm_row(a, b, row, out)
    return out


@njit(cache=True, error_model="numpy")
def matmul2d_nt(a, b):
    """a @ b.T"""
    return blas.dot(a, b.T)


@njit(cache=True, error_model="numpy")
def mean(x):
    acc = 0.0
    xf = x.reshape(-1)
    for i in range(xf.size):
        acc += xf[i]
    out = np.empty(1, x.dtype)
    out[0] = acc / xf.size
    return out


@njit(cache=True, error_model="numpy")
def mean_grad(x, dout):
    dx = np.empty_like(x)
    df = dx.reshape(-1)
    g = dout.reshape(-1)[0] / df.size
    for i in range(df.size):
        df[i] = g
    return dx


@njit(cache=True, error_model="numpy")
def add(a, b):
    out = np.empty_like(a)
    af = a.reshape(-1)
    bf = b.reshape(-1)
    of = out.reshape(-1)
    for i in range(of.size):
        of[i] = af[i] + bf[i]
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _add_at(af, xf, i):
    af[i] += xf[i]


@njit(cache=True, error_model="numpy")
def add_into(acc, x):
    """acc += x, in place."""
    af = acc.reshape(-1)
    xf = x.reshape(-1)
    for i in range(af.size):
        _add_at(af, xf, i)
    return acc


@njit(cache=True, error_model="numpy", parallel=True)
def add_into_parallel(acc, x):
    af = acc.reshape(-1)
    xf = x.reshape(-1)
    for i in prange(af.size):
        _add_at(af, xf, i)
    return acc
