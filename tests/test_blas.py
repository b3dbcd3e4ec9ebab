"""kernels/blas.py: the one BLAS every kernel's product goes through, against float64 NumPy."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fluidlite.kernels import blas


def _ref(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_of_every_layout_match_numpy(dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype)
    big = rng.standard_normal((4, 9, 11)).astype(dtype)
    cases = {
        "contiguous": (a, b),
        "transposed views": (np.asfortranarray(a), np.asfortranarray(b)),
        "a.T and b.T": (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T),
        "strided rows": (big[1, 1:8, 2:7], big[2, :5, 4:7]),
        "strided columns": (big[1, 2:7, 1:8].T, big[3, 1:4, 0:5].T),
        "neither contiguous": (big[0, ::2, ::2][:, :5], big[2, :10:2, 1:10:3]),
        "broadcast row": (np.broadcast_to(a[:1], (7, 5)), b),
        "negative strides": (a[::-1, ::-1], b[::-1]),
        "one row, one column": (a[2:3], b[:, 1:2]),
    }
    for name, (x, y) in cases.items():
        np.testing.assert_allclose(blas.dot(x, y), _ref(x, y), **_tol(dtype), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_scales_and_accumulates_into_a_strided_output(dtype):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal((4, 5)).astype(dtype)
    base = rng.standard_normal((6, 9)).astype(dtype)
    out = base.copy()
    blas.gemm(a, b, out[:, 2:7], 0.5, 1.0)  # rows 9 apart
    want = base.astype(np.float64)
    want[:, 2:7] += 0.5 * _ref(a, b)
    np.testing.assert_allclose(out, want, **_tol(dtype))
    assert np.array_equal(out[:, :2], base[:, :2]) and np.array_equal(out[:, 7:], base[:, 7:])
    out = base[:, :5].copy()
    blas.gemm(a, b, out, 2.0, 0.0)  # beta 0 ignores what was there, NaN included
    out2 = np.full_like(out, np.nan)
    blas.gemm(a, b, out2, 2.0, 0.0)
    np.testing.assert_allclose(out, 2 * _ref(a, b), **_tol(dtype))
    np.testing.assert_array_equal(out, out2)


def test_empty_inner_dimension_and_bad_shapes():
    out = np.ones((3, 2))
    blas.gemm(np.ones((3, 0)), np.ones((0, 2)), out, 1.0, 0.5)
    np.testing.assert_array_equal(out, np.full((3, 2), 0.5))
    out[0, 0] = np.nan
    blas.gemm(np.ones((3, 0)), np.ones((0, 2)), out, 1.0, 0.0)
    np.testing.assert_array_equal(out, np.zeros((3, 2)))
    assert blas.dot(np.ones((0, 4)), np.ones((4, 2))).shape == (0, 2)
    with pytest.raises(ValueError, match="shapes do not match"):
        blas.gemm(np.ones((3, 4)), np.ones((5, 2)), np.ones((3, 2)), 1.0, 0.0)
    with pytest.raises(ValueError, match="out's rows must be contiguous"):
        blas.gemm(np.ones((3, 4)), np.ones((4, 2)), np.ones((2, 3)).T, 1.0, 0.0)


def test_scipy_fallback_gives_the_same_products():
    """Where NumPy's BLAS exports no 64-bit CBLAS, the kernels use SciPy's through Numba's own helper;
    FLUIDLITE_BLAS=scipy takes that path in a child process."""
    code = ("import numpy as np; from fluidlite.kernels import blas; assert blas.BACKEND == 'scipy', blas.BACKEND\n"
            "rng = np.random.default_rng(3)\n"
            "for dt in (np.float32, np.float64):\n"
            "    a, b = rng.standard_normal((6, 4)).astype(dt), rng.standard_normal((5, 4)).astype(dt)\n"
            "    out = np.ones((6, 5), dt); blas.gemm(a, b.T, out, 2.0, 1.0)\n"
            "    err = np.abs(out - (1 + 2 * a.astype(np.float64) @ b.T)).max()\n"
            "    assert err < (1e-5 if dt == np.float32 else 1e-12), err\n"
            "print('ok')")
    env = dict(os.environ, FLUIDLITE_BLAS="scipy")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
