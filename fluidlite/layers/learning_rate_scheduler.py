"""Learning-rate schedules (Paddle Fluid 1.x names): each returns a float32 [1] Variable to pass as an
optimizer's `learning_rate`. They read one step counter per program, a persistable int64 [1]
variable `@LR_DECAY_COUNTER@` that starts at 0 and advances once per run of the main program; it lives
in the scope, so a checkpoint resumes the schedule where it stopped."""
from __future__ import annotations

import math

import numpy as np

from ..framework import Variable, default_main_program, default_startup_program
from .helper import LayerHelper

__all__ = ["piecewise_decay", "exponential_decay", "cosine_decay", "noam_decay", "linear_lr_warmup"]

COUNTER = "@LR_DECAY_COUNTER@"
STEP = "@LR_DECAY_STEP@"  # this run's value of the counter, read by every schedule of the program


def _step() -> Variable:
    """The counter's value for this run; the first schedule of a program appends the copy and the increment."""
    block = default_main_program().global_block()
    if block.has_var(STEP):
        return block.var(STEP)
    counter = block.create_var(name=COUNTER, shape=(1,), dtype="int64", persistable=True)
    sblock = default_startup_program().global_block()
    if not sblock.has_var(COUNTER):
        out = sblock.create_var(name=COUNTER, shape=(1,), dtype="int64", persistable=True)
        sblock.append_op("fill_constant", outputs={"Out": out}, attrs={"shape": [1], "dtype": "int64", "value": 0.0})
    block.append_op("assign", {"X": counter}, {"Out": STEP})
    block.append_op("increment", {"X": counter}, {"Out": counter}, {"step": 1.0})
    return block.var(STEP)


def _number(layer, name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{layer}: {name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


def _schedule(op_type, attrs, extra_inputs=None):
    helper = LayerHelper(op_type)
    return helper.append_op(op_type, {"Step": _step(), **(extra_inputs or {})}, attrs)


def piecewise_decay(boundaries, values):
    """values[i] while step < boundaries[i]; values[-1] after the last boundary (Paddle's piecewise_decay)."""
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"piecewise_decay: needs len(values) == len(boundaries) + 1, got {len(values)} values "
                         f"and {len(boundaries)} boundaries")
    for v in values:
        _number("piecewise_decay", "every value", v)
    return _schedule("piecewise_decay", {"boundaries": list(boundaries), "values": list(values)})


def exponential_decay(learning_rate, decay_steps, decay_rate, staircase=False):
    """learning_rate * decay_rate ^ (step / decay_steps); with `staircase` the exponent is floored."""
    _number("exponential_decay", "learning_rate", learning_rate)
    _number("exponential_decay", "decay_steps", decay_steps, positive=True)
    _number("exponential_decay", "decay_rate", decay_rate, positive=True)
    return _schedule("exponential_decay", {"learning_rate": learning_rate, "decay_steps": int(decay_steps),
                                           "decay_rate": decay_rate, "staircase": bool(staircase)})


def cosine_decay(learning_rate, step_each_epoch, epochs):
    """learning_rate * (cos(epoch * pi / epochs) + 1) / 2, epoch = floor(step / step_each_epoch)."""
    _number("cosine_decay", "learning_rate", learning_rate)
    _number("cosine_decay", "step_each_epoch", step_each_epoch, positive=True)
    _number("cosine_decay", "epochs", epochs, positive=True)
    return _schedule("cosine_decay", {"learning_rate": learning_rate, "step_each_epoch": int(step_each_epoch),
                                      "epochs": int(epochs)})


def noam_decay(d_model, warmup_steps, learning_rate=1.0):
    """The Transformer's schedule: learning_rate * d_model^-0.5 * min(n^-0.5, n * warmup_steps^-1.5),
    evaluated at n = step + 1 as Paddle 1.x does (so the first rate is not 0)."""
    _number("noam_decay", "d_model", d_model, positive=True)
    _number("noam_decay", "warmup_steps", warmup_steps, positive=True)
    _number("noam_decay", "learning_rate", learning_rate)
    return _schedule("noam_decay", {"d_model": int(d_model), "warmup_steps": int(warmup_steps),
                                    "learning_rate": learning_rate})


def linear_lr_warmup(learning_rate, warmup_steps, start_lr, end_lr):
    """Linear from start_lr to end_lr over warmup_steps steps, then `learning_rate` (a float or a schedule
    Variable, e.g. a decay to continue with)."""
    _number("linear_lr_warmup", "warmup_steps", warmup_steps, positive=True)
    _number("linear_lr_warmup", "start_lr", start_lr)
    _number("linear_lr_warmup", "end_lr", end_lr)
    if not isinstance(learning_rate, Variable):
        _number("linear_lr_warmup", "learning_rate", learning_rate)
        helper = LayerHelper("linear_lr_warmup")
        learning_rate = helper.append_op("fill_constant", {}, {"shape": [1], "dtype": "float32",
                                                               "value": float(learning_rate)})
    return _schedule("linear_lr_warmup", {"warmup_steps": int(warmup_steps), "start_lr": start_lr, "end_lr": end_lr},
                     {"LearningRate": learning_rate})
