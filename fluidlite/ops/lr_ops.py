"""Learning-rate schedules as ops of the step counter, and `increment` (which advances it in place)."""
import numpy as np

from ..kernels import schedule as K
from ..registry import NO_GRAD, REQUIRED, Attr, defop
from ..shapes import numel
from .common import positive, same_as


def _check_step(ctx):
    if ctx.dtype("Step").kind not in "iu" or numel(ctx.shape("Step")) != 1:
        raise ctx.error(f"Step must be an integer counter of one element, got {ctx.dtype('Step')}"
                        f"{list(ctx.shape('Step'))}", "Step")


def _rate_infer(ctx):
    _check_step(ctx)
    if ctx.has("LearningRate"):
        if ctx.dtype("LearningRate").kind != "f" or numel(ctx.shape("LearningRate")) != 1:
            raise ctx.error("LearningRate must be a float of one element", "LearningRate")
    return {"Out": ((1,), np.dtype(ctx.attrs["dtype"]))}


def _lower(kernel, *attr_names, reads_rate=False):
    def lower(ctx):
        dtype = np.dtype(ctx.attrs["dtype"])
        args = tuple(ctx.attrs[a] for a in attr_names)
        if reads_rate:
            return lambda step, lr: kernel(step, lr, *args, np.empty(1, dtype))
        return lambda step: kernel(step, *args, np.empty(1, dtype))

    return lower


def _lower_piecewise(ctx):
    boundaries = np.array(ctx.attrs["boundaries"], np.int64)
    values = np.array(ctx.attrs["values"], np.float64)
    dtype = np.dtype(ctx.attrs["dtype"])
    return lambda step: K.piecewise(step, boundaries, values, np.empty(1, dtype))


def _increasing(v):
    return None if all(a < b for a, b in zip(v, v[1:])) else "must be strictly increasing"


def _piecewise_infer(ctx):
    if len(ctx.attrs["values"]) != len(ctx.attrs["boundaries"]) + 1:
        raise ctx.error(f"needs len(values) == len(boundaries) + 1, got {len(ctx.attrs['values'])} values for "
                        f"{len(ctx.attrs['boundaries'])} boundaries", "Step")
    return _rate_infer(ctx)


def _non_negative(v):
    return None if 0 <= v < float("inf") else "must be finite and >= 0"


_DTYPE = {"dtype": Attr("dtype", "float32")}
_RATE = Attr(float, REQUIRED, _non_negative)

defop("increment", inputs=("X",), attrs={"step": Attr(float, 1.0)}, infer=same_as("X"), kernel=K.increment,
      kernel_attrs=("step",), grad=NO_GRAD, doc="Out = X + step (in place when Out names X: the step counter).")
defop("piecewise_decay", inputs=("Step",), attrs={"boundaries": Attr("ints", REQUIRED, _increasing),
                                                  "values": Attr("floats", REQUIRED), **_DTYPE},
      infer=_piecewise_infer, lower=_lower_piecewise, grad=NO_GRAD,
      doc="Out = values[i] for the first i with Step < boundaries[i], else values[-1].")
defop("exponential_decay", inputs=("Step",),
      attrs={"learning_rate": _RATE, "decay_steps": Attr(int, REQUIRED, positive),
             "decay_rate": Attr(float, REQUIRED, positive), "staircase": Attr(bool, False), **_DTYPE},
      infer=_rate_infer, lower=_lower(K.exponential, "learning_rate", "decay_steps", "decay_rate", "staircase"),
      grad=NO_GRAD, doc="Out = learning_rate * decay_rate ^ (Step / decay_steps) (floored exponent with staircase).")
defop("cosine_decay", inputs=("Step",),
      attrs={"learning_rate": _RATE, "step_each_epoch": Attr(int, REQUIRED, positive),
             "epochs": Attr(int, REQUIRED, positive), **_DTYPE},
      infer=_rate_infer, lower=_lower(K.cosine, "learning_rate", "step_each_epoch", "epochs"), grad=NO_GRAD,
      doc="Out = learning_rate * (cos(floor(Step / step_each_epoch) * pi / epochs) + 1) / 2.")
defop("noam_decay", inputs=("Step",),
      attrs={"learning_rate": Attr(float, 1.0, _non_negative), "d_model": Attr(int, REQUIRED, positive),
             "warmup_steps": Attr(int, REQUIRED, positive), **_DTYPE},
      infer=_rate_infer, lower=_lower(K.noam, "learning_rate", "d_model", "warmup_steps"), grad=NO_GRAD,
      doc="Out = learning_rate * d_model^-0.5 * min(n^-0.5, n * warmup_steps^-1.5), n = Step + 1.")
defop("linear_lr_warmup", inputs=("Step", "LearningRate"),
      attrs={"warmup_steps": Attr(int, REQUIRED, positive), "start_lr": _RATE, "end_lr": _RATE, **_DTYPE},
      infer=_rate_infer, lower=_lower(K.linear_warmup, "warmup_steps", "start_lr", "end_lr", reads_rate=True),
      grad=NO_GRAD, doc="Out = start_lr + (end_lr - start_lr) * Step / warmup_steps while Step < warmup_steps, "
                        "then LearningRate.")
