"""Kernels for the losses: cross_entropy, softmax_with_cross_entropy, square_error_cost,
sigmoid_cross_entropy_with_logits. Class-wise inputs arrive as [N, C], labels as [N] int64."""
import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy")
def cross_entropy_hard(x, label, ignore_index, eps):
    """(-log(max(x[i, label[i]], eps)) as [N, 1], -1) or (partial, row of the first bad label)."""
    n, c = x.shape
    out = np.zeros((n, 1), x.dtype)
    for i in range(n):
        k = label[i]
        if k == ignore_index:
            continue
        if k < 0 or k >= c:
            return out, i
        out[i, 0] = -np.log(max(x[i, k], eps))
    return out, -1


@njit(cache=True, error_model="numpy")
def cross_entropy_hard_grad(x, label, dout, ignore_index, eps):
    n, c = x.shape
    dx = np.zeros_like(x)
    for i in range(n):
        k = label[i]
        if k != ignore_index and 0 <= k < c and x[i, k] >= eps:  # below eps the clamp makes it flat
            dx[i, k] = -dout[i, 0] / x[i, k]
    return dx


@njit(cache=True, error_model="numpy")
def cross_entropy_soft(x, label, eps):
    n, c = x.shape
    out = np.empty((n, 1), x.dtype)
    for i in range(n):
        acc = 0.0
        for j in range(c):
            acc += label[i, j] * np.log(max(x[i, j], eps))
        out[i, 0] = -acc
    return out


@njit(cache=True, error_model="numpy")
def cross_entropy_soft_grad(x, label, dout, eps):
    """(dX, dLabel) of -sum(label * log(max(x, eps)))."""
    dx = np.empty_like(x)
    dlabel = np.empty_like(x)
    n, c = x.shape
    for i in range(n):
        g = dout[i, 0]
        for j in range(c):
            p = x[i, j]
            dx[i, j] = -g * label[i, j] / p if p >= eps else 0
            dlabel[i, j] = -g * np.log(max(p, eps))
    return dx, dlabel


@njit(cache=True, error_model="numpy")
def _softmax_row(z, sm, i):
    """Writes softmax(z[i]) into sm[i]; returns log(sum(exp(z[i]))) computed stably."""
    m = z[i, 0]
    for j in range(z.shape[1]):
        m = max(m, z[i, j])
    s = 0.0
    for j in range(z.shape[1]):
        s += np.exp(z[i, j] - m)
    for j in range(z.shape[1]):
        sm[i, j] = np.exp(z[i, j] - m) / s
    return m + np.log(s)


@njit(cache=True, error_model="numpy")
def softmax_ce_hard(z, label, ignore_index):
    """(softmax, loss [N, 1], -1) or (partial, partial, row of the first bad label)."""
    n, c = z.shape
    sm = np.empty_like(z)
    loss = np.zeros((n, 1), z.dtype)
    for i in range(n):
        lse = _softmax_row(z, sm, i)
        k = label[i]
        if k == ignore_index:
            continue
        if k < 0 or k >= c:
            return sm, loss, i
        loss[i, 0] = lse - z[i, k]
    return sm, loss, -1


@njit(cache=True, error_model="numpy")
def softmax_ce_soft(z, label):
    n, c = z.shape
    sm = np.empty_like(z)
    loss = np.empty((n, 1), z.dtype)
    for i in range(n):
        lse = _softmax_row(z, sm, i)
        acc = 0.0
        for j in range(c):
            acc += label[i, j] * (lse - z[i, j])
        loss[i, 0] = acc
    return sm, loss


@njit(cache=True, error_model="numpy")
def _softmax_back(sm, dsm, dz, i):
    """dz[i] = gradient through softmax of the upstream dsm[i]."""
    dot = 0.0
    for j in range(sm.shape[1]):
        dot += dsm[i, j] * sm[i, j]
    for j in range(sm.shape[1]):
        dz[i, j] = sm[i, j] * (dsm[i, j] - dot)


@njit(cache=True, error_model="numpy")
def softmax_ce_hard_grad(sm, label, dloss, dsm, ignore_index):
    """dLogits = dloss * (softmax - onehot(label)) + the gradient flowing into Softmax."""
    n, c = sm.shape
    dz = np.empty_like(sm)
    for i in range(n):
        _softmax_back(sm, dsm, dz, i)
        k = label[i]
        if k == ignore_index or k < 0 or k >= c:
            continue
        g = dloss[i, 0]
        for j in range(c):
            dz[i, j] += g * sm[i, j]
        dz[i, k] -= g
    return dz


@njit(cache=True, error_model="numpy")
def softmax_ce_soft_grad(sm, label, dloss, dsm, eps):
    """(dLogits, dLabel); dLabel = -dloss * log(softmax), the log clamped at eps."""
    n, c = sm.shape
    dz = np.empty_like(sm)
    dlabel = np.empty_like(sm)
    for i in range(n):
        _softmax_back(sm, dsm, dz, i)
        g = dloss[i, 0]
        total = 0.0
        for j in range(c):
            total += label[i, j]
        for j in range(c):
            dz[i, j] += g * (sm[i, j] * total - label[i, j])
            dlabel[i, j] = -g * np.log(max(sm[i, j], eps))
    return dz, dlabel


# square_error's serial and parallel twins share their per-element bodies; only the loop differs
@njit(cache=True, error_model="numpy", inline="always")
def _sq_at(xf, yf, of, i):
    d = xf[i] - yf[i]
    of[i] = d * d


@njit(cache=True, error_model="numpy", inline="always")
def _sq_grad_at(xf, yf, gf, dxf, dyf, i):
    d = xf[i] - yf[i]
    dxf[i] = (d + d) * gf[i]
    dyf[i] = -dxf[i]


@njit(cache=True, error_model="numpy")
def square_error(x, y):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        _sq_at(xf, yf, of, i)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def square_error_parallel(x, y):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    of = out.reshape(-1)
    for i in prange(xf.size):
        _sq_at(xf, yf, of, i)
    return out


@njit(cache=True, error_model="numpy")
def square_error_grad(x, y, dout):
    """(dX, dY) = (2 (x - y) dout, -2 (x - y) dout)."""
    dx = np.empty_like(x)
    dy = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    for i in range(xf.size):
        _sq_grad_at(xf, yf, gf, dxf, dyf, i)
    return dx, dy


@njit(cache=True, error_model="numpy", parallel=True)
def square_error_grad_parallel(x, y, dout):
    dx = np.empty_like(x)
    dy = np.empty_like(x)
    # one view per statement: with parallel=True, Numba 0.68 miscompiles a 5-tuple unpacking of views
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    for i in prange(xf.size):
        _sq_grad_at(xf, yf, gf, dxf, dyf, i)
    return dx, dy


@njit(cache=True, error_model="numpy")
def sigmoid_ce(x, z):
    """max(x, 0) - x z + log(1 + exp(-|x|)): the logistic loss without overflow."""
    out = np.empty_like(x)
    xf, zf, of = x.reshape(-1), z.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        of[i] = max(v, 0) - v * zf[i] + np.log1p(np.exp(-abs(v)))
    return out


@njit(cache=True, error_model="numpy")
def sigmoid_ce_grad(x, z, dout):
    """(dX, dLabel) = ((sigmoid(x) - z) dout, -x dout)."""
    dx = np.empty_like(x)
    dz = np.empty_like(x)
    xf, zf, gf, dxf, dzf = x.reshape(-1), z.reshape(-1), dout.reshape(-1), dx.reshape(-1), dz.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        e = np.exp(-abs(v))
        s = 1 / (1 + e) if v >= 0 else e / (1 + e)
        dxf[i] = (s - zf[i]) * gf[i]
        dzf[i] = -v * gf[i]
    return dx, dz
