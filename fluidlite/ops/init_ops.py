"""Ops that create values: fill_constant, uniform_random, gaussian_random, truncated_gaussian_random,
assign_value, fill_zeros_like."""
import numpy as np

from ..kernels import init as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop
from .common import same_as


def _check_shape(shape):
    return None if all(d >= 0 or d == -1 for d in shape) else "dimensions must be >= 0 (or -1 for the batch)"


def _filled_shape(ctx):
    return {"Out": (ctx.attrs["shape"], np.dtype(ctx.attrs["dtype"]))}


def _lower_fill(kernel, *attr_names):
    def lower(ctx):
        shape, dtype = ctx.attrs["shape"], np.dtype(ctx.attrs["dtype"])
        if -1 in shape:
            raise ValueError(f"op '{ctx.opdef.type}': shape {list(shape)} has an unknown dimension at run time")
        args = tuple(ctx.attrs[a] for a in attr_names)
        return lambda: kernel(np.empty(shape, dtype), *args)

    return lower


_SHAPE = Attr("shape", REQUIRED, _check_shape)
_VALUE = Attr(float, 0.0, lambda v: None if v == v else "is NaN")  # +-inf allowed (masks)
_DTYPE = Attr("dtype", "float32")

defop("fill_constant", inputs=(), attrs={"shape": _SHAPE, "dtype": _DTYPE, "value": _VALUE},
      infer=_filled_shape, lower=_lower_fill(K.fill, "value"), grad=NO_GRAD,
      doc="Out = a tensor of `shape` filled with `value`.")

defop("uniform_random", inputs=(),
      attrs={"shape": _SHAPE, "dtype": _DTYPE, "min": Attr(float, -1.0), "max": Attr(float, 1.0), "seed": Attr(int, 0)},
      infer=_filled_shape, lower=_lower_fill(K.uniform, "min", "max", "seed"), grad=NO_GRAD,
      doc="Out ~ U[min, max), reproducible for a given seed.")

defop("gaussian_random", inputs=(),
      attrs={"shape": _SHAPE, "dtype": _DTYPE, "mean": Attr(float, 0.0), "std": Attr(float, 1.0), "seed": Attr(int, 0)},
      infer=_filled_shape, lower=_lower_fill(K.gaussian, "mean", "std", "seed"), grad=NO_GRAD,
      doc="Out ~ N(mean, std^2), reproducible for a given seed.")

defop("fill_zeros_like", inputs=("X",), infer=same_as("X"), kernel=K.zeros_like, grad=NO_GRAD,
      doc="Out = zeros shaped like X (stands for a gradient that does not flow).")

defop("fill_any_like", inputs=("X",), attrs={"value": _VALUE}, infer=same_as("X"),
      kernel=K.full_like, kernel_attrs=("value",), grad=NO_GRAD,
      doc="Out = a tensor shaped like X filled with `value` (seeds a target's gradient).")

defop("truncated_gaussian_random", inputs=(),
      attrs={"shape": _SHAPE, "dtype": _DTYPE, "mean": Attr(float, 0.0), "std": Attr(float, 1.0), "seed": Attr(int, 0)},
      infer=_filled_shape, lower=_lower_fill(K.truncated_gaussian, "mean", "std", "seed"), grad=NO_GRAD,
      doc="Out ~ N(mean, std^2) truncated to mean +- 2 std (redrawn), reproducible for a given seed.")


def _assign_value_infer(ctx):
    shape, dtype = ctx.attrs["shape"], np.dtype(ctx.attrs["dtype"])
    floats, ints = ctx.attrs["fp_values"], ctx.attrs["int_values"]
    if -1 in shape:
        raise ctx.error(f"shape {list(shape)} must be fully known")
    values = ints if dtype.kind in "iub" else floats
    if (floats and dtype.kind in "iub") or (ints and dtype.kind == "f"):
        raise ctx.error(f"{'fp_values' if floats else 'int_values'} do not fit dtype {dtype}")
    if len(values) != int(np.prod(shape)):
        raise ctx.error(f"holds {len(values)} values for shape {list(shape)}")
    return _filled_shape(ctx)


def _lower_assign_value(ctx):
    shape, dtype = ctx.attrs["shape"], np.dtype(ctx.attrs["dtype"])
    values = (np.array(ctx.attrs["int_values"], np.int64) if dtype.kind in "iub"
              else np.array(ctx.attrs["fp_values"], np.float64))
    return lambda: K.assign_values(np.empty(shape, dtype), values)


defop("assign_value", inputs=(), attrs={"shape": _SHAPE, "dtype": _DTYPE, "fp_values": Attr("floats", ()),
                                         "int_values": Attr("ints", ())},
      infer=_assign_value_infer, lower=_lower_assign_value, grad=NO_GRAD,
      doc="Out = the constant given by its values (row-major) and shape: `layers.assign(array)`, "
          "`NumpyArrayInitializer`.")
