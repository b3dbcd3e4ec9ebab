"""Index kernels: arg max/min, top-k, one-hot, row gather, select (where), tile, strided slices, accuracy.

Tensors arrive as (pre, n, post) views where an op works along one axis.
"""
import numpy as np
from numba import njit

from .shape import advance


@njit(cache=True, error_model="numpy")
def arg_extreme(x, find_max):
    """Index of the first largest (or smallest) entry along the middle axis of x (pre, n, post)."""
    pre, n, post = x.shape
    out = np.empty((pre, post), np.int64)
    for p in range(pre):
        for q in range(post):
            best = x[p, 0, q]
            k = 0
            for j in range(1, n):
                v = x[p, j, q]
                if (v > best) if find_max else (v < best):
                    best = v
                    k = j
            out[p, q] = k
    return out


@njit(cache=True, error_model="numpy")
def top_k(x, k):
    """The k largest entries of each row of x (rows, n), descending, equal values in index order."""
    rows, n = x.shape
    values = np.empty((rows, k), x.dtype)
    indices = np.empty((rows, k), np.int64)
    for r in range(rows):
        order = np.argsort(-x[r], kind="mergesort")
        for j in range(k):
            indices[r, j] = order[j]
            values[r, j] = x[r, order[j]]
    return values, indices


@njit(cache=True, error_model="numpy")
def top_k_grad(indices, dout, n):
    """dX (rows, n): each row's upstream gradient put back at the indices top_k took."""
    rows, k = indices.shape
    dx = np.zeros((rows, n), dout.dtype)
    for r in range(rows):
        for j in range(k):
            dx[r, indices[r, j]] += dout[r, j]
    return dx


@njit(cache=True, error_model="numpy")
def one_hot(ids, depth, dtype_like):
    """out[i, ids[i]] = 1 (float); an id outside [0, depth) is an error."""
    n = ids.size
    out = np.zeros((n, depth), dtype_like.dtype)
    flat = ids.reshape(-1)
    for i in range(n):
        v = flat[i]
        if v < 0 or v >= depth:
            raise ValueError("one_hot: an id is outside [0, depth)")
        out[i, v] = 1
    return out


@njit(cache=True, error_model="numpy")
def gather_rows(x, index):
    """out[i] = x[index[i]] for x (n, row)."""
    m = index.size
    out = np.empty((m, x.shape[1]), x.dtype)
    for i in range(m):
        r = index[i]
        if r < 0 or r >= x.shape[0]:
            raise ValueError("gather: an index is outside the input's first dimension")
        out[i] = x[r]
    return out


@njit(cache=True, error_model="numpy")
def scatter_add_rows(index, dout, n):
    """dX (n, row): each dout[i] added to row index[i] (repeated indices accumulate)."""
    dx = np.zeros((n, dout.shape[1]), dout.dtype)
    for i in range(index.size):
        dx[index[i]] += dout[i]
    return dx


@njit(cache=True, error_model="numpy")
def select(cond, x, y):
    """out = x where cond else y (same shapes)."""
    out = np.empty_like(x)
    cf, xf, yf, of = cond.reshape(-1), x.reshape(-1), y.reshape(-1), out.reshape(-1)
    for i in range(of.size):
        of[i] = xf[i] if cf[i] else yf[i]
    return out


@njit(cache=True, error_model="numpy")
def select_grad(cond, dout):
    """(dX, dY): dout routed to the side each element came from, zero on the other."""
    dx = np.zeros_like(dout)
    dy = np.zeros_like(dout)
    cf, gf, xf, yf = cond.reshape(-1), dout.reshape(-1), dx.reshape(-1), dy.reshape(-1)
    for i in range(gf.size):
        if cf[i]:
            xf[i] = gf[i]
        else:
            yf[i] = gf[i]
    return dx, dy


@njit(cache=True, error_model="numpy")
def tile(x, out_shape):
    """out = x repeated along every axis to out_shape (each out_shape[d] a multiple of x.shape[d])."""
    nd = out_shape.size
    total = 1
    for d in range(nd):
        total *= out_shape[d]
    out = np.empty(total, x.dtype)
    xf = x.reshape(-1)
    xs = np.array(x.shape, np.int64)
    idx = np.zeros(nd, np.int64)
    for i in range(total):
        src = 0
        for d in range(nd):
            src = src * xs[d] + idx[d] % xs[d]
        out[i] = xf[src]
        advance(idx, out_shape, out_shape, 0)  # only the multi-index matters here
    return out


@njit(cache=True, error_model="numpy")
def tile_grad(dout, x_shape):
    """dX: the sum of dout over every repeat of x."""
    nd = x_shape.size
    size = 1
    for d in range(nd):
        size *= x_shape[d]
    dx = np.zeros(size, dout.dtype)
    gf = dout.reshape(-1)
    gs = np.array(dout.shape, np.int64)
    idx = np.zeros(nd, np.int64)
    for i in range(gf.size):
        dst = 0
        for d in range(nd):
            dst = dst * x_shape[d] + idx[d] % x_shape[d]
        dx[dst] += gf[i]
        advance(idx, gs, gs, 0)  # only the multi-index matters here
    return dx


@njit(cache=True, error_model="numpy")
def read_window(xf, shape, strides):
    """A contiguous copy of the strided window of the flat array xf (window origin at xf[0])."""
    total = 1
    for d in shape:
        total *= d
    out = np.empty(total, xf.dtype)
    idx = np.zeros(shape.size, np.int64)
    o = 0
    for i in range(total):
        out[i] = xf[o]
        o = advance(idx, shape, strides, o)
    return out


@njit(cache=True, error_model="numpy")
def write_window(dxf, g, shape, strides):
    """dxf's strided window (origin dxf[0]) = g, read in order; the rest of dxf is left as it is."""
    gf = g.reshape(-1)
    idx = np.zeros(shape.size, np.int64)
    o = 0
    for i in range(gf.size):
        dxf[o] = gf[i]
        o = advance(idx, shape, strides, o)


@njit(cache=True, error_model="numpy")
def accuracy(indices, label):
    """The fraction of rows whose label is among that row's top-k indices (float32 [1])."""
    rows, k = indices.shape
    hits = 0
    for r in range(rows):
        for j in range(k):
            if indices[r, j] == label[r]:
                hits += 1
                break
    out = np.empty(1, np.float32)
    out[0] = hits / rows if rows > 0 else 0.0
    return out


@njit(cache=True, error_model="numpy")
def cast_into(x, out):
    """out = x converted element by element (floats to ints truncate toward zero)."""
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        of[i] = xf[i]
    return out
