"""Kernels for batch_norm (per channel of x viewed as (N, C, S)) and layer_norm (per row of x viewed as
(R, D)). Statistics accumulate in float64; variances are biased. Serial and parallel twins share the
per-channel / per-row-block helpers: batch_norm runs channels in prange, layer_norm row blocks (its
scale/shift gradients are summed from per-block partials).
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy")
def _channel_moments(x3, c):
    """Mean and biased variance of x3[:, c, :] (two passes, float64)."""
    m = x3.shape[0] * x3.shape[2]
    s = 0.0
    for n in range(x3.shape[0]):
        for i in range(x3.shape[2]):
            s += x3[n, c, i]
    mean = s / m
    v = 0.0
    for n in range(x3.shape[0]):
        for i in range(x3.shape[2]):
            d = x3[n, c, i] - mean
            v += d * d
    return mean, v / m


@njit(cache=True, error_model="numpy")
def _affine_channel(x3, y3, c, a, b):
    """y3[:, c, :] = x3[:, c, :] * a + b."""
    ab = np.empty(2, y3.dtype)  # a and b in the element dtype: float32 stays float32 in the loop
    ab[0] = a
    ab[1] = b
    a = ab[0]
    b = ab[1]
    for n in range(x3.shape[0]):
        xs = x3[n, c]
        ys = y3[n, c]
        for i in range(xs.size):
            ys[i] = xs[i] * a + b


@njit(cache=True, error_model="numpy")
def _bn_channel(x3, scale, bias, mean_in, var_in, eps, momentum, is_test, y3, saved, mean_out, var_out, c):
    if is_test:
        mean, var = np.float64(mean_in[c]), np.float64(var_in[c])
    else:
        mean, var = _channel_moments(x3, c)
        mean_out[c] = momentum * mean_in[c] + (1 - momentum) * mean
        var_out[c] = momentum * var_in[c] + (1 - momentum) * var
    inv = 1.0 / np.sqrt(var + eps)
    saved[0, c] = mean
    saved[1, c] = inv
    a = scale[c] * inv
    _affine_channel(x3, y3, c, a, bias[c] - mean * a)


@njit(cache=True, error_model="numpy")
def batch_norm(x3, scale, bias, mean_in, var_in, eps, momentum, is_test, mean_out, var_out):
    """(y3, saved) with saved = [mean, 1/sqrt(var + eps)] per channel: the batch's in training (and
    mean_out/var_out <- momentum * moving + (1 - momentum) * batch), the moving ones when is_test."""
    y3 = np.empty_like(x3)
    saved = np.empty((2, x3.shape[1]), x3.dtype)
    for c in range(x3.shape[1]):
        _bn_channel(x3, scale, bias, mean_in, var_in, eps, momentum, is_test, y3, saved, mean_out, var_out, c)
    return y3, saved


@njit(cache=True, error_model="numpy", parallel=True)
def batch_norm_parallel(x3, scale, bias, mean_in, var_in, eps, momentum, is_test, mean_out, var_out):
    y3 = np.empty_like(x3)
    saved = np.empty((2, x3.shape[1]), x3.dtype)
    for c in prange(x3.shape[1]):
        _bn_channel(x3, scale, bias, mean_in, var_in, eps, momentum, is_test, y3, saved, mean_out, var_out, c)
    return y3, saved


@njit(cache=True, error_model="numpy")
def _bn_grad_channel(x3, dy3, scale, saved, is_test, dx3, dscale, dbias, c):
    mean, inv = np.float64(saved[0, c]), np.float64(saved[1, c])
    m = x3.shape[0] * x3.shape[2]
    sdy = 0.0
    sdyx = 0.0
    for n in range(x3.shape[0]):
        for i in range(x3.shape[2]):
            g = np.float64(dy3[n, c, i])
            sdy += g
            sdyx += g * (x3[n, c, i] - mean) * inv
    dscale[c] = sdyx
    dbias[c] = sdy
    k = scale[c] * inv
    if is_test:  # the statistics are constants
        _affine_channel(dy3, dx3, c, k, 0.0)
        return
    # dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = (x - mean) * inv
    a = k * sdyx / m * inv
    b = k * (sdy / m - sdyx / m * inv * mean)
    for n in range(x3.shape[0]):
        xs = x3[n, c]
        gs = dy3[n, c]
        ds = dx3[n, c]
        for i in range(xs.size):
            ds[i] = k * gs[i] - a * xs[i] - b


@njit(cache=True, error_model="numpy")
def batch_norm_grad(x3, dy3, scale, saved, is_test):
    """(dx3, dscale, dbias) of batch_norm from the saved [mean, inv std]."""
    dx3 = np.empty_like(x3)
    dscale = np.empty_like(scale)
    dbias = np.empty_like(scale)
    for c in range(x3.shape[1]):
        _bn_grad_channel(x3, dy3, scale, saved, is_test, dx3, dscale, dbias, c)
    return dx3, dscale, dbias


@njit(cache=True, error_model="numpy", parallel=True)
def batch_norm_grad_parallel(x3, dy3, scale, saved, is_test):
    dx3 = np.empty_like(x3)
    dscale = np.empty_like(scale)
    dbias = np.empty_like(scale)
    for c in prange(x3.shape[1]):
        _bn_grad_channel(x3, dy3, scale, saved, is_test, dx3, dscale, dbias, c)
    return dx3, dscale, dbias


# ---------------------------------------------------------------- layer_norm
# A row's sums run in 8 interleaved float64 partial sums, added in a fixed order at the end: one
# running sum is a chain of dependent adds (4 cycles each), 8 independent ones vectorise. The order
# is fixed by the code, so the bits depend neither on the arrays' addresses nor on the thread count.

@njit(cache=True, error_model="numpy", inline="always")
def _dot8(a, b):
    """sum(a * b) over a row, in float64."""
    d = a.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    d8 = d - d % 8
    for i in range(0, d8, 8):
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(d8, d):
        s += a[i] * b[i]
    return s


@njit(cache=True, error_model="numpy", inline="always")
def _sum8(a):
    """sum(a) over a row, in float64."""
    d = a.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    d8 = d - d % 8
    for i in range(0, d8, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(d8, d):
        s += a[i]
    return s


@njit(cache=True, error_model="numpy")
def _ln_rows(x2, scale, bias, eps, y2, mean, var, r0, r1):
    d = x2.shape[1]
    c = np.empty(d)  # the row minus its mean, float64
    for r in range(r0, r1):
        xs = x2[r]
        mu = _sum8(xs) / d
        for i in range(d):
            c[i] = xs[i] - mu
        v = _dot8(c, c) / d
        mean[r] = mu
        var[r] = v
        inv = 1.0 / np.sqrt(v + eps)
        ys = y2[r]
        for i in range(d):
            ys[i] = c[i] * inv * scale[i] + bias[i]


@njit(cache=True, error_model="numpy")
def _blocks(rows, nblk):
    """Row block b is rows[b * rows // nblk : (b + 1) * rows // nblk]."""
    return max(1, min(rows, nblk))


@njit(cache=True, error_model="numpy")
def layer_norm(x2, scale, bias, eps, nblk):
    """(y2, mean, var) normalising each row of x2; scale and bias have one entry per column."""
    y2 = np.empty_like(x2)
    mean = np.empty(x2.shape[0], x2.dtype)
    var = np.empty(x2.shape[0], x2.dtype)
    rows = x2.shape[0]
    nb = _blocks(rows, nblk)
    for b in range(nb):
        _ln_rows(x2, scale, bias, eps, y2, mean, var, b * rows // nb, (b + 1) * rows // nb)
    return y2, mean, var


@njit(cache=True, error_model="numpy", parallel=True)
def layer_norm_parallel(x2, scale, bias, eps, nblk):
    y2 = np.empty_like(x2)
    mean = np.empty(x2.shape[0], x2.dtype)
    var = np.empty(x2.shape[0], x2.dtype)
    rows = x2.shape[0]
    nb = _blocks(rows, nblk)
    for b in prange(nb):
        _ln_rows(x2, scale, bias, eps, y2, mean, var, b * rows // nb, (b + 1) * rows // nb)
    return y2, mean, var


@njit(cache=True, error_model="numpy")
def _ln_grad_rows(x2, dy2, scale, mean, var, eps, dx2, dscale, dbias, r0, r1):
    """dx for rows r0:r1; their share of dscale / dbias is added to the given (float64) partials."""
    d = x2.shape[1]
    xh = np.empty(d)  # the normalised row, float64
    t = np.empty(d)  # dxhat = dy * scale
    for r in range(r0, r1):
        mu = np.float64(mean[r])
        inv = 1.0 / np.sqrt(np.float64(var[r]) + eps)
        xs = x2[r]
        gs = dy2[r]
        for i in range(d):
            xh[i] = (xs[i] - mu) * inv
            t[i] = gs[i] * scale[i]
        for i in range(d):
            dscale[i] += gs[i] * xh[i]
        for i in range(d):
            dbias[i] += gs[i]
        s1 = _sum8(t)  # sum of dxhat
        s2 = _dot8(t, xh)  # sum of dxhat * xhat
        ds = dx2[r]
        for i in range(d):
            ds[i] = inv * (t[i] - s1 / d - xh[i] * s2 / d)


@njit(cache=True, error_model="numpy")
def layer_norm_grad(x2, dy2, scale, mean, var, eps, nblk):
    """(dx2, dscale, dbias) of layer_norm."""
    dx2 = np.empty_like(x2)
    part = np.zeros((2, x2.shape[1]))
    _ln_grad_rows(x2, dy2, scale, mean, var, eps, dx2, part[0], part[1], 0, x2.shape[0])
    return dx2, part[0].astype(x2.dtype), part[1].astype(x2.dtype)


@njit(cache=True, error_model="numpy", parallel=True)
def layer_norm_grad_parallel(x2, dy2, scale, mean, var, eps, nblk):
    dx2 = np.empty_like(x2)
    rows = x2.shape[0]
    nb = _blocks(rows, nblk)
    part = np.zeros((nb, 2, x2.shape[1]))
    for b in prange(nb):
        _ln_grad_rows(x2, dy2, scale, mean, var, eps, dx2, part[b, 0], part[b, 1], b * rows // nb, (b + 1) * rows // nb)
    tot = part.sum(axis=0)
    return dx2, tot[0].astype(x2.dtype), tot[1].astype(x2.dtype)
