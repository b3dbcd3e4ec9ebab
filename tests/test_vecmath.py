"""The float32 gelu in float32 arithmetic on the vectorizing exp (kernels/vecmath_fma.py, tested against
libm in test_vecmath_fma.py) against a float64 reference, in its tails too: the forward within 7 ulp (its
documented bound; 6.5 measured), the gradient within 2e-7 absolute."""
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
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=2e-7)
