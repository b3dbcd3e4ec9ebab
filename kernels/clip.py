"""Kernels for clipping: by value, by norm, multi-tensor global norm, adaptive (AGC) and AutoClip.

Norms accumulate in float64. The multi-tensor kernels take an address table (`address_of` each
C-contiguous array), a zero-length array of the element dtype (`like`) and a work table: segments
(tensor index, start, stop) and `parts`, work item p being segments parts[p]:parts[p+1]. One
parallel pass, one partial result per work item. Addresses, not a typed List: building a List costs
~2 us per array per call and its getitem inside prange ~20% of the pass; the caller keeps the arrays
alive during the call.
"""
import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from .inplace import same_buffer


@njit(cache=True, error_model="numpy")
def address_of(a, size, itemsize):
    """The data address of `a`; -1 if it is not C-contiguous, -2 if it does not hold `size` elements
    of `itemsize` bytes (the kernels would read past it)."""
    if a.size != size or a.itemsize != itemsize:
        return -2
    return a.ctypes.data if a.flags.c_contiguous else -1


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to `like`'s element type."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(like.dtype)(address, like), codegen


@njit(cache=True, error_model="numpy")
def _chunk(addrs, like, t, a, b):
    """Elements a:b of the flat array at addrs[t], as a view."""
    return carray(_pointer(addrs[t] + a * like.itemsize, like), b - a)


# per-element functions shared with the fuse pass's generated kernels (OpDef.elementwise)
@njit(cache=True, error_model="numpy", inline="always")
def _clip_el(v, lo, hi):
    v = lo if v < lo else v  # selects, not branches: vectorizes, and NaN compares false
    return hi if v > hi else v


@njit(cache=True, error_model="numpy", inline="always")
def _clip_grad_el(v, g, lo, hi):
    return g if (v >= lo and v <= hi) else 0


@njit(cache=True, error_model="numpy")
def clip_into(x, out, lo, hi):
    """out = min(max(x, lo), hi); NaN stays NaN. `out` may be `x`; lo, hi in x's dtype."""
    xf = x.reshape(-1)
    if same_buffer(x, out):
        for i in range(xf.size):
            xf[i] = _clip_el(xf[i], lo, hi)
    else:
        of = out.reshape(-1)
        for i in range(xf.size):
            of[i] = _clip_el(xf[i], lo, hi)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def clip_into_parallel(x, out, lo, hi):
    xf = x.reshape(-1)
    of = out.reshape(-1)
    if same_buffer(x, out):
        for i in prange(xf.size):
            xf[i] = _clip_el(xf[i], lo, hi)
    else:
        for i in prange(xf.size):
            of[i] = _clip_el(xf[i], lo, hi)
    return out


@njit(cache=True, error_model="numpy")
def clip_grad(x, dout, lo, hi):
    """dX = dOut where lo <= x <= hi (bounds included), else 0."""
    dx = np.empty_like(dout)
    xf, gf, df = x.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    for i in range(xf.size):
        df[i] = _clip_grad_el(xf[i], gf[i], lo, hi)
    return dx


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def sq_sum(x):
    """sum(x**2) accumulated in float64."""
    xf = x.reshape(-1)
    acc = 0.0
    for i in range(xf.size):
        v = np.float64(xf[i])
        acc += v * v
    return acc


@njit(cache=True, error_model="numpy")
def abs_max(x):
    """max(|x|) as float64; NaN if any element is NaN."""
    xf = x.reshape(-1)
    m = 0.0
    for i in range(xf.size):
        a = abs(np.float64(xf[i]))
        if a > m or a != a:
            m = a
            if a != a:
                break
    return m


@njit(cache=True, error_model="numpy")
def scale_into(x, out, s):
    """out = x * s; `out` may be `x`."""
    xf = x.reshape(-1)
    if same_buffer(x, out):
        for i in range(xf.size):
            xf[i] *= s
    else:
        of = out.reshape(-1)
        for i in range(xf.size):
            of[i] = xf[i] * s
    return out


@njit(cache=True, error_model="numpy")
def clip_by_norm_grad(x, dout, c, norm, inf_norm):
    """Gradient of Out = x * c / max(norm(x), c) for the L2 (or, with inf_norm, the max-abs) norm."""
    dx = np.empty_like(dout)
    xf, gf, df = x.reshape(-1), dout.reshape(-1), dx.reshape(-1)
    if not norm > c:
        for i in range(xf.size):
            df[i] = gf[i]
        return dx
    s = c / norm
    dot = 0.0
    for i in range(xf.size):
        dot += np.float64(xf[i]) * gf[i]
    for i in range(xf.size):
        v = np.float64(xf[i])
        if inf_norm:
            d = s * gf[i]
            if abs(v) == norm:  # d norm / d x_i = sign(x_i) at the maximum
                d -= s / norm * dot * np.sign(v)
            df[i] = d
        else:
            df[i] = s * gf[i] - s * dot * v / (norm * norm)
    return dx


@njit(cache=True, error_model="numpy")
def global_norm_grad(x, norm, dnorm, inf_norm):
    """dX = dNorm * d norm / dX: x / norm (L2) or sign(x) at the maxima (inf); 0 when norm is 0."""
    dx = np.zeros_like(x)
    xf, df = x.reshape(-1), dx.reshape(-1)
    if norm == 0:
        return dx
    for i in range(xf.size):
        v = np.float64(xf[i])
        if inf_norm:
            if abs(v) == norm:
                df[i] = dnorm * np.sign(v)
        else:
            df[i] = dnorm * v / norm
    return dx


@njit(cache=True, error_model="numpy")
def _sq_sum_segments(addrs, like, tid, start, stop, lo, hi):
    acc = 0.0
    for s in range(lo, hi):
        acc += sq_sum(_chunk(addrs, like, tid[s], start[s], stop[s]))  # a helper vectorizes; inline does not
    return acc


@njit(cache=True, error_model="numpy")
def _abs_max_segments(addrs, like, tid, start, stop, lo, hi):
    m = 0.0
    for s in range(lo, hi):
        v = abs_max(_chunk(addrs, like, tid[s], start[s], stop[s]))
        if v > m or v != v:  # NaN wins
            m = v
    return m


@njit(cache=True, error_model="numpy")
def _fill_zero(o):
    for i in range(o.size):
        o[i] = 0


@njit(cache=True, error_model="numpy")
def _scale_segments(addrs, out_addrs, like, tid, start, stop, lo, hi, s, zero):
    for k in range(lo, hi):
        out = _chunk(out_addrs, like, tid[k], start[k], stop[k])
        if zero:
            _fill_zero(out)
        else:  # in place when out_addrs is addrs: scale_into sees the one buffer itself
            scale_into(_chunk(addrs, like, tid[k], start[k], stop[k]), out, s)


@njit(cache=True, error_model="numpy", parallel=True)
def multi_sq_sum(addrs, like, tid, start, stop, parts):
    """sum over all arrays of x**2, in float64: one prange over the work items of the table."""
    out = np.zeros(parts.size - 1)
    for p in prange(parts.size - 1):
        out[p] = _sq_sum_segments(addrs, like, tid, start, stop, parts[p], parts[p + 1])
    return out.sum()


@njit(cache=True, error_model="numpy", parallel=True)
def multi_abs_max(addrs, like, tid, start, stop, parts):
    """max |x| over all arrays; NaN if any element is NaN."""
    out = np.zeros(parts.size - 1)
    for p in prange(parts.size - 1):
        out[p] = _abs_max_segments(addrs, like, tid, start, stop, parts[p], parts[p + 1])
    return abs_max(out)


@njit(cache=True, error_model="numpy", parallel=True)
def multi_scale(addrs, out_addrs, like, tid, start, stop, parts, s, zero):
    """out[t] = x[t] * s (or 0 where `zero`) over all arrays; an output may be its input."""
    for p in prange(parts.size - 1):
        _scale_segments(addrs, out_addrs, like, tid, start, stop, parts[p], parts[p + 1], s, zero)


@njit(cache=True, error_model="numpy")
def _sq_sum_each(addrs, like, tid, start, stop, lo, hi, seg):
    for s in range(lo, hi):
        seg[s] = sq_sum(_chunk(addrs, like, tid[s], start[s], stop[s]))


@njit(cache=True, error_model="numpy")
def _abs_max_each(addrs, like, tid, start, stop, lo, hi, seg):
    for s in range(lo, hi):
        seg[s] = abs_max(_chunk(addrs, like, tid[s], start[s], stop[s]))


@njit(cache=True, error_model="numpy", parallel=True)
def segment_sq_sum(addrs, like, tid, start, stop, parts, seg):
    """seg[s] = sum(x**2) over segment s (float64), one prange over the work items: the pass of
    multi_sq_sum keeping one partial per segment, so per-tensor sums come out of it too."""
    for p in prange(parts.size - 1):
        _sq_sum_each(addrs, like, tid, start, stop, parts[p], parts[p + 1], seg)


@njit(cache=True, error_model="numpy", parallel=True)
def segment_abs_max(addrs, like, tid, start, stop, parts, seg):
    for p in prange(parts.size - 1):
        _abs_max_each(addrs, like, tid, start, stop, parts[p], parts[p + 1], seg)


# serial twins, for groups too small to repay waking the thread pool (~70 us on the development machine)

@njit(cache=True, error_model="numpy")
def multi_sq_sum_serial(addrs, like, tid, start, stop, parts):
    return _sq_sum_segments(addrs, like, tid, start, stop, 0, tid.size)


@njit(cache=True, error_model="numpy")
def multi_abs_max_serial(addrs, like, tid, start, stop, parts):
    return _abs_max_segments(addrs, like, tid, start, stop, 0, tid.size)


@njit(cache=True, error_model="numpy")
def segment_sq_sum_serial(addrs, like, tid, start, stop, parts, seg):
    _sq_sum_each(addrs, like, tid, start, stop, 0, tid.size, seg)


@njit(cache=True, error_model="numpy")
def segment_abs_max_serial(addrs, like, tid, start, stop, parts, seg):
    _abs_max_each(addrs, like, tid, start, stop, 0, tid.size, seg)


@njit(cache=True, error_model="numpy")
def multi_scale_serial(addrs, out_addrs, like, tid, start, stop, parts, s, zero):
    _scale_segments(addrs, out_addrs, like, tid, start, stop, 0, tid.size, s, zero)


@njit(cache=True, error_model="numpy")
def global_norm_scale_grad(addrs, dout_addrs, like, sizes, gn, c):
    """d/d gn of sum_t <douts[t], xs[t] * c / max(gn, c)>: -c / gn**2 * sum <x, dout> when gn > c."""
    if not gn > c:
        return 0.0
    dot = 0.0
    for t in range(sizes.size):
        x, g = _chunk(addrs, like, t, 0, sizes[t]), _chunk(dout_addrs, like, t, 0, sizes[t])
        for i in range(sizes[t]):
            dot += np.float64(x[i]) * g[i]
    return -c / (gn * gn) * dot


@njit(cache=True, error_model="numpy")
def _agc_limits(wn, gn, clipping, eps):
    """From per-unit squared norms: (limit, bad); wn becomes clipping * max(|w_u|, eps), gn |g_u|.
    bad: some unit norm is not finite, which makes the whole gradient NaN."""
    bad = False
    for u in range(wn.size):
        wn[u] = max(np.sqrt(wn[u]), eps) * clipping
        gn[u] = np.sqrt(gn[u])
        if not np.isfinite(gn[u]) or not np.isfinite(wn[u]):
            bad = True
    return bad


@njit(cache=True, error_model="numpy")
def _agc_scale_rows(grad, out, wn, gn, bad, r0, r1):
    for r in range(r0, r1):
        for u in range(grad.shape[1]):
            if bad:
                out[r, u] = np.nan
            elif gn[u] > wn[u]:
                out[r, u] = grad[r, u] * (wn[u] / gn[u])
            else:
                out[r, u] = grad[r, u]


@njit(cache=True, error_model="numpy")
def _agc_sq_norms(param, grad, wn, gn, r0, r1):
    for r in range(r0, r1):
        for u in range(grad.shape[1]):
            w = np.float64(param[r, u])
            g = np.float64(grad[r, u])
            wn[u] += w * w
            gn[u] += g * g


@njit(cache=True, error_model="numpy")
def adaptive_clip(param, grad, out, clipping, eps):
    """AGC on (units, fan_in)-transposed views: param/grad are 2-D (fan_in, units); each column is a unit.

    g_u <- g_u * clipping * max(|w_u|, eps) / |g_u| where |g_u| exceeds that; any non-finite unit
    norm makes the whole gradient NaN."""
    rows, cols = grad.shape
    wn, gn = np.zeros(cols), np.zeros(cols)
    _agc_sq_norms(param, grad, wn, gn, 0, rows)
    bad = _agc_limits(wn, gn, clipping, eps)
    _agc_scale_rows(grad, out, wn, gn, bad, 0, rows)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def adaptive_clip_parallel(param, grad, out, clipping, eps):
    """adaptive_clip with row blocks in parallel: per-block partial unit norms, summed, then the scale."""
    rows, cols = grad.shape
    blocks = min(rows, 64)
    wpart = np.zeros((blocks, cols))
    gpart = np.zeros((blocks, cols))
    for b in prange(blocks):
        _agc_sq_norms(param, grad, wpart[b], gpart[b], b * rows // blocks, (b + 1) * rows // blocks)
    wn = wpart.sum(axis=0)
    gn = gpart.sum(axis=0)
    bad = _agc_limits(wn, gn, clipping, eps)
    for b in prange(blocks):
        _agc_scale_rows(grad, out, wn, gn, bad, b * rows // blocks, (b + 1) * rows // blocks)
    return out
