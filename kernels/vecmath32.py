"""exp in float32 arithmetic, written so that loops calling it vectorize 16 lanes wide (AVX-512).

vecmath.exp_ works in float64 (8 lanes); where a float32 result needs only a few ulp (softmax), this
is about twice as fast. Range reduction p = k ln 2 + r (|r| <= ln 2 / 2) with ln 2 split in a short
high part and a low part, a degree-7 Taylor polynomial (its truncation error is below 6e-9), all
in fused multiply-adds (`fmaf`), and 2^k built in the exponent bits. Within 2 ulp of exp over
[-87.3, 88.37]; inputs below -87.3 give 0 (no subnormal results), above 88.37 exp(88.37) = 2.4e38
(not inf); NaN stays NaN.

Callers must not be compiled with fastmath "reassoc": the rounding to an integer adds and subtracts
1.5 * 2^23, which reassociation would fold away. Numba compiles an inlined helper, and a called one
whose decorator leaves fastmath unset, with the caller's flags: call this from a kernel whose
decorator says fastmath=False.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as an int32 (a bit cast, no conversion)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))
    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, n):
    """An int32's bits as a float32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


@intrinsic
def fmaf(typingctx, a, b, c):
    """a * b + c of float32s rounded once (llvm.fma.f32): one instruction, the same bits under any
    caller flags (LLVM contracts a * b + c itself only under fastmath "contract")."""
    def codegen(context, builder, sig, args):
        ty = context.get_value_type(types.float32)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 8 significant bits
_LN2_LO = np.float32(-2.12194440e-4)
_SHIFT = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits
_SHIFT_BITS = np.int32(0x4B400000)  # the bits of _SHIFT
_LO, _HI = np.float32(-87.3), np.float32(88.37)  # 2^k stays a normal float32
_C7 = np.float32(1.0 / 5040.0)
_C6 = np.float32(1.0 / 720.0)
_C5 = np.float32(1.0 / 120.0)
_C4 = np.float32(1.0 / 24.0)
_C3 = np.float32(1.0 / 6.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_BIAS = np.int32(127)


@njit(cache=True, error_model="numpy", inline="always")
def expf_(p):
    """exp of a float32, as a float32."""
    p0 = p
    p = _LO if p < _LO else p  # clamp (a NaN passes both tests unchanged)
    p = _HI if p > _HI else p
    t = fmaf(p, _LOG2E, _SHIFT)
    k = t - _SHIFT  # round(p / ln 2), as a float
    r = fmaf(k, -_LN2_LO, fmaf(k, -_LN2_HI, p))
    q = fmaf(_C7, r, _C6)
    q = fmaf(q, r, _C5)
    q = fmaf(q, r, _C4)
    q = fmaf(q, r, _C3)
    q = fmaf(q, r, _HALF)
    q = fmaf(q, r, _ONE)
    q = fmaf(q, r, _ONE)
    q *= _bits_f32(((_f32_bits(t) - _SHIFT_BITS) + _BIAS) << np.int32(23))  # 2^k
    return _ZERO if p0 < _LO else q
