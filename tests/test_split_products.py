"""Products split over Numba's TBB threads (kernels/blas.py `_gemm_parts`) while the kernels' BLAS is held
to one thread (fluidlite/_threads.py `BlasPin`), against float64 NumPy; and a forked child still runs."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from fluidlite import _blas, _threads
from fluidlite.kernels import blas


def _ref(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", [2, 3])
def test_split_products_match_numpy_in_every_band_shape(split, dtype, parts):
    rng = np.random.default_rng(0)
    tol = dict(rtol=2e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    cases = {  # multiply-adds >= SPLIT_MIN; tall (bands of rows), wide (bands of columns), ragged bands
        "tall": ((2048, 128), (128, 128)),
        "wide": ((32, 256), (256, 1024)),
        "ragged rows": ((1001, 67), (67, 45)),
        "ragged columns": ((37, 300), (300, 1003)),
    }
    split(parts)
    for name, (sa, sb) in cases.items():
        a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
        assert a.shape[0] * a.shape[1] * b.shape[1] >= blas.SPLIT_MIN, name
        np.testing.assert_allclose(blas.dot(a, b), _ref(a, b), **tol, err_msg=name)
        # transposed operands (BLAS flags) and C = 0.5 A B + 2 C into a strided output
        at, bt = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
        big = rng.standard_normal((sa[0] + 3, sb[1] + 5)).astype(dtype)
        out = big[1:sa[0] + 1, 2:sb[1] + 2]
        want = 0.5 * _ref(at, bt) + 2.0 * out.astype(np.float64)
        blas.gemm(at, bt, out, 0.5, 2.0)
        np.testing.assert_allclose(out, want, **tol, err_msg=name + ", transposed, alpha and beta")


def test_split_products_keep_the_rows_outside_the_output(split):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((512, 256)).astype(np.float32), rng.standard_normal((256, 64)).astype(np.float32)
    big = rng.standard_normal((520, 70)).astype(np.float32)
    pristine = big.copy()
    split(2)
    blas.gemm(a, b, big[4:516, 3:67], 1.0, 0.0)
    mask = np.ones(big.shape, bool)
    mask[4:516, 3:67] = False
    assert np.array_equal(big[mask], pristine[mask])
    np.testing.assert_allclose(big[4:516, 3:67], _ref(a, b), rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", [0, 2, 4])
def test_long_inner_dimensions_split_in_halves_match_numpy(split, dtype, parts):
    """Inner dimension >= K_HALVES_FROM x out's longer side: two halves, the second summed in after;
    with alpha, beta, a strided output and an odd length (halves of unequal size)."""
    rng = np.random.default_rng(2)
    tol = dict(rtol=2e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    split(parts)
    for m, k, n in ((128, 2048, 128), (96, 2049, 160), (33, 1025, 250)):
        assert k >= max(blas.K_HALVES_FROM * max(m, n), blas.K_HALVES_MIN) and m * n * k >= blas.SPLIT_MIN
        a = rng.standard_normal((k, m)).astype(dtype).T  # a weight gradient's x^T, read transposed
        b = rng.standard_normal((k, n)).astype(dtype)
        big = rng.standard_normal((m + 2, n + 3)).astype(dtype)
        out = big[1:m + 1, 1:n + 1]
        want = 0.5 * _ref(a, b) - 1.5 * out.astype(np.float64)
        blas.gemm(a, b, out, 0.5, -1.5)
        np.testing.assert_allclose(out, want, **tol, err_msg=f"{m}x{k}x{n}")


@pytest.mark.parametrize("parts", [0, 2, 4])
def test_gemm_row_adds_the_row_to_every_row_of_the_product(split, parts):
    rng = np.random.default_rng(3)
    split(parts)
    for m, k, n in ((2048, 128, 128), (32, 256, 1024), (128, 2048, 128), (5, 3, 4)):
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        row = rng.standard_normal(n).astype(np.float32)
        out = np.full((m, n), np.nan, np.float32)  # whatever was there is not read
        blas.gemm_row(a, b, row, out)
        np.testing.assert_allclose(out, _ref(a, b) + row, rtol=2e-5, atol=2e-4, err_msg=f"{m}x{k}x{n}")


def test_gemm_row_refuses_a_row_of_the_wrong_length(split):
    split(4)
    a, b = np.ones((2048, 128), np.float32), np.ones((128, 128), np.float32)
    with pytest.raises(ValueError, match="one value per column"):
        blas.gemm_row(a, b, np.ones(127, np.float32), np.empty((2048, 128), np.float32))


def test_a_split_product_with_bad_shapes_is_refused(split):
    split(2)
    a, b = np.ones((2048, 128), np.float32), np.ones((128, 129), np.float32)
    with pytest.raises(ValueError, match="shapes do not match"):
        blas.gemm(a, b, np.empty((2048, 128), np.float32), 1.0, 0.0)


class _Lib:
    def __init__(self, n):
        self.n = n

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.n = n


def test_blas_pin_holds_one_thread_and_splits_while_any_run_is_on_and_restores_after_the_last():
    pin, lib, single = _threads.BlasPin(), _Lib(4), _Lib(1)
    before = _blas.split_products()
    try:
        _blas.split_products(0)
        pin.enter([lib, single], 2)
        assert lib.n == 1 and single.n == 1 and _blas.split_products() == 2
        pin.enter([lib, single], 2)  # a second run, from another thread
        pin.exit()
        assert lib.n == 1 and _blas.split_products() == 2  # still one run going
        pin.exit()
        assert lib.n == 4 and single.n == 1 and _blas.split_products() == 0  # kernels outside a run: whole
    finally:
        _blas.split_products(before)


def test_runs_from_two_threads_give_numpy_its_blas_threads_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import fluidlite as fl
    from fluidlite import layers

    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        x = layers.data(name="x", shape=[256], dtype="float32")
        w = layers.create_parameter([256, 1024], "float32", name="w_split",
                                    default_initializer=fl.initializer.Constant(0.01))
        y = layers.matmul(x, w)
    _threads.choose_layer()
    if not _threads.pool_on():
        pytest.skip("the TBB pool is off in this process (a layer was chosen before fluidlite's)")
    libs = _threads._kernel_blas()
    feed = {"x": np.ones((64, 256), np.float32)}
    errors = []

    def work():
        exe, scope = fl.Executor(), fl.Scope()
        scope.set_array("w_split", np.full((256, 1024), 0.01, np.float32))
        for _ in range(30):
            out, = exe.run(main, feed=feed, fetch_list=[y], scope=scope)
            if not np.allclose(out, 2.56, rtol=1e-5):
                errors.append(float(out.flat[0]))

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = [lib.get_num_threads() for lib in libs]
        threads = [threading.Thread(target=work) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert errors == [] and [lib.get_num_threads() for lib in libs] == before == [2] * len(libs)
    assert _blas.split_products() == 0


FORK = """
import os, numpy as np, fluidlite as fl
from fluidlite import layers, _threads
x = layers.data(name="x", shape=[512], dtype="float32")
w = layers.create_parameter([512, 512], "float32", name="w", default_initializer=fl.initializer.Constant(0.5))
y = layers.relu(layers.matmul(x, w))  # a split product, then a prange kernel (2048 x 512 elements)
exe = fl.Executor()
exe.run(fl.default_startup_program())
feed = {"x": np.ones((2048, 512), np.float32)}
out, = exe.run(feed=feed, fetch_list=[y])
pid = os.fork()
if pid == 0:
    child, = exe.run(feed=feed, fetch_list=[y])
    os._exit(0 if np.array_equal(child, out) and np.allclose(out, 256.0) else 3)
_, status = os.waitpid(pid, 0)
print(_threads.choose_layer(), _threads.pool_on(), os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_plans_on_the_pool():
    """GNU OpenMP's layer would stop such a child ('fork() called from a process already using GNU
    OpenMP'); TBB, fluidlite's layer, is fork-safe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_THREADING", "OMP_"))}
    done = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tbb", "True", "0"]
