"""The float32 gelu in float32 arithmetic on the vectorizing exp (kernels/vecmath_fma.py, tested against
libm in test_vecmath_fma.py) against a float64 reference, in its tails too: the forward within 7 ulp (its
documented bound; 6.5 measured), the gradient within 3e-7 absolute."""
import math

import numpy as np

import fluidlite as fl
from fluidlite import layers


def _gelu_run(x):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        xv = layers.data("x", list(x.shape), dtype=str(x.dtype), append_batch_size=False)
        xv.stop_gradient = False
        out = layers.gelu(xv)
        dx, = fl.gradients([layers.reduce_sum(out)], [xv])
    return fl.Executor().run(main, feed={"x": x}, fetch_list=[out, dx])


def test_float32_gelu_within_7_ulp_of_float64_in_both_tails():
    x = np.linspace(-12, 8, 4001).astype(np.float32)
    out, dx = _gelu_run(x)
    xd = x.astype(np.float64)
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xd])
    want = xd * phi
    normal = np.abs(want) > np.finfo(np.float32).tiny
    ulps = np.abs(out - want)[normal] / np.spacing(np.abs(want[normal]).astype(np.float32))
    assert ulps.max() <= 7, ulps.max()
    want_dx = phi + xd * np.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=3e-7)


def test_wide_vectors_marks_the_loop_function_and_changes_no_result():
    """vecmath.wide_vectors() puts LLVM's prefer-vector-width=512 on the function it is inlined into: on an
    AVX-512 CPU its loop uses zmm registers; either way the results are bit for bit those without it.
    The float32 exps call it, so a gelu kernel carries it too."""
    from numba import njit

    from fluidlite.kernels import activation
    from fluidlite.kernels.vecmath import wide_vectors

    def body(x, out):
        for i in range(x.size):
            v = x[i]
            out[i] = ((v * np.float32(0.25) + np.float32(-0.5)) * v + np.float32(1.5)) / (v * v + np.float32(1))

    narrow = njit(error_model="numpy")(body)
    inlined = njit(inline="always", error_model="numpy")(body)

    @njit(error_model="numpy")
    def wide(x, out):
        wide_vectors()
        inlined(x, out)

    x = np.random.default_rng(5).standard_normal(4099).astype(np.float32) * 6
    a, b = np.empty_like(x), np.empty_like(x)
    wide(x, a)
    narrow(x, b)
    np.testing.assert_array_equal(a, b)
    attribute = '"prefer-vector-width"="512"'
    assert attribute in next(iter(wide.inspect_llvm().values()))
    assert attribute not in next(iter(narrow.inspect_llvm().values()))
    gelu = njit(error_model="numpy")(activation.unary.py_func)  # compiled here: cached code has no IR to read
    gelu(x, activation.GELU_VEC, np.float32(0))
    assert attribute in next(iter(gelu.inspect_llvm().values()))
    import llvmlite.binding as llvm

    if "+avx512f" in llvm.get_host_cpu_features().flatten():
        assert "zmm" in next(iter(wide.inspect_asm().values()))
