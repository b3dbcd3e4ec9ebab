"""The clip kernels' streaming twins, for a separate output larger than the last-level cache: every
whole 64-byte line of the output is written by a streaming store (kernels/stream.py), so the output
is never read for ownership (clip by value of 100M float32s into another array: 0.8 GB moved, not 1.2)."""
import numpy as np
from numba import njit, prange

from .clip import _chunk, _clip_el, _scale_segments
from .stream import PAGE, PAGES, clip_line, line_elements, line_head, sfence, stream_line

ITEM = 1 << 16  # elements per parallel work item
BUF = 512  # bytes computed into a buffer, then streamed out (measured vs clamp_: 64 KiB 1.7x, 4 KiB-512 B 1.1-1.2x)
GRAIN = 4  # lines the clip writes from one page before the next (4 pages x 4 lines: 17.4 ms, 4 x 1: 18.1)


@njit(cache=True, error_model="numpy")
def _clip_lines(x, out, lo, hi):
    """clip_into on 1-D views; the whole lines of `out` by streaming stores, GRAIN lines from each of
    PAGES pages in turn (kernels/stream.py)."""
    h = line_head(out)
    lanes = line_elements(out)
    end = h + (out.size - h) // lanes * lanes
    for i in range(h):
        out[i] = _clip_el(x[i], lo, hi)
    page = PAGE // out.itemsize
    grain = GRAIN * lanes
    a = h
    while a + PAGES * page <= end:
        for off in range(0, page, grain):
            for p in range(PAGES):
                for k in range(a + p * page + off, a + p * page + off + grain, lanes):
                    clip_line(out, k, x, k, lo, hi)
        a += PAGES * page
    for k in range(a, end, lanes):
        clip_line(out, k, x, k, lo, hi)
    for i in range(end, out.size):
        out[i] = _clip_el(x[i], lo, hi)
    sfence()  # before another thread reads `out`


@njit(cache=True, error_model="numpy", inline="always")
def _scale_block(x, out, s, buf, a, m, lanes):
    """out[a:a+m] = x[a:a+m] * s through buf (m <= buf.size, whole lines)."""
    # unsigned indices: no negative-index wraparound, so the loop vectorizes without gathers
    a_u, m_u, lanes_u = np.uint64(a), np.uint64(m), np.uint64(lanes)
    for k in range(m_u):
        buf[k] = x[a_u + k] * s
    for k in range(np.uint64(0), m_u, lanes_u):
        stream_line(out, a_u + k, buf, k)


@njit(cache=True, error_model="numpy")
def _scale_lines(x, out, s, buf):
    """scale_into on 1-D views; the whole lines of `out` by streaming stores, a buffer's worth from each of
    PAGES pages in turn (as _clip_lines; in a buffer, so the product rounds as scale_into's)."""
    h = line_head(out)
    lanes = line_elements(out)
    end = h + (out.size - h) // lanes * lanes
    for i in range(h):
        out[i] = x[i] * s
    page, step = PAGE // out.itemsize, buf.size
    a = h
    while a + PAGES * page <= end:
        for off in range(0, page, step):
            for p in range(PAGES):
                _scale_block(x, out, s, buf, a + p * page + off, step, lanes)
        a += PAGES * page
    while a < end:
        _scale_block(x, out, s, buf, a, min(step, end - a), lanes)
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
        _clip_lines(xf[a:b], of[a:b], lo, hi)
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
