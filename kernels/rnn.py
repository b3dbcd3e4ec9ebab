"""Kernels for the recurrent ops: stacking steps and the fused LSTM and GRU cells.

LSTM gate layout along the last axis of X: [i, f, o, j] (input, forget, output gates, candidate).
GRU gate layout: [u, r, c] (update gate, reset gate, candidate).
"""
import numpy as np
from numba import njit


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


@njit(cache=True, error_model="numpy")
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@njit(cache=True, error_model="numpy")
def lstm_unit(x, c_prev, forget_bias):
    """x [N, 4H] pre-activations, c_prev [N, H] -> (c, h)."""
    n, hid = c_prev.shape
    c = np.empty_like(c_prev)
    h = np.empty_like(c_prev)
    for b in range(n):
        for k in range(hid):
            i = _sigmoid(x[b, k])
            f = _sigmoid(x[b, hid + k] + forget_bias)
            o = _sigmoid(x[b, 2 * hid + k])
            j = np.tanh(x[b, 3 * hid + k])
            cv = f * c_prev[b, k] + i * j
            c[b, k] = cv
            h[b, k] = o * np.tanh(cv)
    return c, h


@njit(cache=True, error_model="numpy")
def lstm_unit_grad(x, c_prev, c, dh, dc, forget_bias):
    """Gradients of (c, h) = lstm_unit(x, c_prev) -> (dx, dc_prev); gates are recomputed from x."""
    n, hid = c_prev.shape
    dx = np.empty_like(x)
    dcp = np.empty_like(c_prev)
    for b in range(n):
        for k in range(hid):
            i = _sigmoid(x[b, k])
            f = _sigmoid(x[b, hid + k] + forget_bias)
            o = _sigmoid(x[b, 2 * hid + k])
            j = np.tanh(x[b, 3 * hid + k])
            tc = np.tanh(c[b, k])
            # the cell's total gradient: directly, and through h = o * tanh(c)
            g = dc[b, k] + dh[b, k] * o * (1 - tc * tc)
            dx[b, k] = g * j * i * (1 - i)
            dx[b, hid + k] = g * c_prev[b, k] * f * (1 - f)
            dx[b, 2 * hid + k] = dh[b, k] * tc * o * (1 - o)
            dx[b, 3 * hid + k] = g * i * (1 - j * j)
            dcp[b, k] = g * f
    return dx, dcp


@njit(cache=True, error_model="numpy")
def gru_unit(inp, h_prev, w, bias, origin_mode):
    """inp [N, 3H] (projected input), h_prev [N, H], w [H, 3H], bias [3H] -> (gate, reset_h_prev, h).

    gate holds the activated [u, r, c]; h = u*h_prev + (1-u)*c with origin_mode, else (1-u)*h_prev + u*c."""
    n, hid = h_prev.shape
    pre = np.dot(h_prev, w[:, :2 * hid].copy())
    gate = np.empty_like(inp)
    rh = np.empty_like(h_prev)
    for b in range(n):
        for k in range(2 * hid):
            gate[b, k] = _sigmoid(inp[b, k] + bias[k] + pre[b, k])
        for k in range(hid):
            rh[b, k] = gate[b, hid + k] * h_prev[b, k]
    cand = np.dot(rh, w[:, 2 * hid:].copy())
    h = np.empty_like(h_prev)
    for b in range(n):
        for k in range(hid):
            cv = np.tanh(inp[b, 2 * hid + k] + bias[2 * hid + k] + cand[b, k])
            gate[b, 2 * hid + k] = cv
            u = gate[b, k]
            if origin_mode:
                h[b, k] = u * h_prev[b, k] + (1 - u) * cv
            else:
                h[b, k] = (1 - u) * h_prev[b, k] + u * cv
    return gate, rh, h


@njit(cache=True, error_model="numpy")
def gru_unit_grad(h_prev, w, gate, rh, dh, origin_mode):
    """Gradients of gru_unit -> (d_inp [N, 3H], d_h_prev, d_w, d_bias [3H])."""
    n, hid = h_prev.shape
    dg = np.empty_like(gate)  # gradient of the pre-activations
    dhp = np.empty_like(h_prev)
    for b in range(n):
        for k in range(hid):
            u, cv, hp = gate[b, k], gate[b, 2 * hid + k], h_prev[b, k]
            if origin_mode:
                du = dh[b, k] * (hp - cv)
                dcv = dh[b, k] * (1 - u)
                dhp[b, k] = dh[b, k] * u
            else:
                du = dh[b, k] * (cv - hp)
                dcv = dh[b, k] * u
                dhp[b, k] = dh[b, k] * (1 - u)
            dg[b, k] = du * u * (1 - u)
            dg[b, 2 * hid + k] = dcv * (1 - cv * cv)
    wc = w[:, 2 * hid:].copy()
    dgc = dg[:, 2 * hid:].copy()
    drh = np.dot(dgc, wc.T.copy())
    for b in range(n):
        for k in range(hid):
            r = gate[b, hid + k]
            dg[b, hid + k] = drh[b, k] * h_prev[b, k] * r * (1 - r)
            dhp[b, k] += drh[b, k] * r
    dgur = dg[:, :2 * hid].copy()
    dhp += np.dot(dgur, w[:, :2 * hid].T.copy())
    dw = np.empty_like(w)
    dw[:, :2 * hid] = np.dot(h_prev.T.copy(), dgur)
    dw[:, 2 * hid:] = np.dot(rh.T.copy(), dgc)
    db = np.empty(gate.shape[1], gate.dtype)
    for k in range(gate.shape[1]):
        acc = dg[0, k] * 0
        for b in range(n):
            acc += dg[b, k]
        db[k] = acc
    return dg, dhp, dw, db
