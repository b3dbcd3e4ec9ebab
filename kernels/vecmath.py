"""exp and erfc written in plain float64 arithmetic, so that loops calling them vectorize.

Numba has no vector math library here (no SVML): `np.exp` and `math.erf` in a loop become one scalar
libm call per element, 10-20x slower than torch's vectorized `gelu` on a (32, 64, 512) activation.
These helpers use only +, *, /, comparisons and bit casts, which LLVM turns into SIMD code.

- `exp_(p)`: exp of a float64 by range reduction (p = k ln 2 + r, |r| <= ln2 / 2) and a degree-9
  Taylor polynomial (relative error below 1e-11, far below the erfc fit's); 2^k is built in the exponent bits. Inputs below
  -708 give 0 (no subnormal results), above 709 exp(709); NaN stays NaN.
- `erfc_(z)`: the complementary error function as t exp(-z^2 + P(t)), t = 1 / (1 + |z| / 2),
  the Chebyshev fit of Numerical Recipes ("erfcc", fractional error below 1.2e-7 for every z),
  so float32 results are within about 2 ulp; erfc keeps that relative accuracy in its small tail,
  where 1 - erf(z) would cancel.

Callers must not be compiled with fastmath "reassoc" (or fastmath=True): exp_ rounds to an integer
by adding and subtracting 1.5 * 2^52, which reassociation would fold away. (An inlined helper is
compiled with its caller's flags.)
"""
import numpy as np
from numba import njit, types
from numba.extending import intrinsic


def _bitcast(name, source, target):
    """An intrinsic reinterpreting a `source` value's bits as `target` (its argument is converted to
    `source` first, as any typed call converts)."""
    def typer(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(target))
        return target(source), codegen
    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


f64_bits = _bitcast("f64_bits", types.float64, types.int64)
bits_f64 = _bitcast("bits_f64", types.int64, types.float64)
f32_bits = _bitcast("f32_bits", types.float32, types.int32)
bits_f32 = _bitcast("bits_f32", types.int32, types.float32)
del _bitcast  # kernel modules hold Numba functions only (test_registry)


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.9082149292705877e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer kept in the low mantissa bits
_SHIFT_BITS = 0x4338000000000000  # the bits of _SHIFT


@njit(cache=True, error_model="numpy", inline="always")
def exp_(p):
    p0 = p
    p = -708.0 if p < -708.0 else p  # clamp (a NaN passes both tests unchanged)
    p = 709.0 if p > 709.0 else p
    t = p * _LOG2E + _SHIFT
    k = t - _SHIFT  # round(p / ln 2), as a float
    r = (p - k * _LN2_HI) - k * _LN2_LO
    q = 1.0 / 362880.0
    q = q * r + 1.0 / 40320.0
    q = q * r + 1.0 / 5040.0
    q = q * r + 1.0 / 720.0
    q = q * r + 1.0 / 120.0
    q = q * r + 1.0 / 24.0
    q = q * r + 1.0 / 6.0
    q = q * r + 0.5
    q = q * r + 1.0
    q = q * r + 1.0
    scale = bits_f64(((f64_bits(t) - _SHIFT_BITS) + 1023) << 52)  # 2^k
    q *= scale
    return 0.0 if p0 < -708.0 else q


@njit(cache=True, error_model="numpy", inline="always")
def erfc_(z):
    a = abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    p = t * (-0.82215223 + t * 0.17087277)
    p = t * (1.48851587 + p)
    p = t * (-1.13520398 + p)
    p = t * (0.27886807 + p)
    p = t * (-0.18628806 + p)
    p = t * (0.09678418 + p)
    p = t * (0.37409196 + p)
    p = t * (1.00002368 + p)
    e = t * exp_(-a * a - 1.26551223 + p)
    e = e if a < 27.0 else 0.0 * e  # erfc(27) < 1e-318; exp_ clamps, so say 0 here (NaN stays NaN)
    return e if z >= 0 else 2.0 - e
