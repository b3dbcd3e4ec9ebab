"""kernels/vecmath_fma.py: fma rounds once; exp and erfc with fused multiply-adds against libm."""
import math

import numpy as np
from numba import njit

from fluidlite.kernels.vecmath_fma import erfc_fma, exp_fma, expf_fma, fma, fmaf
from float32_exp_check import check_float32_exp


@njit(cache=False, error_model="numpy")
def _apply(p, which):
    out = np.empty_like(p)
    for i in range(p.size):
        if which == 0:
            out[i] = exp_fma(p[i])
        elif which == 1:
            out[i] = erfc_fma(p[i])
        else:
            out[i] = expf_fma(np.float32(p[i]))
    return out


def test_fma_rounds_once():
    a = 1.0 + 2.0 ** -30
    fused = njit(cache=False)(lambda x, y, z: fma(x, y, z))(a, a, -(1.0 + 2.0 ** -29))
    assert fused == 2.0 ** -60  # a * a - (1 + 2^-29) is exactly 2^-60; unfused it rounds to 0
    b = np.float32(1.0 + 2.0 ** -12)
    fused32 = njit(cache=False)(lambda x, y, z: fmaf(x, y, z))(b, b, np.float32(-(1.0 + 2.0 ** -11)))
    assert fused32 == np.float32(2.0 ** -24)


def test_exp_fma_matches_libm_and_keeps_nan():
    p = np.concatenate([np.linspace(-700, 700, 20001), [0.0, -0.0, 1e-300, -1e-300]])
    np.testing.assert_allclose(_apply(p, 0), [math.exp(v) for v in p], rtol=1e-11, atol=0)
    got = _apply(np.array([np.nan, -np.inf, -750.0]), 0)
    assert np.isnan(got[0]) and got[1] == 0 and got[2] == 0


def test_erfc_fma_relative_error_below_the_fit_bound_including_its_tail():
    z = np.linspace(-6, 26, 32001)
    np.testing.assert_allclose(_apply(z, 1), [math.erfc(v) for v in z], rtol=1.3e-7, atol=0)
    got = _apply(np.array([np.nan, np.inf, -np.inf]), 1)
    assert np.isnan(got[0]) and got[1] == 0 and got[2] == 2


def test_expf_fma_within_1_5_ulp_with_expf32s_range_ends():
    check_float32_exp(lambda p: _apply(p, 2))
    edge = _apply(np.array([np.nan, np.inf, -np.inf, 0.0], np.float32), 2)
    assert np.isnan(edge[0]) and edge[1] == np.inf and edge[2] == 0 and edge[3] == 1
