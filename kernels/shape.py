"""Data movement kernels: block copies along an axis (concat, split), permutation (transpose), copy."""
import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", inline="always")
def advance(idx, shape, strides, o):
    """Step the multi-index `idx` over `shape` by one (last dim fastest); returns offset `o` moved
    by the matching `strides`."""
    d = len(shape) - 1
    while d >= 0:
        idx[d] += 1
        o += strides[d]
        if idx[d] < shape[d]:
            break
        o -= strides[d] * shape[d]
        idx[d] = 0
        d -= 1
    return o


@njit(cache=True, error_model="numpy")
def put_block(out, x, offset):
    """out (pre, N, post)[:, offset:offset + n, :] = x (pre, n, post)."""
    pre, n, post = x.shape
    for p in range(pre):
        for j in range(n):
            for q in range(post):
                out[p, offset + j, q] = x[p, j, q]
    return out


@njit(cache=True, error_model="numpy")
def take_block(x, offset, n):
    """A contiguous copy of x (pre, N, post)[:, offset:offset + n, :]."""
    pre, _, post = x.shape
    out = np.empty((pre, n, post), x.dtype)
    for p in range(pre):
        for j in range(n):
            for q in range(post):
                out[p, j, q] = x[p, offset + j, q]
    return out


@njit(cache=True, error_model="numpy")
def gather_strided(x, shape, strides, scale):
    """Flat copy of x * scale read in the order of `shape`, stepping by element `strides` (a permuted
    or broadcast view: a reduction's gradient spread back over the reduced dims)."""
    total = 1
    for d in shape:
        total *= d
    out = np.empty(total, x.dtype)
    xf = x.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    o = 0
    for i in range(total):
        out[i] = xf[o] * scale
        o = advance(idx, shape, strides, o)
    return out


@njit(cache=True, error_model="numpy")
def gather_rows(x, shape, strides, inner):
    """Flat copy of x read as rows of `inner` contiguous elements, the rows in the order of `shape` and
    stepping by element `strides` (a permutation that keeps the last axis: one loop step per row, not
    per element)."""
    rows = 1
    for d in shape:
        rows *= d
    out = np.empty(rows * inner, x.dtype)
    xf = x.reshape(-1)
    idx = np.zeros(shape.size, np.int64)
    o = 0
    for r in range(rows):
        base = r * inner
        for j in range(inner):
            out[base + j] = xf[o + j]
        o = advance(idx, shape, strides, o)
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _permute_block(xf, out, base, o, n2, n3, s2, s3):
    """out[o : o + n2 * n3] = the (n2, n3) block of xf at `base` stepping by s2, s3 (unsigned offsets)."""
    if s3 == 1:  # the last axis stays: contiguous runs
        for c in range(n2):
            row = base + c * s2
            oc = o + c * n3
            for j in range(n3):
                out[oc + j] = xf[row + j]
    else:
        # 32 x 32 tiles, the inner loop along the third axis: a [256, 1024] 2-D transpose took
        # 740 us walking whole strided columns (a cache miss per read; vectorized as gathers, slow
        # on AMD), 150 us this way
        tile = np.uint64(32)
        for cb in range(np.uint64(0), n2, tile):
            ce = min(cb + tile, n2)
            for jb in range(np.uint64(0), n3, tile):
                je = min(jb + tile, n3)
                for j in range(jb, je):
                    col = base + j * s3
                    oj = o + j
                    for c in range(cb, ce):
                        out[oj + c * n3] = xf[col + c * s2]


@njit(cache=True, error_model="numpy")
def permute4(x, d0, d1, d2, d3, s0, s1, s2, s3):
    """Flat copy of x read in the order of the 4-D shape (d0, d1, d2, d3), stepping by element strides
    s0..s3 (a transpose of rank <= 4, padded with leading 1s). Offsets are unsigned: a signed index
    makes Numba test and wrap negative values on every access, which kept this loop 6x slower."""
    out = np.empty(d0 * d1 * d2 * d3, x.dtype)
    xf = x.reshape(-1)
    n2, n3, u2, u3 = np.uint64(d2), np.uint64(d3), np.uint64(s2), np.uint64(s3)
    for ab in range(d0 * d1):
        a, b = ab // d1, ab % d1
        _permute_block(xf, out, np.uint64(a * s0 + b * s1), np.uint64(ab) * n2 * n3, n2, n3, u2, u3)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def permute4_parallel(x, d0, d1, d2, d3, s0, s1, s2, s3):
    """`permute4` with the (d2, d3) blocks, in tiles of 32 rows, spread over threads: a single block (a
    2-D transpose) too ([256, 1024]: 130 us serial, 82 here; [1024, 256]: 771 and 348)."""
    out = np.empty(d0 * d1 * d2 * d3, x.dtype)
    xf = x.reshape(-1)
    n3, u2, u3 = np.uint64(d3), np.uint64(s2), np.uint64(s3)
    tiles = (d2 + 31) // 32
    for task in prange(d0 * d1 * tiles):
        ab, c0 = task // tiles, task % tiles * 32
        a, b = ab // d1, ab % d1
        _permute_block(xf, out, np.uint64(a * s0 + b * s1 + c0 * s2), np.uint64((ab * d2 + c0) * d3),
                       np.uint64(min(d2 - c0, 32)), n3, u2, u3)
    return out


@njit(cache=True, error_model="numpy")
def copy(x):
    return x.copy()
