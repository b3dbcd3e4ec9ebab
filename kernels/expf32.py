"""A float32 exp in plain float32 arithmetic, so that loops calling it vectorize (16 lanes wide with
AVX-512: it asks for the widest vectors, vecmath.wide_vectors).

`expf_(p)` is vecmath_fma.exp_fma's method in float32: p = k ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in
two so k * the high part is exact), a degree-7 Taylor polynomial in r, and 2^k built in the exponent
bits as 2^(k//2) * 2^(k - k//2), so both factors stay normal numbers over the whole range. Within
about 1.5 ulp of exp for normal results; results below the smallest normal come out as subnormals
(gradual underflow, like libm) down to 0 below about -104; above about 88.72 the product overflows
to inf; NaN stays NaN.

`exp_data(v)`: exp in v's own dtype for kernels written once for both float dtypes: expf_ for
float32, libm's exp (np.exp, full precision) for float64.

Callers must not be compiled with fastmath "reassoc": rounding to an integer adds and subtracts
1.5 * 2^23, which reassociation would fold away.
"""
import numpy as np
from numba import njit

from .vecmath import bits_f32, f32_bits, wide_vectors

_F = np.float32


_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)  # 8 significant bits: k * _LN2_HI is exact for |k| < 2^15
_LN2_LO = _F(-2.12194440e-4)
_SHIFT = _F(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits
_SHIFT_BITS = np.int32(0x4B400000)  # the bits of _SHIFT
_LO, _HI = _F(-104.0), _F(89.0)  # exp(-104) is below the smallest subnormal, exp(89) above the largest float


@njit(cache=True, error_model="numpy", inline="always")
def expf_(p):
    wide_vectors()
    p = _LO if p < _LO else p  # clamp (a NaN passes both tests unchanged)
    p = _HI if p > _HI else p
    t = p * _LOG2E + _SHIFT
    k = t - _SHIFT  # round(p / ln 2), as a float
    r = (p - k * _LN2_HI) - k * _LN2_LO
    q = _F(1.0 / 5040.0)
    q = q * r + _F(1.0 / 720.0)
    q = q * r + _F(1.0 / 120.0)
    q = q * r + _F(1.0 / 24.0)
    q = q * r + _F(1.0 / 6.0)
    q = q * r + _F(0.5)
    q = q * r + _F(1.0)
    q = q * r + _F(1.0)
    ki = f32_bits(t) - _SHIFT_BITS  # k as an integer
    k1 = ki >> np.int32(1)
    s1 = bits_f32((k1 + np.int32(127)) << np.int32(23))  # 2^k1
    s2 = bits_f32((ki - k1 + np.int32(127)) << np.int32(23))  # 2^(k - k1)
    return (q * s1) * s2


@njit(cache=True, error_model="numpy", inline="always")
def exp_data(v):
    if isinstance(v, np.float32):  # resolved at compile time: the other branch is pruned
        return expf_(v)
    return np.exp(v)
