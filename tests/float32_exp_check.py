"""Accuracy checks shared by the tests of fluidlite's vectorizing float32 exponentials."""
import numpy as np


def check_float32_exp(exp_all, max_ulps=1.5):
    """exp_all (a float32 array -> its exps) against float64 np.exp over [-110, 95]: within max_ulps
    where the result is a normal float32, within one subnormal step through gradual underflow, and
    inf exactly where float32 overflows."""
    p = np.linspace(-110, 95, 400001).astype(np.float32)
    got = exp_all(p)
    assert got.dtype == np.float32
    want = np.exp(p.astype(np.float64))
    with np.errstate(over="ignore"):
        want32 = want.astype(np.float32)
    normal = np.isfinite(want32) & (want32 >= np.finfo(np.float32).tiny)
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want32[normal])
    assert ulps.max() <= max_ulps, ulps.max()
    small = want32 < np.finfo(np.float32).tiny  # gradual underflow, then 0
    assert np.abs(got[small] - want[small]).max() <= np.finfo(np.float32).smallest_subnormal
    assert np.array_equal(np.isinf(got), np.isinf(want32))
