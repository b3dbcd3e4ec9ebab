"""kernels/vecmath.py: the vectorizing exp and erfc against libm (math.exp, math.erfc), and the float32
gelu built on them against a float64 reference, in its tails too."""
import math

import numpy as np
from numba import njit

import fluidlite as fl
from fluidlite import layers
from fluidlite.kernels.vecmath import erfc_, exp_


@njit(cache=False)
def _exp_all(p):
    out = np.empty_like(p)
    for i in range(p.size):
        out[i] = exp_(p[i])
    return out


@njit(cache=False)
def _erfc_all(z):
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = erfc_(z[i])
    return out


def test_exp_matches_libm_and_keeps_nan():
    p = np.concatenate([np.linspace(-700, 700, 20001), [0.0, -0.0, 1e-300, -1e-300]])
    want = np.array([math.exp(v) for v in p])
    np.testing.assert_allclose(_exp_all(p), want, rtol=1e-11, atol=0)
    got = _exp_all(np.array([np.nan, -np.inf, -750.0]))
    assert np.isnan(got[0]) and got[1] == 0 and got[2] == 0


def test_erfc_relative_error_below_the_fit_bound_including_its_tail():
    z = np.linspace(-6, 26, 32001)
    want = np.array([math.erfc(v) for v in z])
    np.testing.assert_allclose(_erfc_all(z), want, rtol=1.3e-7, atol=0)
    got = _erfc_all(np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(got[0]) and got[1] == 0 and got[2] == 2


def _gelu_run(x):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        xv = layers.data("x", list(x.shape), dtype=str(x.dtype), append_batch_size=False)
        xv.stop_gradient = False
        out = layers.gelu(xv)
        dx, = fl.gradients([layers.reduce_sum(out)], [xv])
    return fl.Executor().run(main, feed={"x": x}, fetch_list=[out, dx])


def test_float32_gelu_within_3_ulp_of_float64_in_both_tails():
    x = np.linspace(-12, 8, 4001).astype(np.float32)
    out, dx = _gelu_run(x)
    xd = x.astype(np.float64)
    phi = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xd])
    want = xd * phi
    normal = np.abs(want) > np.finfo(np.float32).tiny
    ulps = np.abs(out - want)[normal] / np.spacing(np.abs(want[normal]).astype(np.float32))
    assert ulps.max() <= 3, ulps.max()
    want_dx = phi + xd * np.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=2e-7)
