"""Skinny float32 products (8 to 128 rows) in kernels/skinny.py's AVX-512 tiles, reached through
kernels/blas.py while products are split, against float64 NumPy."""
import numpy as np
import pytest

from fluidlite.kernels import blas, skinny

pytestmark = pytest.mark.skipif(not skinny.AVAILABLE, reason="Numba does not compile for an AVX-512 CPU here")
TOL = dict(rtol=2e-5, atol=2e-4)


def _ref(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


def _strided(rng, rows, cols, pad=5):
    """A float32 [rows, cols] view whose rows lie further apart than its length."""
    return rng.standard_normal((rows, cols + pad)).astype(np.float32)[:, 2:cols + 2]


SHAPES = [  # (m, k, n), multiply-adds >= SPLIT_MIN: whole tiles; rows left over; columns left over; both; k = 1
    (32, 256, 1024), (13, 300, 1024), (128, 784, 256), (100, 333, 1003), (8, 1, 1 << 18)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_skinny_products_match_numpy_and_do_not_depend_on_the_thread_count(split, m, k, n, beta):
    rng = np.random.default_rng(m + k + n)
    assert m * k * n >= blas.SPLIT_MIN
    a, b = _strided(rng, m, k), _strided(rng, k, n)
    start = _strided(rng, m, n)
    results = []
    for parts in (2, 3):
        split(parts)
        out = start.copy() if beta else np.full((m, n), np.nan, np.float32)  # beta 0 ignores what out holds
        blas.gemm(a, b, out, 1.0, beta)
        np.testing.assert_allclose(out, _ref(a, b) + beta * start, **TOL)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("m,k,n", SHAPES[:4])
def test_adding_into_out_rounds_as_the_product_then_the_sum(split, m, k, n):
    """mul_acc's contract (ops/compiler_ops.py): out + a b rounds the product once, then the sum."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    start = rng.standard_normal((m, n)).astype(np.float32)
    split(2)
    out = start.copy()
    blas.gemm(a, b, out, 1.0, 1.0)
    np.testing.assert_array_equal(out, start + blas.dot(a, b))


@pytest.mark.parametrize("m,k,n", SHAPES[:4])
def test_skinny_products_with_a_bias_row(split, m, k, n):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    row = rng.standard_normal(n).astype(np.float32)
    split(2)
    out = np.full((m, n), np.nan, np.float32)
    blas.gemm_row(a, b, row, out)
    np.testing.assert_allclose(out, _ref(a, b) + row, **TOL)


def test_products_the_tiles_do_not_take_still_match_numpy(split):
    """alpha, another beta, transposed operands, too many rows: the other paths, same results."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((32, 256)).astype(np.float32), rng.standard_normal((256, 1024)).astype(np.float32)
    start = rng.standard_normal((32, 1024)).astype(np.float32)
    split(2)
    for alpha, beta, x, y in ((0.5, 0.0, a, b), (1.0, 2.0, a, b), (1.0, 0.0, np.asfortranarray(a), b),
                              (1.0, 0.0, a, np.asfortranarray(b))):
        out = start.copy()
        blas.gemm(x, y, out, alpha, beta)
        np.testing.assert_allclose(out, alpha * _ref(a, b) + beta * start, **TOL)
    tall = rng.standard_normal((skinny.MAX_ROWS + 8, 256)).astype(np.float32)
    np.testing.assert_allclose(blas.dot(tall, b), _ref(tall, b), **TOL)


def test_tiles_fill_only_their_panels():
    """skinny.tiles on whole tiles of a band: the band matches NumPy, everything else is untouched."""
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((20, 70)).astype(np.float32), rng.standard_normal((70, 200)).astype(np.float32)
    out = np.full((20, 200), 7.0, np.float32)
    lo, hi = skinny.COLS, 4 * skinny.COLS
    skinny.tiles(a, b, out, False, lo, hi)
    rows = 20 // skinny.ROWS * skinny.ROWS
    np.testing.assert_allclose(out[:rows, lo:hi], _ref(a, b)[:rows, lo:hi], **TOL)
    untouched = np.ones(out.shape, bool)
    untouched[:rows, lo:hi] = False
    assert (out[untouched] == 7.0).all()
