"""Kernels for the recurrent ops: stacking steps and the fused LSTM and GRU cells.

LSTM gate layout along the last axis of X: [i, f, o, j] (input, forget, output gates, candidate).
GRU gate layout: [u, r, c] (update gate, reset gate, candidate).
"""
import numpy as np
from numba import njit, prange

from . import blas

from .expf32 import exp_data


@njit(cache=True, error_model="numpy")
def put_step(out3, t, x2):
    """out3[:, t, :] = x2 (out3 is [pre, T, post], x2 is [pre, post])."""
    for a in range(out3.shape[0]):
        for b in range(out3.shape[2]):
            out3[a, t, b] = x2[a, b]


@njit(cache=True, error_model="numpy")
def take_step(x3, t):
    """A contiguous copy of x3[:, t, :]."""
    out = np.empty((x3.shape[0], x3.shape[2]), x3.dtype)
    for a in range(x3.shape[0]):
        for b in range(x3.shape[2]):
            out[a, b] = x3[a, t, b]
    return out


# Gates go through exp only, in the data's dtype: libm's exp is several times faster than its tanh
# (float32 tanhf slowest of all), and a bare 1.0 would turn float32 math into float64. float32 uses
# the vectorizing expf_ (kernels/expf32.py), float64 libm's exp.
@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid(v, one):
    return one / (one + exp_data(-v))


@njit(cache=True, error_model="numpy", inline="always")
def _tanh(v, one):
    """tanh(v) = 2 sigmoid(2v) - 1: exact to an absolute rounding error, which gates can afford."""
    return (one + one) * _sigmoid(v + v, one) - one


@njit(cache=True, error_model="numpy", inline="always")
def _scalar(value, like):
    """`value` in the dtype of array `like`."""
    return np.full(1, value, like.dtype)[0]


# The cell loops run over one row's gate blocks taken as 1-D slices: an index such as hid + k
# that LLVM cannot prove non-negative keeps Numba's wraparound select, which stops vectorization.
@njit(cache=True, error_model="numpy", inline="always")
def _sigmoid_row(src, dst, shift, one):
    for k in range(src.size):
        dst[k] = _sigmoid(src[k] + shift, one)


@njit(cache=True, error_model="numpy", inline="always")
def _tanh_row(src, dst, one):
    for k in range(src.size):
        dst[k] = _tanh(src[k], one)


# "contract" lets LLVM fuse a * b + c into one FMA (the exp polynomial's Horner steps, inlined here):
# 35 -> 20 us for a (32, 1024) step, and each fused step rounds once instead of twice.
@njit(cache=True, error_model="numpy", fastmath={"contract"})
def lstm_unit_into(x, c_prev, forget_bias, c, h, gate):
    """x [N, 4H] pre-activations, c_prev [N, H] -> (c, h, gate), written into the given arrays (none of
    them x or c_prev): gate holds the activated [i, f, o, j]."""
    for b in range(c_prev.shape[0]):
        _lstm_row(x, c_prev, forget_bias, c, h, gate, b)
    return c, h, gate


@njit(cache=True, error_model="numpy", fastmath={"contract"}, parallel=True)
def lstm_unit_into_parallel(x, c_prev, forget_bias, c, h, gate):
    """lstm_unit_into with the rows spread over the threads."""
    for b in prange(c_prev.shape[0]):
        _lstm_row(x, c_prev, forget_bias, c, h, gate, b)
    return c, h, gate


@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _lstm_row(x, c_prev, forget_bias, c, h, gate, b):
    hid = c_prev.shape[1]
    one, zero, fb = _scalar(1, x), _scalar(0, x), _scalar(forget_bias, x)
    xr, gr = x[b], gate[b]
    gi, gf, go, gj = gr[:hid], gr[hid:2 * hid], gr[2 * hid:3 * hid], gr[3 * hid:4 * hid]
    _sigmoid_row(xr[:hid], gi, zero, one)
    _sigmoid_row(xr[hid:2 * hid], gf, fb, one)
    _sigmoid_row(xr[2 * hid:3 * hid], go, zero, one)
    _tanh_row(xr[3 * hid:4 * hid], gj, one)
    cpr, cr, hr = c_prev[b], c[b], h[b]
    for k in range(hid):
        cv = gf[k] * cpr[k] + gi[k] * gj[k]
        cr[k] = cv
        hr[k] = go[k] * _tanh(cv, one)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def lstm_unit_grad_into(gate, c_prev, c, dh, dc, dx, dcp):
    """Gradients of (c, h) = lstm_unit(x, c_prev) from the saved activated gates -> (dx, dc_prev),
    written into the given dx and dcp (neither an input)."""
    for b in range(c_prev.shape[0]):
        _lstm_grad_row(gate, c_prev, c, dh, dc, dx, dcp, b)
    return dx, dcp


@njit(cache=True, error_model="numpy", fastmath={"contract"}, parallel=True)
def lstm_unit_grad_into_parallel(gate, c_prev, c, dh, dc, dx, dcp):
    """lstm_unit_grad_into with the rows spread over the threads."""
    for b in prange(c_prev.shape[0]):
        _lstm_grad_row(gate, c_prev, c, dh, dc, dx, dcp, b)
    return dx, dcp


@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _lstm_grad_row(gate, c_prev, c, dh, dc, dx, dcp, b):
    hid = c_prev.shape[1]
    one = _scalar(1, gate)
    gr, dxr = gate[b], dx[b]
    gi, gf, go, gj = gr[:hid], gr[hid:2 * hid], gr[2 * hid:3 * hid], gr[3 * hid:4 * hid]
    di, df, do, dj = dxr[:hid], dxr[hid:2 * hid], dxr[2 * hid:3 * hid], dxr[3 * hid:4 * hid]
    cpr, cr, dhr, dcr, dcpr = c_prev[b], c[b], dh[b], dc[b], dcp[b]
    for k in range(hid):
        i, f, o, j = gi[k], gf[k], go[k], gj[k]
        tc = _tanh(cr[k], one)
        # the cell's total gradient: directly, and through h = o * tanh(c)
        g = dcr[k] + dhr[k] * o * (one - tc * tc)
        di[k] = g * j * i * (one - i)
        df[k] = g * cpr[k] * f * (one - f)
        do[k] = dhr[k] * tc * o * (one - o)
        dj[k] = g * i * (one - j * j)
        dcpr[k] = g * f


@njit(cache=True, error_model="numpy")
def gru_unit(inp, h_prev, w, bias, origin_mode):
    """inp [N, 3H] (projected input), h_prev [N, H], w [H, 3H], bias [3H] -> (gate, reset_h_prev, h).

    gate holds the activated [u, r, c]; h = u*h_prev + (1-u)*c with origin_mode, else (1-u)*h_prev + u*c."""
    n, hid = h_prev.shape
    one = _scalar(1, inp)
    pre = blas.dot(h_prev, w[:, :2 * hid])
    gate = np.empty_like(inp)
    rh = np.empty_like(h_prev)
    for b in range(n):
        for k in range(2 * hid):
            gate[b, k] = _sigmoid(inp[b, k] + bias[k] + pre[b, k], one)
        for k in range(hid):
            rh[b, k] = gate[b, hid + k] * h_prev[b, k]
    cand = blas.dot(rh, w[:, 2 * hid:])
    h = np.empty_like(h_prev)
    for b in range(n):
        for k in range(hid):
            cv = _tanh(inp[b, 2 * hid + k] + bias[2 * hid + k] + cand[b, k], one)
            gate[b, 2 * hid + k] = cv
            u = gate[b, k]
            if origin_mode:
                h[b, k] = u * h_prev[b, k] + (one - u) * cv
            else:
                h[b, k] = (one - u) * h_prev[b, k] + u * cv
    return gate, rh, h


@njit(cache=True, error_model="numpy")
def gru_unit_grad(h_prev, w, gate, rh, dh, origin_mode, dg):
    """Gradients of gru_unit -> (d_inp [N, 3H], d_h_prev, d_w, d_bias [3H]); d_inp (the gradient of the
    pre-activations) is written into `dg`, an array of gate's shape."""
    n, hid = h_prev.shape
    one = _scalar(1, gate)
    dhp = np.empty_like(h_prev)
    for b in range(n):
        for k in range(hid):
            u, cv, hp = gate[b, k], gate[b, 2 * hid + k], h_prev[b, k]
            if origin_mode:
                du = dh[b, k] * (hp - cv)
                dcv = dh[b, k] * (one - u)
                dhp[b, k] = dh[b, k] * u
            else:
                du = dh[b, k] * (cv - hp)
                dcv = dh[b, k] * u
                dhp[b, k] = dh[b, k] * (one - u)
            dg[b, k] = du * u * (one - u)
            dg[b, 2 * hid + k] = dcv * (one - cv * cv)
    wc = w[:, 2 * hid:]
    dgc = dg[:, 2 * hid:]
    drh = blas.dot(dgc, wc.T)
    for b in range(n):
        for k in range(hid):
            r = gate[b, hid + k]
            dg[b, hid + k] = drh[b, k] * h_prev[b, k] * r * (one - r)
            dhp[b, k] += drh[b, k] * r
    dgur = dg[:, :2 * hid]
    blas.gemm(dgur, w[:, :2 * hid].T, dhp, 1.0, 1.0)
    dw = np.empty_like(w)
    blas.gemm(h_prev.T, dgur, dw[:, :2 * hid], 1.0, 0.0)
    blas.gemm(rh.T, dgc, dw[:, 2 * hid:], 1.0, 0.0)
    db = np.empty(gate.shape[1], gate.dtype)
    for k in range(gate.shape[1]):
        acc = dg[0, k] * 0
        for b in range(n):
            acc += dg[b, k]
        db[k] = acc
    return dg, dhp, dw, db
