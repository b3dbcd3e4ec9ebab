"""Matrix products for every kernel, through one BLAS: NumPy's own OpenBLAS when it exports a 64-bit-index
CBLAS (NumPy's wheels do), else SciPy's (what `np.dot` in a Numba kernel reaches; FLUIDLITE_BLAS=scipy forces it).
FLUIDLITE_BLAS=onednn sends the float32 products to oneDNN instead (FLOAT32 names where they go).

Why not `np.dot` in kernels: it reaches SciPy's OpenBLAS, a second copy of the library next to
NumPy's, and on the development machine NumPy's (0.3.31) multiplied an LSTM step's (32, 256) x
(256, 1024) in 120 us against SciPy's (0.3.30) 154 us; whole steps with every product through NumPy's
were 7% (LSTM), 2.5% (Transformer) and 5% (MLP) faster. All of a plan's products must go to the same
library: each OpenBLAS pool's idle threads spin for a while after a call and starve the other's.
`gemm` also takes what `np.dot` cannot: strided rows (a leading dimension), alpha and beta (C += A B).

The kernels call the C symbols `fluidlite_sgemm` / `fluidlite_dgemm` (CBLAS's row-major signature with
64-bit sizes), which fluidlite/_blas.py finds and registers with LLVM when this module is imported,
before any kernel is compiled or loaded from the disk cache.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from . import skinny
from .._blas import BACKEND, FLOAT32, NO_TRANS, ROW_MAJOR, SPLIT_SYMBOL, TRANS  # noqa: F401  (importing it registers the symbols)

_I32, _I64 = ir.IntType(32), ir.IntType(64)
# Products of at least this many multiply-adds are split over Numba's threads while the pool is on: a
# [2048, 128] x [128, 128] product (2^25) splits well, an attention head's 64 x 32 x 64 (2^17) does not.
SPLIT_MIN = 1 << 21
ONE_BLOCK_K = 256  # OpenBLAS sums an inner dimension up to this in one block: out = alpha * AB + beta * out rounds AB once


@intrinsic
def _cblas_gemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """fluidlite_?gemm(RowMajor, ta, tb, m, n, k, alpha, a.data, lda, b.data, ldb, beta, c.data, ldc)."""
    if not (isinstance(a, types.Array) and a.dtype == b.dtype == c.dtype and str(a.dtype) in ("float32", "float64")):
        return None
    dt = a.dtype

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(dt)
        p = fty.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [_I32, _I32, _I32, _I64, _I64, _I64, fty, p, _I64, p, _I64, fty, p, _I64])
        name = "fluidlite_sgemm" if str(dt) == "float32" else "fluidlite_dgemm"  # fluidlite/_blas.py's SYMBOLS
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        data = [context.make_array(sig.args[i])(context, builder, args[i]).data for i in (6, 8, 11)]
        alpha_, beta_ = (context.cast(builder, args[i], sig_in[i], dt) for i in (5, 10))
        i64 = lambda v: builder.sext(v, _I64) if v.type.width < 64 else v  # noqa: E731
        i32 = lambda v: builder.trunc(v, _I32) if v.type.width > 32 else v  # noqa: E731
        builder.call(fn, [ir.Constant(_I32, ROW_MAJOR), i32(args[0]), i32(args[1]), i64(args[2]), i64(args[3]),
                          i64(args[4]), alpha_, data[0], i64(args[7]), data[1], i64(args[9]), beta_, data[2],
                          i64(args[12])])
        return context.get_dummy_value()

    sig_in = (ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return types.void(*sig_in), codegen


@njit(cache=True, error_model="numpy", inline="always")
def _operand(x):
    """(CBLAS transpose flag, leading dimension) to read x's memory as it is, or (0, 0) when neither its rows
    nor its columns are contiguous and apart (a broadcast row, negative strides)."""
    item = x.itemsize
    rows, cols = x.shape
    s0, s1 = x.strides
    if (s1 == item or cols == 1) and (rows == 1 or (s0 % item == 0 and s0 >= cols * item)):
        return NO_TRANS, s0 // item if rows > 1 else cols
    if (s0 == item or rows == 1) and (cols == 1 or (s1 % item == 0 and s1 >= rows * item)):
        return TRANS, s1 // item if cols > 1 else rows
    return 0, 0


@intrinsic
def _any_layout(typingctx, x):
    """x typed as a layout-'A' array (the same value): every caller of `_gemm` then shares one compiled
    specialisation per dtype instead of one per combination of C, F and A layouts (1.1-1.3 s each)."""
    if not isinstance(x, types.Array):
        return None

    def codegen(context, builder, sig, args):
        return impl_ret_borrowed(context, builder, sig.return_type, args[0])

    return x.copy(layout="A")(x), codegen


@intrinsic
def _split_parts(typingctx):
    """fluidlite/_blas.py's split setting (bands to split a product into; 0 or 1: none), read from its C
    global at each call (Numba's own get_num_threads would make a kernel uncachable)."""

    def codegen(context, builder, sig, args):
        parts = builder.module.globals.get(SPLIT_SYMBOL)
        if parts is None:
            parts = ir.GlobalVariable(builder.module, _I32, SPLIT_SYMBOL)  # external: the symbol _blas.py registered
        return builder.sext(builder.load(parts), _I64)

    return types.int64(), codegen


@njit(cache=True, error_model="numpy", inline="always")
def gemm(a, b, out, alpha, beta):
    """out = alpha * a @ b + beta * out, for 2-D float arrays of one dtype with any strides (a and b
    are read in place when their rows or columns are contiguous); out's rows must be contiguous.
    While a plan runs on fluidlite's pool, a large one runs as single-thread BLAS calls on parts of it,
    spread over Numba's threads (fluidlite/_threads.py)."""
    _gemm_any(_any_layout(a), _any_layout(b), _any_layout(out), np.float64(alpha), np.float64(beta),
              np.empty(0, out.dtype))


@njit(cache=True, error_model="numpy", inline="always")
def gemm_row(a, b, row, out):
    """out = a @ b + row, `row` ([n]) added to every row: out's rows are filled with it (by the thread that
    multiplies them, while a plan runs on the pool) and BLAS adds the product (beta = 1)."""
    if row.ndim != 1 or row.size != out.shape[1] or row.size == 0:
        raise ValueError("gemm_row: row must be 1-D, one value per column of out")
    # out keeps its own layout here: a fill of a C array vectorizes, of a layout-'A' one it did not (2048 x 512:
    # +200 us on a 830 us product)
    _gemm_any(_any_layout(a), _any_layout(b), out, 1.0, 1.0, row)


@njit(cache=True, error_model="numpy", inline="always")
def _gemm_any(a, b, out, alpha, beta, row):
    parts = _split_parts()
    if parts > 1 and out.shape[0] * out.shape[1] * a.shape[1] >= SPLIT_MIN:
        if not _skinny_gemm(a, b, out, alpha, beta, row, parts):
            _gemm_parts(a, b, out, alpha, beta, row, parts)
    else:
        _fill_rows(out, row, 0, out.shape[0], 0, out.shape[1])
        _gemm(a, b, _any_layout(out), alpha, beta)


@njit(cache=True, error_model="numpy", inline="always")
def _fill_rows(out, row, r0, r1, c0, c1):
    """out[r0:r1, c0:c1] = row[c0:c1] on every row (nothing for an empty row)."""
    if row.size:
        for i in range(r0, r1):
            for j in range(c0, c1):
                out[i, j] = row[j]


# The inner dimension is split in two when it is this many times out's longer side, and at least
# K_HALVES_MIN: a weight gradient's [128, 2048] x [2048, 128] took 389 us in four bands of out (each
# band's call packs all of the other operand again) and 252 as two halves of the inner dimension, the
# second half's product added after; [128, 512] x [512, 128] took 77 in halves against 62 in two bands.
K_HALVES_FROM, K_HALVES_MIN = 4, 1024


@njit(cache=True, error_model="numpy", parallel=True)
def _gemm_parts(a, b, out, alpha, beta, row, parts):
    """`_gemm` as single-thread calls on `parts` bands of out's longer side (whole 16-wide tiles), over
    the threads; a long inner dimension (K_HALVES_FROM, K_HALVES_MIN) also in two halves, the second
    one's product summed into out after (fixed halves: the bits do not depend on the thread count). A
    non-empty `row` is written to every row of out first, by the thread that multiplies it."""
    m, n = out.shape
    k = a.shape[1]
    if a.shape[0] != m or b.shape[1] != n or b.shape[0] != k:
        raise ValueError("gemm: shapes do not match")  # here: not from inside the parallel loop
    halves = 2 if k >= K_HALVES_FROM * max(m, n) and k >= K_HALVES_MIN else 1
    bands = max(1, parts // halves)
    rows = m >= n
    side = m if rows else n
    band = ((side + bands - 1) // bands + 15) // 16 * 16
    k_half = (k + 1) // 2 if halves == 2 else k
    second = np.empty((m if halves == 2 else 0, n), out.dtype)
    # the row and column cases spelled apart: a fill over bounds chosen at run time did not vectorize
    # ([2048, 128] x [128, 512] + bias: 918 us against 821)
    for task in prange(halves * bands):
        lo = task % bands * band
        hi = min(lo + band, side)
        if lo < hi:
            if task < bands:
                if rows:
                    _fill_rows(out, row, lo, hi, 0, n)
                    _gemm(a[lo:hi, :k_half], b[:k_half], _any_layout(out[lo:hi]), alpha, beta)
                else:
                    _fill_rows(out, row, 0, m, lo, hi)
                    _gemm(a[:, :k_half], b[:k_half, lo:hi], _any_layout(out[:, lo:hi]), alpha, beta)
            elif rows:
                _gemm(a[lo:hi, k_half:], b[k_half:], _any_layout(second[lo:hi]), alpha, 0.0)
            else:
                _gemm(a[:, k_half:], b[k_half:, lo:hi], _any_layout(second[:, lo:hi]), alpha, 0.0)
    if halves == 2:  # out is small against the product here (K_HALVES_FROM): one serial pass
        for i in range(m):
            for j in range(n):
                out[i, j] += second[i, j]


@intrinsic
def _skinny_gemm(typingctx, a, b, out, alpha, beta, row, parts):
    """Runs the product in kernels/skinny.py's tiles when it fits them (float32, 8 to 128 rows, alpha 1,
    beta 0 or 1, contiguous rows): True; else False and nothing done. Other dtypes compile to False."""
    sig = types.boolean(a, b, out, alpha, beta, row, parts)
    if not (skinny.AVAILABLE and a.dtype == b.dtype == out.dtype == types.float32):
        return sig, lambda context, builder, sig, args: context.get_constant(types.boolean, False)

    def run(a, b, out, alpha, beta, row, parts):
        m, n = out.shape
        k = a.shape[1]
        if not (skinny.ROWS <= m <= skinny.MAX_ROWS and n >= skinny.COLS and k > 0 and alpha == 1.0
                and (beta == 0.0 or beta == 1.0) and a.shape[0] == m and b.shape == (k, n)):
            return False
        if _operand(a)[0] != NO_TRANS or _operand(b)[0] != NO_TRANS or _operand(out)[0] != NO_TRANS:
            return False
        if a.strides[1] != 4 or b.strides[1] != 4 or out.strides[1] != 4:
            return False
        _skinny_parts(a, b, out, beta, row, parts)
        return True

    return sig, lambda context, builder, sig, args: context.compile_internal(builder, run, sig, args)


@njit(cache=True, error_model="numpy", parallel=True)
def _skinny_parts(a, b, out, beta, row, parts):
    """The whole 32-column panels of out in `parts` bands over the threads (skinny.tiles), then the rows
    and columns left over by BLAS. A non-empty `row` is written to out first, band by band."""
    m, n = out.shape
    wide = n // skinny.COLS * skinny.COLS
    whole = m // skinny.ROWS * skinny.ROWS
    add = beta == 1.0 or row.size > 0
    per = (wide // skinny.COLS + parts - 1) // parts * skinny.COLS
    for p in prange(parts):
        lo = p * per
        hi = min(lo + per, wide)
        if lo < hi:
            _fill_rows(out, row, 0, m, lo, hi)
            skinny.tiles(a, b, out, add, lo, hi)
    _fill_rows(out, row, 0, m, wide, n)
    rest = 1.0 if add else 0.0
    if wide < n:
        _gemm(a, b[:, wide:], out[:, wide:], 1.0, rest)
    if whole < m:
        _gemm(a[whole:], b[:, :wide], out[whole:, :wide], 1.0, rest)


@njit(cache=True, error_model="numpy")
def _gemm(a, b, out, alpha, beta):
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("gemm: shapes do not match")
    if m == 0 or n == 0:
        return
    if k == 0:  # BLAS may skip the call; the result is beta * out either way
        for i in range(m):
            for j in range(n):
                out[i, j] = out[i, j] * beta if beta != 0 else 0
        return
    ta, lda = _operand(a)
    if ta == 0:
        a = np.ascontiguousarray(a)
        ta, lda = NO_TRANS, k
    tb, ldb = _operand(b)
    if tb == 0:
        b = np.ascontiguousarray(b)
        tb, ldb = NO_TRANS, n
    tc, ldc = _operand(out)
    if tc != NO_TRANS:
        raise ValueError("gemm: out's rows must be contiguous and apart")
    _cblas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, out, ldc)


@njit(cache=True, error_model="numpy")
def dot(a, b):
    """a @ b for 2-D float arrays of one dtype (a new C-contiguous array)."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    gemm(a, b, out, 1.0, 0.0)
    return out
