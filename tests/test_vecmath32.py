"""kernels/vecmath32.py: the float32 exp that vectorizes, against float64 exp, at its clamps and on NaN."""
import numpy as np
from numba import njit

from fluidlite.kernels.vecmath32 import expf_


@njit(cache=False, error_model="numpy", fastmath=False)
def _expf_all(p):
    out = np.empty_like(p)
    for i in range(p.size):
        out[i] = expf_(p[i])
    return out


def test_expf_within_2_ulp_of_float64_exp():
    p = np.concatenate([np.linspace(-87.3, 88.37, 200001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    want = np.exp(p.astype(np.float64))
    ulps = np.abs(_expf_all(p) - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 2, ulps.max()


def test_expf_clamps_and_keeps_nan():
    got = _expf_all(np.array([np.nan, -np.inf, -90.0, 1000.0, np.inf], np.float32))
    assert np.isnan(got[0]) and got[1] == 0 and got[2] == 0
    np.testing.assert_allclose(got[3:], np.exp(np.float64(np.float32(88.37))), rtol=2.5e-7)  # clamped, finite
