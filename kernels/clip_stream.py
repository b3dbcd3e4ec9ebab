"""The clip kernels' streaming twins, for a separate output larger than the last-level cache: every
whole 64-byte line of the output is written by a streaming store (kernels/stream.py), so the output
is never read for ownership (clip by value of 100M float32s into another array: 0.8 GB moved, not 1.2)."""
import numpy as np
from numba import njit, prange

from .clip import _chunk, _clip_el, _scale_segments
from .stream import line_elements, line_head, sfence, stream_line

ITEM = 1 << 16  # elements per parallel work item
BUF = 512  # bytes computed into a buffer, then streamed out (measured vs clamp_: 64 KiB 1.7x, 4 KiB-512 B 1.1-1.2x)


@njit(cache=True, error_model="numpy")
def _clip_lines(x, out, lo, hi, buf):
    """clip_into on 1-D views; the whole lines of `out` by streaming stores."""
    h = line_head(out)
    lanes = line_elements(out)
    end = h + (out.size - h) // lanes * lanes
    for i in range(h):
        out[i] = _clip_el(x[i], lo, hi)
    # unsigned indices: no negative-index wraparound, so the loop vectorizes without gathers; no
    # slices either (each costs an atomic reference count, contended between the threads)
    a, end_u, step, lanes_u = np.uint64(h), np.uint64(end), np.uint64(buf.size), np.uint64(lanes)
    while a < end_u:
        m = min(step, end_u - a)
        for k in range(m):
            buf[k] = _clip_el(x[a + k], lo, hi)
        for k in range(0, m, lanes_u):
            stream_line(out, a + k, buf, k)
        a += step
    for i in range(end, out.size):
        out[i] = _clip_el(x[i], lo, hi)
    sfence()  # before another thread reads `out`


@njit(cache=True, error_model="numpy")
def _scale_lines(x, out, s, buf):
    """scale_into on 1-D views; the whole lines of `out` by streaming stores (as _clip_lines)."""
    h = line_head(out)
    lanes = line_elements(out)
    end = h + (out.size - h) // lanes * lanes
    for i in range(h):
        out[i] = x[i] * s
    a, end_u, step, lanes_u = np.uint64(h), np.uint64(end), np.uint64(buf.size), np.uint64(lanes)
    while a < end_u:
        m = min(step, end_u - a)
        for k in range(m):
            buf[k] = x[a + k] * s
        for k in range(0, m, lanes_u):
            stream_line(out, a + k, buf, k)
        a += step
    for i in range(end, out.size):
        out[i] = x[i] * s
    sfence()


@njit(cache=True, error_model="numpy", parallel=True)
def clip_into_streamed(x, out, lo, hi):
    """clip.clip_into_parallel, same results; `out` should not be `x` (in place gains nothing)."""
    xf = x.reshape(-1)  # one view per statement: tuple-unpacked views miscompile under parallel=True
    of = out.reshape(-1)
    for p in prange((xf.size + ITEM - 1) // ITEM):
        a = p * ITEM
        b = min(xf.size, a + ITEM)
        _clip_lines(xf[a:b], of[a:b], lo, hi, np.empty(BUF // of.itemsize, of.dtype))
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def multi_scale_streamed(addrs, out_addrs, like, tid, start, stop, parts, s, zero):
    """clip.multi_scale, same results: an output that is its input (or zeroed) as there, another one
    by streaming stores."""
    for p in prange(parts.size - 1):
        buf = np.empty(BUF // like.itemsize, like.dtype)
        for k in range(parts[p], parts[p + 1]):
            t = tid[k]
            if zero or out_addrs[t] == addrs[t]:
                _scale_segments(addrs, out_addrs, like, tid, start, stop, k, k + 1, s, zero)
            else:
                _scale_lines(_chunk(addrs, like, t, start[k], stop[k]), _chunk(out_addrs, like, t, start[k], stop[k]),
                             s, buf)
