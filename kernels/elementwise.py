"""Binary elementwise kernels (add, sub, mul, div, max) over canonical broadcast layouts.

`op` codes: the table below is the only one (fluidlite/ops/elementwise.py looks codes up here by
name). Serial and parallel twins share their loop body (`_same_at`, `_row`, `_grad_same_at`); only
the loop differs. Layouts:
- same: both operands have the output's shape (flat loop);
- rows / pnp: the big operand viewed as (pre, n) / (pre, n, post), the small one as [n] (a scalar:
  n == 1). Callers pass these views (reshapes of contiguous arrays) and reshape the results;
- strided: any broadcast, with per-dimension element strides (0 along broadcast dims).
"""
import numpy as np
from numba import njit, prange

ADD, SUB, MUL, DIV, MAX = range(5)


@njit(cache=True, error_model="numpy", inline="always")
def _f(op, a, b):
    if op == ADD:
        return a + b
    if op == SUB:
        return a - b
    if op == MUL:
        return a * b
    if op == DIV:
        return a / b
    # max propagates NaN from either side, as np.maximum
    return a if (a >= b or a != a) else b


@njit(cache=True, error_model="numpy", inline="always")
def _df(op, a, b, g):
    """(d/da, d/db) of f(a, b) times g; max splits ties 0.5/0.5."""
    if op == ADD:
        return g, g
    if op == SUB:
        return g, -g
    if op == MUL:
        return g * b, g * a
    if op == DIV:
        return g / b, -g * a / (b * b)
    if a > b:
        return g, g * 0
    if a < b:
        return g * 0, g
    h = g * 0.5
    return h, h


@njit(cache=True, error_model="numpy", inline="always")
def _same_at(xf, yf, out, op, i):
    out[i] = _f(op, xf[i], yf[i])


@njit(cache=True, error_model="numpy")
def same(x, y, op):
    """Flat result; callers reshape (a fresh flat output lets LLVM vectorise)."""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    out = np.empty(xf.size, x.dtype)
    for i in range(xf.size):
        _same_at(xf, yf, out, op, i)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def same_parallel(x, y, op):
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    out = np.empty(xf.size, x.dtype)
    for i in prange(xf.size):
        _same_at(xf, yf, out, op, i)
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _row(big, small, out, op, small_is_y, p):
    """Row p of big (pre, n) with small [n]: the body shared by rows and rows_parallel."""
    for j in range(big.shape[1]):
        if small_is_y:
            out[p, j] = _f(op, big[p, j], small[j])
        else:
            out[p, j] = _f(op, small[j], big[p, j])


@njit(cache=True, error_model="numpy")
def rows(big, small, op, small_is_y):
    """big (pre, n) with small [n] repeated over rows (post == 1: a bias row)."""
    out = np.empty(big.shape, big.dtype)
    for p in range(big.shape[0]):
        _row(big, small, out, op, small_is_y, p)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def rows_parallel(big, small, op, small_is_y):
    out = np.empty(big.shape, big.dtype)
    for p in prange(big.shape[0]):
        _row(big, small, out, op, small_is_y, p)
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _pnp_line(big, small, out, op, small_is_y, r):
    """Line r = (p, j) of the (pre, n, post) view: big[p, j, :] with the scalar small[j]."""
    n = big.shape[1]
    p = r // n
    j = r % n
    s = small[j]
    for q in range(big.shape[2]):
        if small_is_y:
            out[p, j, q] = _f(op, big[p, j, q], s)
        else:
            out[p, j, q] = _f(op, s, big[p, j, q])


@njit(cache=True, error_model="numpy")
def pnp(big, small, op, small_is_y):
    """big (pre, n, post) with small [n] repeated over pre and post (a scalar is n == 1)."""
    out = np.empty(big.shape, big.dtype)
    for r in range(big.shape[0] * big.shape[1]):
        _pnp_line(big, small, out, op, small_is_y, r)
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def pnp_parallel(big, small, op, small_is_y):
    out = np.empty(big.shape, big.dtype)
    for r in prange(big.shape[0] * big.shape[1]):
        _pnp_line(big, small, out, op, small_is_y, r)
    return out


@njit(cache=True, error_model="numpy")
def strided(x, y, shape, xst, yst, op):
    """Flat output of the broadcast; shape/xst/yst are int64 arrays (element strides, 0 = broadcast)."""
    total = 1
    for d in shape:
        total *= d
    out = np.empty(total, x.dtype)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    xo = 0
    yo = 0
    for i in range(total):
        out[i] = _f(op, xf[xo], yf[yo])
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            xo += xst[d]
            yo += yst[d]
            if idx[d] < shape[d]:
                break
            xo -= xst[d] * shape[d]
            yo -= yst[d] * shape[d]
            idx[d] = 0
            d -= 1
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _grad_same_at(xf, yf, gf, dx, dy, op, i):
    da, db = _df(op, xf[i], yf[i], gf[i])
    dx[i] = da
    dy[i] = db


@njit(cache=True, error_model="numpy")
def grad_same(x, y, dout, op):
    """Flat (dx, dy)."""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dx = np.empty(xf.size, x.dtype)
    dy = np.empty(xf.size, x.dtype)
    for i in range(xf.size):
        _grad_same_at(xf, yf, gf, dx, dy, op, i)
    return dx, dy


@njit(cache=True, error_model="numpy", parallel=True)
def grad_same_parallel(x, y, dout, op):
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dx = np.empty(xf.size, x.dtype)
    dy = np.empty(xf.size, x.dtype)
    for i in prange(xf.size):
        _grad_same_at(xf, yf, gf, dx, dy, op, i)
    return dx, dy


@njit(cache=True, error_model="numpy", inline="always")
def _grad_pnp_block(big, small, dout, dbig, acc, p0, p1, op, small_is_y):
    """Slices p0..p1 of the (pre, n, post) view: fills dbig, adds d_small[j] into acc[j]."""
    pre, n, post = big.shape
    if post == 1:  # 2-D views keep the inner loop contiguous (a bias row)
        b2 = big.reshape(pre, n)
        g2 = dout.reshape(pre, n)
        d2 = dbig.reshape(pre, n)
        for p in range(p0, p1):
            for j in range(n):
                if small_is_y:
                    db, ds = _df(op, b2[p, j], small[j], g2[p, j])
                else:
                    ds, db = _df(op, small[j], b2[p, j], g2[p, j])
                d2[p, j] = db
                acc[j] += ds
        return
    for p in range(p0, p1):
        for j in range(n):
            s = small[j]
            a = 0.0
            for q in range(post):
                if small_is_y:
                    db, ds = _df(op, big[p, j, q], s, dout[p, j, q])
                else:
                    ds, db = _df(op, s, big[p, j, q], dout[p, j, q])
                dbig[p, j, q] = db
                a += ds
            acc[j] += a


@njit(cache=True, error_model="numpy")
def grad_pnp(big, small, dout, op, small_is_y):
    """(d_big, d_small) for big/dout viewed as (pre, n, post); d_small sums over pre and post."""
    pre, n, post = big.shape
    dbig = np.empty((pre, n, post), big.dtype)
    acc = np.zeros(n)
    _grad_pnp_block(big, small, dout, dbig, acc, 0, pre, op, small_is_y)
    return dbig, acc.astype(big.dtype)


@njit(cache=True, error_model="numpy", parallel=True)
def grad_pnp_parallel(big, small, dout, op, small_is_y):
    # each chunk of the pre axis sums d_small into its own row of `part`: no shared writes
    pre, n, post = big.shape
    dbig = np.empty((pre, n, post), big.dtype)
    chunks = min(pre, 32)
    part = np.zeros((chunks, n))
    for c in prange(chunks):
        _grad_pnp_block(big, small, dout, dbig, part[c], c * pre // chunks, (c + 1) * pre // chunks, op, small_is_y)
    return dbig, part.sum(axis=0).astype(big.dtype)


# The gradient of a bias row added to (pre, n): its column sums, accumulated in float64 in row order as
# grad_pnp does for ADD (same bits); the big operand's gradient is dOut itself (no copy).
@njit(cache=True, error_model="numpy")
def col_sum(g2):
    acc = np.zeros(g2.shape[1])
    _add_rows(g2, acc, 0, g2.shape[0])
    return acc.astype(g2.dtype)


@njit(cache=True, error_model="numpy", inline="always")
def _add_rows(g2, acc, p0, p1):
    for p in range(p0, p1):
        for j in range(g2.shape[1]):
            acc[j] += g2[p, j]


COL_SUM_ROWS = 64  # rows a thread sums at a time: fixed, so the bits do not depend on the thread count


# On TBB's pool, (2048, 512) from memory: 380 us serial, 198 here; (2048, 128): 41 against 51, so it
# takes a larger size than other passes (ops/elementwise.py). On the workqueue it was 2x slower.
@njit(cache=True, error_model="numpy", parallel=True)
def col_sum_parallel(g2):
    """col_sum over the threads: float64 sums of COL_SUM_ROWS-row blocks, added in block order."""
    blocks = (g2.shape[0] + COL_SUM_ROWS - 1) // COL_SUM_ROWS
    part = np.zeros((blocks, g2.shape[1]))
    for b in prange(blocks):
        _add_rows(g2, part[b], b * COL_SUM_ROWS, min(g2.shape[0], (b + 1) * COL_SUM_ROWS))
    acc = np.zeros(g2.shape[1])
    for b in range(blocks):
        for j in range(g2.shape[1]):
            acc[j] += part[b, j]
    return acc.astype(g2.dtype)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _run_sum(v):
    """A contiguous run's float64 sum, reassociated so it vectorizes (a running sum is a chain of
    dependent adds); the bits depend on the run's length only."""
    a = 0.0
    for q in range(v.size):
        a += np.float64(v[q])
    return a


@njit(cache=True, error_model="numpy")
def plane_sum(g3):
    """Sums of a (pre, n, post) view over pre and post (a channel bias's gradient), in float64."""
    pre, n, post = g3.shape
    acc = np.zeros(n)
    for p in range(pre):
        for j in range(n):
            acc[j] += _run_sum(g3[p, j])
    return acc.astype(g3.dtype)


@njit(cache=True, error_model="numpy")
def grad_strided(x, y, dout, shape, xst, yst, op):
    """(dx, dy) shaped like x and y; broadcast dims (stride 0) accumulate."""
    dx = np.zeros_like(x)
    dy = np.zeros_like(y)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    gf = dout.reshape(-1)
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    nd = shape.size
    idx = np.zeros(nd, np.int64)
    xo = 0
    yo = 0
    for i in range(gf.size):
        da, db = _df(op, xf[xo], yf[yo], gf[i])
        dxf[xo] += da
        dyf[yo] += db
        d = nd - 1
        while d >= 0:
            idx[d] += 1
            xo += xst[d]
            yo += yst[d]
            if idx[d] < shape[d]:
                break
            xo -= xst[d] * shape[d]
            yo -= yst[d] * shape[d]
            idx[d] = 0
            d -= 1
    return dx, dy
