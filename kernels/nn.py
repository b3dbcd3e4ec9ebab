"""Kernels for matmul (batched, kernels/blas.py), lookup_table and dropout."""
import numpy as np
from numba import njit, prange

from . import blas


@njit(cache=True, error_model="numpy")
def _mm_into(a, b, ta, tb, alpha, out):
    """out = alpha * op(a) @ op(b), written straight into out (a 2-D view with contiguous rows);
    transposes reach BLAS as flags, no copy."""
    blas.gemm(a.T if ta else a, b.T if tb else b, out, alpha, 0.0)


# Tiny products with a transposed b run slower in OpenBLAS than the same product of a row-major copy of
# b^T: an attention step's 128 (64, 32) x (32, 64) products took 530-710 us through the flag and 390 us
# with each b^T copied first (the same numbers: same kernel, same order of additions).
_TINY = 1 << 20  # multiply-adds per matrix


@njit(cache=True, error_model="numpy", inline="always")
def _bmm_one(a, b, ta, tb, alpha, out, scratch):
    if tb and scratch.size:
        for r in range(b.shape[0]):
            for c in range(b.shape[1]):
                scratch[c, r] = b[r, c]
        _mm_into(a, scratch, ta, False, alpha, out)
    else:
        _mm_into(a, b, ta, tb, alpha, out)


@njit(cache=True, error_model="numpy", inline="always")
def _scratch(a, b, ta, tb):
    """A buffer for b^T when its products are tiny and take b transposed, else an empty one."""
    m = a.shape[2] if ta else a.shape[1]
    if tb and m * b.shape[1] * b.shape[2] <= _TINY:
        return np.empty((b.shape[2], b.shape[1]), b.dtype)
    return np.empty((0, 0), b.dtype)


@njit(cache=True, error_model="numpy")
def bmm(a, b, ai, bi, ta, tb, alpha):
    """out[k] = alpha * op(a[ai[k]]) @ op(b[bi[k]]) for 3-D a, b; op transposes when ta / tb."""
    m = a.shape[2] if ta else a.shape[1]
    n = b.shape[1] if tb else b.shape[2]
    out = np.empty((ai.size, m, n), a.dtype)
    scratch = _scratch(a, b, ta, tb)
    for k in range(ai.size):
        _bmm_one(a[ai[k]], b[bi[k]], ta, tb, alpha, out[k], scratch)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def bmm_parallel(a, b, ai, bi, ta, tb, alpha):
    """`bmm` with the batch spread over threads (each iteration writes its own out[k])."""
    m = a.shape[2] if ta else a.shape[1]
    n = b.shape[1] if tb else b.shape[2]
    out = np.empty((ai.size, m, n), a.dtype)
    for k in prange(ai.size):
        _bmm_one(a[ai[k]], b[bi[k]], ta, tb, alpha, out[k], _scratch(a, b, ta, tb))
    return out


@njit(cache=True, error_model="numpy")
def batch_sum(g, idx, nb):
    """out[j] = sum of g[k] over k with idx[k] == j (undoes batch broadcasting)."""
    out = np.zeros((nb, g.shape[1], g.shape[2]), g.dtype)
    for k in range(idx.size):
        out[idx[k]] += g[k]
    return out


@njit(cache=True, error_model="numpy")
def lookup(w, ids, padding_idx):
    """(rows of w picked by ids (zeros at padding_idx), -1) or (partial, position of the first bad id)."""
    flat = ids.reshape(-1)
    out = np.empty((flat.size, w.shape[1]), w.dtype)
    for i in range(flat.size):
        r = flat[i]
        if r < 0 or r >= w.shape[0]:
            return out, i
        if r == padding_idx:
            out[i, :] = 0
        else:
            out[i, :] = w[r]
    return out, -1


@njit(cache=True, error_model="numpy")
def lookup_grad(ids, dout, vocab, padding_idx):
    """Dense gradient of w: dout's rows added into the rows they were read from."""
    flat = ids.reshape(-1)
    dw = np.zeros((vocab, dout.shape[1]), dout.dtype)
    for i in range(flat.size):
        r = flat[i]
        if r != padding_idx and 0 <= r < vocab:
            dw[r] += dout[i]
    return dw


@njit(cache=True, error_model="numpy")
def dropout(x, p, seed, keep_scale):
    """(x * mask * keep_scale, mask) with mask[i] = 1 with probability 1 - p, drawn after seeding."""
    np.random.seed(seed)
    out = np.empty_like(x)
    mask = np.empty_like(x)
    xf, of, mf = x.reshape(-1), out.reshape(-1), mask.reshape(-1)
    for i in range(xf.size):
        if np.random.random() >= p:
            mf[i] = 1
            of[i] = xf[i] * keep_scale
        else:
            mf[i] = 0
            of[i] = 0
    return out, mask


@njit(cache=True, error_model="numpy", inline="always")
def _dropout_grad_el(mask, dout, keep_scale):
    """Per element, shared with the fuse pass's generated kernels (OpDef.elementwise)."""
    return dout * mask * keep_scale


@njit(cache=True, error_model="numpy")
def dropout_grad(mask, dout, keep_scale):
    dx = np.empty_like(dout)
    mf, gf, df = mask.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(gf.size):
        df[i] = _dropout_grad_el(mf[i], gf[i], keep_scale)
    return dx
