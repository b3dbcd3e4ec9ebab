"""kernels/expf32.py: the vectorizing float32 exp against float64 np.exp (in ulps, with its underflow,
overflow and NaN), and exp_data's dispatch on the dtype (float64: libm's exp, as math.exp)."""
import math

import numpy as np
import pytest
from numba import njit

from fluidlite.kernels.expf32 import exp_data
from float32_exp_check import check_float32_exp


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
    check_float32_exp(exp_all)
    edge = exp_all(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32))
    assert np.isnan(edge[0]) and edge[1] == np.inf and edge[2] == 0 and edge[3] == 1 and edge[4] == 1


def test_float64_keeps_libm_exp():
    p = np.linspace(-700, 700, 2001)
    np.testing.assert_array_equal(_exp_all(p), [math.exp(v) for v in p])
