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


def _child(code, *args, **env):
    return subprocess.run([sys.executable, "-c", code, *args], env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=300)


_BACKEND_CHILD = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from fluidlite.kernels import blas
from fluidlite import _threads
want = sys.argv[3]
assert (blas.FLOAT32, blas.BACKEND) == (want, "mkl" if want == "mkl" else "numpy"), (blas.FLOAT32, blas.BACKEND)
assert want != "onednn" or any(lib.user_api == "openmp" for lib in _threads._kernel_blas())
assert want != "mkl" or [lib.internal_api for lib in _threads._kernel_blas()] == ["mkl"]
rng = np.random.default_rng(3)
for dt in (np.float32, np.float64):
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((4, 6) if ta else (6, 4)).astype(dt)
            b = rng.standard_normal((5, 4) if tb else (4, 5)).astype(dt)
            A, B = (a.T if ta else a), (b.T if tb else b)
            out = np.ones((6, 5), dt)
            blas.gemm(A, B, out, 2.0, 0.5)
            err = np.abs(out - (0.5 + 2 * A.astype(np.float64) @ B)).max()
            assert err < (1e-5 if dt == np.float32 else 1e-12), (dt, ta, tb, err)
import fluidlite as fl
from test_compiler import _lstm
np.random.seed(0)  # seeds the unseeded initializers
loss, grads = _lstm("float32", seq_len=5)
exe = fl.Executor()
exe.run(fl.default_startup_program())
r = np.random.default_rng(0)
feed = {"x": r.standard_normal((5, 3, 5)).astype("float32"), "label": r.integers(0, 3, (3, 1))}
got = exe.run(feed=feed, fetch_list=[loss] + [grads[n] for n in sorted(grads)])
np.save(sys.argv[1], np.concatenate([np.ravel(g) for g in got]))
"""


def _matches_the_default_backend(tmp_path, choice):
    """_BACKEND_CHILD under FLUIDLITE_BLAS=choice and under the default: the same LSTM losses and gradients."""
    outs = {}
    for backend in (choice, "numpy"):
        path = str(tmp_path / f"{backend}.npy")
        done = _child(_BACKEND_CHILD, path, os.path.dirname(os.path.abspath(__file__)), backend, FLUIDLITE_BLAS=backend)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[backend] = np.load(path)
    np.testing.assert_allclose(outs[choice], outs["numpy"], rtol=1e-4, atol=1e-6)


def test_onednn_takes_the_float32_products_and_they_match(tmp_path):
    """FLUIDLITE_BLAS=onednn (the onednn-cpu-gomp wheel, a test dependency): float32 products of every layout
    through oneDNN, float64 ones still through NumPy's BLAS, an LSTM's loss and gradients as the default
    backend's up to float32 rounding, and the thread policy sees oneDNN's OpenMP runtime."""
    import ctypes.util

    from fluidlite._blas import onednn_library

    assert onednn_library() is not None, "pip install onednn-cpu-gomp (a test dependency)"
    if ctypes.util.find_library("gomp") is None:  # a machine without it: the backend must say so at import
        done = _child("import fluidlite", FLUIDLITE_BLAS="onednn")
        assert done.returncode != 0 and "needs the system's libgomp" in done.stderr, done.stderr[-2000:]
        return
    _matches_the_default_backend(tmp_path, "onednn")


def test_mkl_takes_every_product_and_they_match(tmp_path):
    """FLUIDLITE_BLAS=mkl (the mkl wheel, a test dependency): float32 and float64 products of every layout
    through MKL's cblas_?gemm_64, an LSTM's loss and gradients as the default backend's up to float32
    rounding, and the thread policy limits MKL's threads (and no other library's)."""
    from fluidlite._blas import mkl_library

    assert mkl_library() is not None, "pip install mkl (a test dependency)"
    _matches_the_default_backend(tmp_path, "mkl")


def test_mkl_without_its_wheel_is_refused_at_import():
    done = _child("import sys; sys.prefix = '/nonexistent'; import fluidlite", FLUIDLITE_BLAS="mkl")
    assert done.returncode != 0 and "pip install mkl" in done.stderr, done.stderr[-2000:]


def test_an_unknown_blas_choice_is_refused_by_name():
    done = _child("import fluidlite", FLUIDLITE_BLAS="blis")
    assert done.returncode != 0 and "FLUIDLITE_BLAS='blis': choose numpy, scipy, onednn or mkl" in done.stderr


def test_onednn_without_its_wheel_is_refused_at_import():
    done = _child("import sys; sys.prefix = '/nonexistent'; import fluidlite", FLUIDLITE_BLAS="onednn")
    assert done.returncode != 0 and "pip install onednn-cpu-gomp" in done.stderr, done.stderr[-2000:]
