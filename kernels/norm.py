"""Kernels for batch_norm (per channel of x viewed as (N, C, S)) and layer_norm (per row of x viewed as
(R, D)). batch_norm's statistics accumulate in float64, layer_norm's in the data's dtype (per row,
short sums); variances are biased. Serial and parallel twins share the
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
# A row's sums accumulate in the data's dtype (float32 rows run at twice float64's vector width: a
# Transformer's [2048, 128] layer_norm took 165 us in float64, 80 in float32), each compiled with
# reassociation so LLVM vectorizes it (a running sum is a chain of dependent adds). The sums are of
# deviations from the row's first element, so a large common offset cancels before it is summed.
# The loops only read, so no run-time overlap check picks another order: the bits depend on the row
# length only, neither on addresses nor on thread count.
_REASSOC = ("reassoc", "nsz")


@njit(cache=True, error_model="numpy", fastmath=set(_REASSOC))
def _row_moments(xs):
    """(mean, biased variance) of a row in its dtype: the mean from deviations from xs[0], then the
    variance from deviations from the mean (two passes)."""
    d = xs.dtype.type(xs.size)
    x0 = xs[0]
    s = x0 - x0
    for i in range(xs.size):
        s += xs[i] - x0
    mu = x0 + s / d
    v = x0 - x0
    for i in range(xs.size):
        c = xs[i] - mu
        v += c * c
    return mu, v / d


@njit(cache=True, error_model="numpy", fastmath=set(_REASSOC))
def _row_grad_sums(xs, gs, scale, mu, inv):
    """sum(dxhat) and sum(dxhat * xhat) of a row in its dtype, dxhat = dy * scale, xhat = (x - mu) * inv."""
    s1 = mu - mu
    s2 = mu - mu
    for i in range(xs.size):
        t = gs[i] * scale[i]
        s1 += t
        s2 += t * ((xs[i] - mu) * inv)
    return s1, s2


@njit(cache=True, error_model="numpy")
def _ln_rows(x2, scale, bias, eps, y2, mean, var, r0, r1):
    d = x2.shape[1]
    one, eps = x2.dtype.type(1), x2.dtype.type(eps)  # every step in x2's dtype
    for r in range(r0, r1):
        xs = x2[r]
        mu, v = _row_moments(xs)
        mean[r] = mu
        var[r] = v
        inv = one / np.sqrt(v + eps)
        ys = y2[r]
        for i in range(d):
            ys[i] = (xs[i] - mu) * inv * scale[i] + bias[i]


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
    one, eps, dd = x2.dtype.type(1), x2.dtype.type(eps), x2.dtype.type(d)  # row math in x2's dtype
    for r in range(r0, r1):
        mu = mean[r]
        inv = one / np.sqrt(var[r] + eps)
        xs = x2[r]
        gs = dy2[r]
        s1, s2 = _row_grad_sums(xs, gs, scale, mu, inv)
        m1, m2 = s1 / dd, s2 / dd
        ds = dx2[r]
        for i in range(d):  # stores one array per loop: few enough overlap checks to vectorize
            xh = (xs[i] - mu) * inv
            ds[i] = inv * (gs[i] * scale[i] - m1 - xh * m2)
        for i in range(d):
            g = gs[i]
            dscale[i] += g * ((xs[i] - mu) * inv)
            dbias[i] += g


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
