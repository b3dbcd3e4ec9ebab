"""kernels/vecmath_fma.py: exp and erfc with fused multiply-adds against libm (math.exp, math.erfc)."""
import math

import numpy as np
from numba import njit

from fluidlite.kernels.vecmath_fma import erfc_fma, exp_fma, fma


@njit(cache=False, error_model="numpy")
def _apply(p, which):
    out = np.empty_like(p)
    for i in range(p.size):
        out[i] = exp_fma(p[i]) if which == 0 else erfc_fma(p[i])
    return out


def test_fma_rounds_once():
    a = 1.0 + 2.0 ** -30
    fused = njit(cache=False)(lambda x, y, z: fma(x, y, z))(a, a, -(1.0 + 2.0 ** -29))
    assert fused == 2.0 ** -60  # a * a - (1 + 2^-29) is exactly 2^-60; unfused it rounds to 0


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
