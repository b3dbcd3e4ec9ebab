"""An LSTM's whole recurrence in one parallel loop, forward and backward (the `lstm_sequence` ops).

The batch rows of an LSTM never meet: row b of h_t depends on row b of h_{t-1} only. So each thread
takes a band of rows (whole 8-row tiles) and runs every time step on it alone, with no sync between
steps: its rows of h, c and the gates stay in its core's caches. Each thread packs its own copy of the
weight into panels (skinny.pack_panels_into) and reads it from its own L2 at every step: panels one
thread wrote and the other read took 0.9-1.0 ms more per backward of an LSTM step (T = 50, [32, 256]) than
panels written long before; private copies 0.06-0.3 ms more. Each step is the product, then the cell of
kernels/rnn.py (the same row functions, so the same bits).

Per row the product is skinny.tiles' chain of fused multiply-adds over k in order, added to the
step's addend last, as `mul_acc` makes it: in float32 on an AVX-512 CPU, the rows of whole tiles come
out bit for bit as the step-by-step ops'. Other rows and dtypes go through BLAS (blas._gemm) per band.
"""
import numpy as np
from numba import njit, prange

from . import skinny
from .blas import _gemm
from .rnn import _lstm_grad_row, _lstm_row, _scalar


@njit(cache=True, error_model="numpy", inline="always")
def _band(rows, parts):
    """Rows per thread: whole tiles, so that which rows BLAS makes does not depend on the thread count."""
    return ((rows + parts - 1) // parts + skinny.ROWS - 1) // skinny.ROWS * skinny.ROWS


@njit(cache=True, error_model="numpy", inline="always")
def _panel_count(cols, like):
    """How many whole panels of `cols` columns the tiles take (0: BLAS does the products)."""
    one = _scalar(1, like)
    if isinstance(one, np.float32):  # resolved at compile time
        if skinny.AVAILABLE:
            return cols // skinny.COLS
    return 0


@njit(cache=True, error_model="numpy", inline="always")
def _rows_product(a, b, panels, out, lo, hi, add):
    """out[lo:hi] (+)= a[lo:hi] @ b; `panels` holds b's panels for the tiles (float32), else none."""
    rows, dst = a[lo:hi], out[lo:hi]
    beta = 1.0 if add else 0.0
    one = _scalar(1, out)
    if isinstance(one, np.float32):  # resolved at compile time
        if panels.shape[0] > 0:
            skinny.tiles_packed(rows, panels, dst, add)
            wide, whole = panels.shape[0] * skinny.COLS, (hi - lo) // skinny.ROWS * skinny.ROWS
            if wide < b.shape[1]:
                _gemm(rows, b[:, wide:], dst[:, wide:], 1.0, beta)
            if whole < hi - lo:
                _gemm(rows[whole:], b[:, :wide], dst[whole:, :wide], 1.0, beta)
            return
    _gemm(rows, b, dst, 1.0, beta)


@njit(cache=True, error_model="numpy", fastmath={"contract"}, parallel=True)
def lstm_sequence(pre, h0, c0, w, forget_bias, hs, cs, gates, parts):
    """Steps t = 0..T-1 of lstm_unit(pre[t] + h_{t-1} @ w, c_{t-1}), h_{-1} = h0, c_{-1} = c0.

    pre [T, B, 4H] (overwritten with the gates' pre-activations), h0, c0 [B, H], w [H, 4H] -> hs, cs
    [T, B, H] and gates [T, B, 4H] (activated), written in place."""
    rows = h0.shape[0]
    band = _band(rows, parts)
    own = np.empty((parts, _panel_count(w.shape[1], w), w.shape[0], skinny.COLS), w.dtype)
    for p in prange(parts):
        lo = p * band
        hi = min(lo + band, rows)
        if lo < hi:
            panels = own[p]
            skinny.pack_panels_into(w, panels)
            for t in range(pre.shape[0]):
                h_prev = h0 if t == 0 else hs[t - 1]
                c_prev = c0 if t == 0 else cs[t - 1]
                _rows_product(h_prev, w, panels, pre[t], lo, hi, True)
                for b in range(lo, hi):
                    _lstm_row(pre[t], c_prev, forget_bias, cs[t], hs[t], gates[t], b)


@njit(cache=True, error_model="numpy", fastmath={"contract"}, parallel=True)
def lstm_sequence_backward(gates, c0, cs, w, dh_last, dc_last, dh_steps, dxs, dc0, dh0, parts):
    """Gradients of lstm_sequence from those of h_{T-1} (dh_last) and c_{T-1} (dc_last), and unless it is
    empty, dh_steps [T - 1, B, H]: what else h_0..h_{T-2} feed sends back to them.

    gates [T, B, 4H] and cs [T, B, H] as lstm_sequence made them, c0 [B, H], w [H, 4H] -> dxs [T, B, 4H]
    (the pre-activations' gradients), dc0 and, unless it is empty, dh0 ([B, H]: the gradients of c0 and
    h0), written in place."""
    steps, rows, hid = gates.shape[0], c0.shape[0], c0.shape[1]
    band = _band(rows, parts)
    dh = np.empty((2, rows, hid), dxs.dtype)  # step t reads [t % 2], writes step t - 1's into the other
    dc = np.empty((2, rows, hid), dxs.dtype)
    wt = w.T
    own = np.empty((parts, _panel_count(w.shape[0], w), w.shape[1], skinny.COLS), w.dtype)
    for p in prange(parts):
        lo = p * band
        hi = min(lo + band, rows)
        if lo < hi:
            panels_t = own[p]
            skinny.pack_panels_t_into(w, panels_t)
            last = (steps - 1) % 2
            dh[last, lo:hi] = dh_last[lo:hi]
            dc[last, lo:hi] = dc_last[lo:hi]
            for t in range(steps - 1, -1, -1):
                now = t % 2
                c_prev = c0 if t == 0 else cs[t - 1]
                dc_prev = dc0 if t == 0 else dc[1 - now]
                for b in range(lo, hi):
                    _lstm_grad_row(gates[t], c_prev, cs[t], dh[now], dc[now], dxs[t], dc_prev, b)
                if t > 0:
                    _rows_product(dxs[t], wt, panels_t, dh[1 - now], lo, hi, False)
                    if dh_steps.shape[0] > 0:  # the product first, then the rest: a `sum` of the two rounds so
                        for b in range(lo, hi):
                            for k in range(hid):
                                dh[1 - now, b, k] += dh_steps[t - 1, b, k]
                elif dh0.size:
                    _rows_product(dxs[0], wt, panels_t, dh0, lo, hi, False)
