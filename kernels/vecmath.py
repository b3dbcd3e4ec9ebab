"""Bit casts for the vectorizing math of expf32.py and vecmath_fma.py: 2^k is built in a float's
exponent bits, and a rounded integer read back from them, with no conversion."""
from numba import types
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
