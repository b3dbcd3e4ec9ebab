"""Kernels for conv2d (im2col + one BLAS product per batch block) and pool2d (max, avg), NCHW.

Geometry travels as one int64 array `geo` = (kh, kw, sh, sw, ph, pw, dh, dw, ho, wo) so the
serial and parallel twins share their signatures and helpers. A conv kernel splits the batch into
`nblk` contiguous blocks of images; each block unrolls its images' windows into a column matrix
col[(c, i, j), (image, oh, ow)] and multiplies it by the filter matrix with one BLAS product
(kernels/blas.py), per group. The parallel twins unroll (and scatter back) the images of a block in prange,
each image writing its own columns. Pool kernels run one (image, channel) plane per iteration.
"""
import numpy as np
from numba import njit, prange

from . import blas


@njit(cache=True, error_model="numpy")
def _valid(pad, off, stride, size, n_out):
    """The output positions o in [lo, hi) whose input o * stride - pad + off lies in [0, size)."""
    lo = 0
    first = pad - off  # o * stride >= first
    if first > 0:
        lo = (first + stride - 1) // stride
    last = size - 1 + pad - off  # o * stride <= last
    hi = last // stride + 1 if last >= 0 else 0
    return min(lo, n_out), max(min(hi, n_out), min(lo, n_out))


# im2col and col2im index flat arrays with unsigned offsets (a signed index is tested and wrapped on every
# access: the (64, 20, 12, 12) 5x5 unrolling took 3.2 ms that way). Offsets inside the valid output range
# [lo, hi) of a kernel tap are never negative.

@njit(cache=True, error_model="numpy")
def _im2col(x, col, n, base, c0, cg, geo):
    """col[(c, i, j), (n - base, oh, ow)] = x[n, c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside)."""
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = geo
    h, w = x.shape[2], x.shape[3]
    xf, cf = x.reshape(-1), col.reshape(-1)
    ncol, uwo, usw = np.uint64(col.shape[1]), np.uint64(wo), np.uint64(sw)
    zero = cf.dtype.type(0)
    for c in range(cg):
        plane = (n * x.shape[1] + c0 + c) * h * w
        for i in range(kh):
            hlo, hhi = _valid(ph, i * dh, sh, h, ho)
            for j in range(kw):
                wlo, whi = _valid(pw, j * dw, sw, w, wo)
                row = np.uint64((c * kh + i) * kw + j) * ncol + np.uint64((n - base) * ho * wo)
                for t in range(row, row + np.uint64(hlo * wo)):
                    cf[t] = zero
                for t in range(row + np.uint64(hhi * wo), row + np.uint64(ho * wo)):
                    cf[t] = zero
                run = np.uint64(whi - wlo)
                for oh in range(hlo, hhi):
                    o = row + np.uint64(oh * wo)
                    for t in range(o, o + np.uint64(wlo)):
                        cf[t] = zero
                    for t in range(o + np.uint64(whi), o + uwo):
                        cf[t] = zero
                    dst = o + np.uint64(wlo)
                    src = np.uint64(plane + (oh * sh - ph + i * dh) * w + wlo * sw - pw + j * dw)
                    if sw == 1:
                        for t in range(run):
                            cf[dst + t] = xf[src + t]
                    else:
                        for t in range(run):
                            cf[dst + t] = xf[src + t * usw]


@njit(cache=True, error_model="numpy")
def _col2im(dcol, dx, n, base, c0, cg, geo):
    """The transpose of _im2col for image n: dx[n, c0 + c, ...] += every column entry that read it."""
    kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = geo
    h, w = dx.shape[2], dx.shape[3]
    gf, cf = dx.reshape(-1), dcol.reshape(-1)
    ncol, usw = np.uint64(dcol.shape[1]), np.uint64(sw)
    for c in range(cg):
        plane = (n * dx.shape[1] + c0 + c) * h * w
        for i in range(kh):
            hlo, hhi = _valid(ph, i * dh, sh, h, ho)
            for j in range(kw):
                wlo, whi = _valid(pw, j * dw, sw, w, wo)
                row = np.uint64((c * kh + i) * kw + j) * ncol + np.uint64((n - base) * ho * wo)
                run = np.uint64(whi - wlo)
                for oh in range(hlo, hhi):
                    src = row + np.uint64(oh * wo + wlo)
                    dst = np.uint64(plane + (oh * sh - ph + i * dh) * w + wlo * sw - pw + j * dw)
                    if sw == 1:
                        for t in range(run):
                            gf[dst + t] += cf[src + t]
                    else:
                        for t in range(run):
                            gf[dst + t * usw] += cf[src + t]


@njit(cache=True, error_model="numpy")
def _put(r, out3, n, base, f0):
    """out3[n, f0:f0 + fg, :] = the block result's columns of image n."""
    hw = out3.shape[2]
    out3[n, f0:f0 + r.shape[0], :] = r[:, (n - base) * hw:(n - base + 1) * hw]


@njit(cache=True, error_model="numpy")
def _take(dout3, d, n, base, f0):
    """The transpose of _put: image n's output gradient into the block matrix d (fg, images * hw)."""
    hw = dout3.shape[2]
    d[:, (n - base) * hw:(n - base + 1) * hw] = dout3[n, f0:f0 + d.shape[0], :]


@njit(cache=True, error_model="numpy")
def _block(n, nblk, b):
    return b * n // nblk, (b + 1) * n // nblk


# The twins differ only in range / prange over the images of a block. BLAS is called from the
# calling thread only, one product per block and group (the BLAS threads it; calling it from
# several threads at once made a step ten times slower on a busy machine).

@njit(cache=True, error_model="numpy")
def conv2d(x, w3, geo, nblk):
    """NCHW convolution; w3 is the filter as (groups, filters per group, C/groups * kh * kw)."""
    n, groups, fg, k = x.shape[0], w3.shape[0], w3.shape[1], w3.shape[2]
    cg, hw = x.shape[1] // groups, geo[8] * geo[9]
    out3 = np.empty((n, groups * fg, hw), x.dtype)
    for b in range(nblk):
        n0, n1 = _block(n, nblk, b)
        col = np.empty((k, (n1 - n0) * hw), x.dtype)
        for g in range(groups):
            for i in range(n0, n1):
                _im2col(x, col, i, n0, g * cg, cg, geo)
            r = blas.dot(w3[g], col)
            for i in range(n0, n1):
                _put(r, out3, i, n0, g * fg)
    return out3


@njit(cache=True, error_model="numpy", parallel=True)
def conv2d_parallel(x, w3, geo, nblk):
    n, groups, fg, k = x.shape[0], w3.shape[0], w3.shape[1], w3.shape[2]
    cg, hw = x.shape[1] // groups, geo[8] * geo[9]
    out3 = np.empty((n, groups * fg, hw), x.dtype)
    for b in range(nblk):
        n0, n1 = _block(n, nblk, b)
        col = np.empty((k, (n1 - n0) * hw), x.dtype)
        for g in range(groups):
            for i in prange(n0, n1):
                _im2col(x, col, i, n0, g * cg, cg, geo)
            r = blas.dot(w3[g], col)
            for i in prange(n0, n1):
                _put(r, out3, i, n0, g * fg)
    return out3


@njit(cache=True, error_model="numpy")
def conv2d_grad(x, w3, dout3, geo, nblk, need_dx, need_dw):
    """(dx, dw3) of conv2d; dout3 is the output gradient as (N, F, ho * wo)."""
    n, groups, fg, k = x.shape[0], w3.shape[0], w3.shape[1], w3.shape[2]
    cg, hw = x.shape[1] // groups, geo[8] * geo[9]
    dx = np.zeros_like(x) if need_dx else np.zeros((0, 0, 0, 0), x.dtype)
    dw3 = np.zeros_like(w3)
    for b in range(nblk):
        n0, n1 = _block(n, nblk, b)
        col = np.empty((k, (n1 - n0) * hw), x.dtype)
        d = np.empty((fg, (n1 - n0) * hw), x.dtype)
        for g in range(groups):
            for i in range(n0, n1):
                _take(dout3, d, i, n0, g * fg)
            if need_dw:
                for i in range(n0, n1):
                    _im2col(x, col, i, n0, g * cg, cg, geo)
                blas.gemm(d, col.T, dw3[g], 1.0, 1.0)
            if need_dx:
                dcol = blas.dot(w3[g].T, d)
                for i in range(n0, n1):
                    _col2im(dcol, dx, i, n0, g * cg, cg, geo)
    return dx, dw3


@njit(cache=True, error_model="numpy", parallel=True)
def conv2d_grad_parallel(x, w3, dout3, geo, nblk, need_dx, need_dw):
    n, groups, fg, k = x.shape[0], w3.shape[0], w3.shape[1], w3.shape[2]
    cg, hw = x.shape[1] // groups, geo[8] * geo[9]
    dx = np.zeros_like(x) if need_dx else np.zeros((0, 0, 0, 0), x.dtype)
    dw3 = np.zeros_like(w3)
    for b in range(nblk):
        n0, n1 = _block(n, nblk, b)
        col = np.empty((k, (n1 - n0) * hw), x.dtype)
        d = np.empty((fg, (n1 - n0) * hw), x.dtype)
        for g in range(groups):
            for i in prange(n0, n1):
                _take(dout3, d, i, n0, g * fg)
            if need_dw:
                for i in prange(n0, n1):
                    _im2col(x, col, i, n0, g * cg, cg, geo)
                blas.gemm(d, col.T, dw3[g], 1.0, 1.0)
            if need_dx:
                dcol = blas.dot(w3[g].T, d)
                for i in prange(n0, n1):
                    _col2im(dcol, dx, i, n0, g * cg, cg, geo)
    return dx, dw3


# ---------------------------------------------------------------- pool2d

# Pool planes index flat, C-ordered planes with unsigned offsets: with signed 2-D indices Numba tests and
# wraps negative values on every read, which kept a (64, 20, 24, 24) 2x2 max pool at 1.9 ms forward and
# 5.4 ms backward.

@njit(cache=True, error_model="numpy", inline="always")
def _window(o, stride, pad, k, size):
    """The input range [lo, hi) of output position o (clipped to the input), as unsigned offsets."""
    lo = o * stride - pad
    return np.uint64(max(lo, 0)), np.uint64(min(lo + k, size))


@njit(cache=True, error_model="numpy")
def _pool_plane_of(x, out, geo, is_max, exclusive):
    """One plane's max or average pooling (the average sums in float64)."""
    kh, kw, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    h, w, ho, wo = x.shape[0], x.shape[1], out.shape[0], out.shape[1]
    xf, of, uw = x.reshape(-1), out.reshape(-1), np.uint64(w)
    o = np.uint64(0)
    for oh in range(ho):
        h0, h1 = _window(oh, sh, ph, kh, h)
        for ow in range(wo):
            w0, w1 = _window(ow, sw, pw, kw, w)
            acc = np.float64(xf[h0 * uw + w0]) if is_max else 0.0
            for i in range(h0, h1):
                for j in range(i * uw + w0, i * uw + w1):
                    acc = max(acc, xf[j]) if is_max else acc + xf[j]
            of[o] = acc if is_max else acc / ((h1 - h0) * (w1 - w0) if exclusive else kh * kw)
            o += np.uint64(1)


@njit(cache=True, error_model="numpy")
def _max_plane_grad(x, dout, dx, geo):
    """dout goes to the first maximum of each window. The running maximum and its offset are selected,
    not branched on: on random inputs the branch mispredicted about every other window (2x slower)."""
    kh, kw, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    h, w, ho, wo = x.shape[0], x.shape[1], dout.shape[0], dout.shape[1]
    xf, df, gf, uw = x.reshape(-1), dout.reshape(-1), dx.reshape(-1), np.uint64(w)
    o = np.uint64(0)
    for oh in range(ho):
        h0, h1 = _window(oh, sh, ph, kh, h)
        for ow in range(wo):
            w0, w1 = _window(ow, sw, pw, kw, w)
            best = h0 * uw + w0
            m = xf[best]
            for i in range(h0, h1):
                for j in range(i * uw + w0, i * uw + w1):
                    v = xf[j]
                    greater = v > m
                    best = j if greater else best
                    m = v if greater else m
            gf[best] += df[o]
            o += np.uint64(1)


@njit(cache=True, error_model="numpy")
def _avg_plane_grad(dout, dx, geo, exclusive):
    kh, kw, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    h, w, ho, wo = dx.shape[0], dx.shape[1], dout.shape[0], dout.shape[1]
    df, gf, uw = dout.reshape(-1), dx.reshape(-1), np.uint64(w)
    o = np.uint64(0)
    for oh in range(ho):
        h0, h1 = _window(oh, sh, ph, kh, h)
        for ow in range(wo):
            w0, w1 = _window(ow, sw, pw, kw, w)
            g = df[o] / ((h1 - h0) * (w1 - w0) if exclusive else kh * kw)
            for i in range(h0, h1):
                for j in range(i * uw + w0, i * uw + w1):
                    gf[j] += g
            o += np.uint64(1)


@njit(cache=True, error_model="numpy")
def _pool_plane(x, out, p, geo, is_max, exclusive):
    n, c = p // x.shape[1], p % x.shape[1]
    _pool_plane_of(x[n, c], out[n, c], geo, is_max, exclusive)


@njit(cache=True, error_model="numpy")
def _pool_grad_plane(x, dout, dx, p, geo, is_max, exclusive):
    n, c = p // x.shape[1], p % x.shape[1]
    if is_max:
        _max_plane_grad(x[n, c], dout[n, c], dx[n, c], geo)
    else:
        _avg_plane_grad(dout[n, c], dx[n, c], geo, exclusive)


@njit(cache=True, error_model="numpy")
def pool2d(x, geo, is_max, exclusive):
    """Max or average pooling of NCHW x; windows are clipped to the input (padding never wins a max)."""
    out = np.empty((x.shape[0], x.shape[1], geo[8], geo[9]), x.dtype)
    for p in range(x.shape[0] * x.shape[1]):
        _pool_plane(x, out, p, geo, is_max, exclusive)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def pool2d_parallel(x, geo, is_max, exclusive):
    out = np.empty((x.shape[0], x.shape[1], geo[8], geo[9]), x.dtype)
    for p in prange(x.shape[0] * x.shape[1]):
        _pool_plane(x, out, p, geo, is_max, exclusive)
    return out


@njit(cache=True, error_model="numpy")
def pool2d_grad(x, dout, geo, is_max, exclusive):
    dx = np.zeros_like(x)
    for p in range(x.shape[0] * x.shape[1]):
        _pool_grad_plane(x, dout, dx, p, geo, is_max, exclusive)
    return dx


@njit(cache=True, error_model="numpy", parallel=True)
def pool2d_grad_parallel(x, dout, geo, is_max, exclusive):
    dx = np.zeros_like(x)
    for p in prange(x.shape[0] * x.shape[1]):
        _pool_grad_plane(x, dout, dx, p, geo, is_max, exclusive)
    return dx
