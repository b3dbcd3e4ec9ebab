"""kernels/expf32.py: the vectorizing float32 exp against float64 np.exp (in ulps, with its underflow,
overflow and NaN), and exp_data's dispatch on the dtype (float64: libm's exp, as math.exp)."""
import math

import numpy as np
import pytest
from numba import njit

from fluidlite.kernels.expf32 import exp_data


def _exp_all_py(p):
    out = np.empty_like(p)
    for i in range(p.size):
        out[i] = exp_data(p[i])
    return out


_exp_all = njit(cache=False, error_model="numpy")(_exp_all_py)
# as the LSTM kernels compile it: a * b + c may become one FMA
_exp_all_fma = njit(cache=False, error_model="numpy", fastmath={"contract"})(_exp_all_py)


@pytest.mark.parametrize("fma", [False, True])
def test_float32_exp_within_1_5_ulp_and_its_range_ends(fma):
    exp_all = _exp_all_fma if fma else _exp_all
    p = np.linspace(-110, 95, 400001).astype(np.float32)
    got = exp_all(p)
    assert got.dtype == np.float32
    want = np.exp(p.astype(np.float64))
    with np.errstate(over="ignore"):
        want32 = want.astype(np.float32)
    normal = np.isfinite(want32) & (want32 >= np.finfo(np.float32).tiny)
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want32[normal])
    assert ulps.max() <= 1.5, ulps.max()
    small = want32 < np.finfo(np.float32).tiny  # gradual underflow, then 0
    assert np.abs(got[small] - want[small]).max() <= np.finfo(np.float32).smallest_subnormal
    assert np.array_equal(np.isinf(got), np.isinf(want32))
    edge = exp_all(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32))
    assert np.isnan(edge[0]) and edge[1] == np.inf and edge[2] == 0 and edge[3] == 1 and edge[4] == 1


def test_float64_keeps_libm_exp():
    p = np.linspace(-700, 700, 2001)
    np.testing.assert_array_equal(_exp_all(p), [math.exp(v) for v in p])
