"""Softmax kernels: over contiguous rows (the last axis, the fast path) and over the middle axis of a
(pre, n, post) view, with their gradients.

Rows go in three passes, each its own function so each carries its own float flags: the row maxima
(an integer max over the floats' ordered bits) and the row sums/scaling are compiled with
reassociation (LLVM vectorises those reductions; NaN and Inf keep their meaning, no nnan/ninf), the
exponentials without it. float32 rows use vecmath_fma's expf_fma (vectorizes; a libm call per
element was 8x slower), float64 rows libm's exp.
Each reduction loop only reads: a loop that also stores gets a runtime overlap check whose scalar
fallback sums in another order, and results would depend on where the arrays live.
"""
import numpy as np
from numba import njit, prange

from .vecmath import bits_f32, bits_f64, f32_bits, f64_bits
from .vecmath_fma import expf_fma

_FAST = ("reassoc", "nsz", "arcp", "contract", "afn")
_BLOCK = 4096  # elements per parallel task: rows stay whole, so results do not depend on the thread count


@njit(cache=True, error_model="numpy", inline="always")
def _max_bits(xs, v0):
    """max(xs) through the floats' bits read as integers that order like the floats (a negative
    float's magnitude bits flipped): an integer max vectorizes (3x faster), a float one not without
    assuming no NaN. A NaN comes out as the max or is passed over; either way its row's exponentials
    sum to NaN, as with a float max."""
    if isinstance(v0, np.float32):  # resolved at compile time
        k = np.int32(-2147483648)
        for j in range(xs.size):
            b = f32_bits(xs[j])
            key = b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF))
            k = key if key > k else k
        return bits_f32(k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF)))
    k = np.int64(-9223372036854775808)
    for j in range(xs.size):
        b = f64_bits(xs[j])
        key = b ^ ((b >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))
        k = key if key > k else k
    return bits_f64(k ^ ((k >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF)))


@njit(cache=True, error_model="numpy", fastmath=set(_FAST))
def _row_max(x2, m):
    for p in range(x2.shape[0]):
        m[p] = _max_bits(x2[p], x2[p, 0])


@njit(cache=True, error_model="numpy", inline="always")
def _exp(v):
    if isinstance(v, np.float32):  # resolved at compile time: the other branch is pruned
        return expf_fma(v)
    return np.exp(v)


# fastmath stated off: Numba compiles a callee whose decorator leaves it unset with its caller's
# flags, and reassociation would fold expf_'s rounding to an integer away.
@njit(cache=True, error_model="numpy", fastmath=False)
def _row_exp(x2, o2, m):
    """o2 = exp(x2 - m[:, None]): float32 through vecmath_fma's vectorizing expf_fma (1.4x faster than
    expf32's expf_ here), float64 through libm."""
    for p in range(x2.shape[0]):
        mm = m[p]
        for j in range(x2.shape[1]):
            o2[p, j] = _exp(x2[p, j] - mm)


@njit(cache=True, error_model="numpy", fastmath=set(_FAST))
def _row_normalize(o2):
    for p in range(o2.shape[0]):
        s = o2.dtype.type(0)
        for j in range(o2.shape[1]):
            s += o2[p, j]
        r = 1 / s
        for j in range(o2.shape[1]):
            o2[p, j] *= r


@njit(cache=True, error_model="numpy", fastmath=False)
def _rows(x2, o2):
    """Softmax of each row of x2 into o2 (the row max subtracted for stability)."""
    m = np.empty(x2.shape[0], x2.dtype)
    _row_max(x2, m)
    _row_exp(x2, o2, m)
    _row_normalize(o2)


@njit(cache=True, error_model="numpy", fastmath=False)
def softmax_rows(x, pre, n):
    """Softmax of each contiguous row of x viewed as (pre, n)."""
    out = np.empty_like(x)
    _rows(x.reshape(pre, n), out.reshape(pre, n))
    return out


@njit(cache=True, error_model="numpy", fastmath=False, parallel=True)
def softmax_rows_parallel(x, pre, n):
    out = np.empty_like(x)
    x2 = x.reshape(pre, n)
    o2 = out.reshape(pre, n)
    step = max(1, _BLOCK // n)
    for c in prange((pre + step - 1) // step):
        _rows(x2[c * step:min(pre, (c + 1) * step)], o2[c * step:min(pre, (c + 1) * step)])
    return out


@njit(cache=True, error_model="numpy", fastmath=set(_FAST))
def _rows_grad(o2, g2, d2):
    """d2 = o2 * (g2 - sum(g2 * o2 along the row))."""
    for p in range(o2.shape[0]):
        s = o2.dtype.type(0)
        for j in range(o2.shape[1]):
            s += g2[p, j] * o2[p, j]
        for j in range(o2.shape[1]):
            d2[p, j] = o2[p, j] * (g2[p, j] - s)


# No prange twin: one multiply-add pass per element, memory-bound; threads made it slower on 2 cores.
@njit(cache=True, error_model="numpy", fastmath=False)
def softmax_grad_rows(out, dout, pre, n):
    dx = np.empty_like(out)
    _rows_grad(out.reshape(pre, n), dout.reshape(pre, n), dx.reshape(pre, n))
    return dx


# The middle axis of (pre, n, post) (softmax over a non-last axis): strided, not vectorised.
@njit(cache=True, error_model="numpy", inline="always")
def _softmax_strided(xf, of, p, n, post):
    """Softmax over the middle axis of slice p of the (pre, n, post) view."""
    for q in range(post):
        base = p * n * post + q
        m = xf[base]
        for j in range(1, n):
            m = max(m, xf[base + j * post])
        s = 0.0
        for j in range(n):
            e = np.exp(xf[base + j * post] - m)
            of[base + j * post] = e
            s += e
        for j in range(n):
            of[base + j * post] /= s


@njit(cache=True, error_model="numpy")
def softmax(x, pre, n, post):
    """Softmax over the middle axis of x viewed as (pre, n, post); subtracts the max for stability."""
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for p in range(pre):
        _softmax_strided(xf, of, p, n, post)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def softmax_parallel(x, pre, n, post):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for p in prange(pre):
        _softmax_strided(xf, of, p, n, post)
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _softmax_grad_at(of, gf, df, p, n, post):
    """dX = Out * (dOut - sum(dOut * Out)) over the middle axis of slice p."""
    for q in range(post):
        base = p * n * post + q
        s = of.dtype.type(0)
        for j in range(n):
            s += gf[base + j * post] * of[base + j * post]
        for j in range(n):
            k = base + j * post
            df[k] = of[k] * (gf[k] - s)


@njit(cache=True, error_model="numpy", fastmath=set(_FAST))
def softmax_grad(out, dout, pre, n, post):
    dx = np.empty_like(out)
    of = out.reshape(-1)
    gf = dout.reshape(-1)
    df = dx.reshape(-1)
    for p in range(pre):
        _softmax_grad_at(of, gf, df, p, n, post)
    return dx


@njit(cache=True, error_model="numpy", fastmath=set(_FAST), parallel=True)
def softmax_grad_parallel(out, dout, pre, n, post):
    dx = np.empty_like(out)
    of = out.reshape(-1)
    gf = dout.reshape(-1)
    df = dx.reshape(-1)
    for p in prange(pre):
        _softmax_grad_at(of, gf, df, p, n, post)
    return dx
