"""Ops that create values: fill_constant, uniform_random, gaussian_random, truncated_gaussian_random,
gaussian_random_batch_size_like, assign_value, fill_zeros_like. The random ops draw from a stream kept in
the scope when they have a State input (fluidlite.random_state)."""
import numpy as np

from ..kernels import init as K
from ..random_state import STATE_DTYPE, STATE_SHAPE, advance
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

def random_state_infer(ctx, out):
    """Add StateOut (typed like State, which must be int64 [2]) to an inference result."""
    if ctx.has("State"):
        if ctx.shape("State") != STATE_SHAPE or ctx.dtype("State") != STATE_DTYPE:
            raise ctx.error(f"State must be {STATE_DTYPE}{list(STATE_SHAPE)}", "State")
        out["StateOut"] = (STATE_SHAPE, STATE_DTYPE)
    return out


def _random_infer(ctx):
    if -1 in ctx.attrs["shape"]:
        raise ctx.error(f"shape {list(ctx.attrs['shape'])} has a batch dimension (-1): use "
                        f"{ctx.opdef.type}_batch_size_like with a reference input" if ctx.opdef.type ==
                        "gaussian_random" else f"shape {list(ctx.attrs['shape'])} must be fully known")
    return random_state_infer(ctx, _filled_shape(ctx))


def lower_random(kernel, shape_of, *attr_names):
    """A random op's callable: with a State input it draws from the stream (fluidlite.random_state) and
    returns (Out, StateOut); without one it draws from the fixed `seed` (an initializer)."""
    def lower(ctx):
        shape, dtype = shape_of(ctx), np.dtype(ctx.attrs["dtype"])
        args = tuple(ctx.attrs[a] for a in attr_names)
        seed, stream = ctx.attrs["seed"], ctx.attrs["stream"]
        if -1 in shape:
            raise ValueError(f"op '{ctx.opdef.type}': shape {list(shape)} has an unknown dimension at run time")
        if not ctx.has("State"):
            return lambda *ref: kernel(np.empty(shape, dtype), *args, seed)

        def run(*ins):  # (reference input,) state
            call, state = advance(ins[-1], seed, stream)
            return kernel(np.empty(shape, dtype), *args, call), state
        return run

    return lower


def _fixed_shape(ctx):
    return tuple(ctx.attrs["shape"])


_RANDOM = dict(inputs=("State",), outputs=("Out", "StateOut"), optional=("State", "StateOut"), random=True,
               infer=_random_infer, grad=NO_GRAD)
_STREAM = {"seed": Attr(int, 0), "stream": Attr(int, 0)}

defop("uniform_random", attrs={"shape": _SHAPE, "dtype": _DTYPE, "min": Attr(float, -1.0), "max": Attr(float, 1.0),
                               **_STREAM},
      lower=lower_random(K.uniform, _fixed_shape, "min", "max"), **_RANDOM,
      doc="Out ~ U[min, max). With State: drawn from the scope's stream (new values every run); "
          "without (an initializer): from `seed` alone.")

defop("gaussian_random", attrs={"shape": _SHAPE, "dtype": _DTYPE, "mean": Attr(float, 0.0), "std": Attr(float, 1.0),
                                **_STREAM},
      lower=lower_random(K.gaussian, _fixed_shape, "mean", "std"), **_RANDOM,
      doc="Out ~ N(mean, std^2). With State: drawn from the scope's stream (new values every run); "
          "without (an initializer): from `seed` alone.")

defop("fill_zeros_like", inputs=("X",), infer=same_as("X"), kernel=K.zeros_like, grad=NO_GRAD,
      doc="Out = zeros shaped like X (stands for a gradient that does not flow).")

defop("fill_any_like", inputs=("X",), attrs={"value": _VALUE}, infer=same_as("X"),
      kernel=K.full_like, kernel_attrs=("value",), grad=NO_GRAD,
      doc="Out = a tensor shaped like X filled with `value` (seeds a target's gradient).")

defop("truncated_gaussian_random",
      attrs={"shape": _SHAPE, "dtype": _DTYPE, "mean": Attr(float, 0.0), "std": Attr(float, 1.0), **_STREAM},
      lower=lower_random(K.truncated_gaussian, _fixed_shape, "mean", "std"), **_RANDOM,
      doc="Out ~ N(mean, std^2) truncated to mean +- 2 std (redrawn); State as for gaussian_random.")


def _bsl_shape(ctx):
    shape, i, o = list(ctx.attrs["shape"]), ctx.attrs["input_dim_idx"], ctx.attrs["output_dim_idx"]
    ref = ctx.shape("Input")
    if not 0 <= i < len(ref) or not 0 <= o < len(shape):
        raise ctx.error(f"input_dim_idx {i} / output_dim_idx {o} out of range for Input rank {len(ref)} "
                        f"and shape {shape}", "Input")
    shape[o] = ref[i]
    if any(d < 0 for k, d in enumerate(shape) if k != o):
        raise ctx.error(f"shape {list(ctx.attrs['shape'])}: only output_dim_idx may be unknown", "Input")
    return tuple(shape)


defop("gaussian_random_batch_size_like", inputs=("Input", "State"), outputs=("Out", "StateOut"),
      optional=("State", "StateOut"), random=True, grad=NO_GRAD,
      attrs={"shape": Attr("shape", REQUIRED), "dtype": _DTYPE, "input_dim_idx": Attr(int, 0),
             "output_dim_idx": Attr(int, 0), "mean": Attr(float, 0.0), "std": Attr(float, 1.0), **_STREAM},
      infer=lambda ctx: random_state_infer(ctx, {"Out": (_bsl_shape(ctx), np.dtype(ctx.attrs["dtype"]))}),
      lower=lower_random(K.gaussian, _bsl_shape, "mean", "std"),
      doc="Out ~ N(mean, std^2) of `shape` with shape[output_dim_idx] = Input.shape[input_dim_idx] (Paddle's "
          "gaussian_random_batch_size_like: a batch dimension taken from a reference input, checked at build time).")


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
