"""batch_norm and layer_norm layers."""
from __future__ import annotations

from .. import unique_name
from ..initializer import Constant
from ..param_attr import ParamAttr
from ..shapes import numel
from .helper import LayerHelper, check_variable

__all__ = ["batch_norm", "layer_norm"]


def _where(input):
    return f"(X={input.name!r} shape={list(input.shape)} dtype={input.dtype})"


def batch_norm(input, act=None, is_test=False, momentum=0.9, epsilon=1e-5, param_attr=None, bias_attr=None,
               moving_mean_name=None, moving_variance_name=None, name=None):
    """Normalise each channel (axis 1) of a 2-D [N, C] or 4-D [N, C, H, W] input, then scale and shift.

    Training: the batch mean and biased variance, and the persistable moving statistics (parameters that
    are not trainable, named by `moving_mean_name` / `moving_variance_name`) become
    `momentum * m + (1 - momentum) * batch_stat` each run. `is_test=True`, or a program from
    `clone(for_test=True)`, normalises with the moving statistics and leaves them alone. The scale
    starts at 1, the shift at 0; the moving mean at 0, the moving variance at 1."""
    helper = LayerHelper("batch_norm", name)
    check_variable(input, "input", "batch_norm")
    if len(input.shape) not in (2, 4) or input.shape[1] < 1:
        raise ValueError(f"op 'batch_norm': X must be 2-D [N, C] or 4-D [N, C, H, W] with a known C {_where(input)}")
    c, dtype = (input.shape[1],), input.dtype
    scale = helper.create_parameter(param_attr, c, dtype, default_initializer=Constant(1.0))
    bias = helper.create_parameter(bias_attr, c, dtype, is_bias=True)
    stats = []
    for given, tag, value in ((moving_mean_name, "mean", 0.0), (moving_variance_name, "variance", 1.0)):
        attr = ParamAttr(name=given or unique_name.generate(f"{helper.name}.{tag}"), initializer=Constant(value),
                         trainable=False, need_clip=False)
        stats.append(helper.create_parameter(attr, c, dtype))
    mean, var = stats
    names = {slot: helper.tmp_name() for slot in ("Y", "SavedMean", "SavedVariance")}
    helper.block.append_op("batch_norm", {"X": input, "Scale": scale, "Bias": bias, "Mean": mean, "Variance": var},
                           {**names, "MeanOut": mean, "VarianceOut": var},
                           {"momentum": momentum, "epsilon": epsilon, "is_test": is_test})
    for slot in ("SavedMean", "SavedVariance"):
        helper.block.var(names[slot]).stop_gradient = True
    return helper.append_activation(helper.block.var(names["Y"]), act)


def layer_norm(input, scale=True, shift=True, begin_norm_axis=1, epsilon=1e-5, param_attr=None, bias_attr=None,
               act=None, name=None):
    """Normalise over the axes from `begin_norm_axis` on (biased variance), then scale and shift.

    The scale (init 1) and shift (init 0) have the normalised shape flattened to 1-D; `scale=False` /
    `shift=False` leave them out."""
    helper = LayerHelper("layer_norm", name)
    check_variable(input, "input", "layer_norm")
    rank = len(input.shape)
    if not isinstance(begin_norm_axis, int) or not 1 <= begin_norm_axis < rank:
        raise ValueError(f"op 'layer_norm': begin_norm_axis={begin_norm_axis!r} is out of range [1, {rank}) "
                         f"{_where(input)}")
    d = numel(input.shape[begin_norm_axis:])
    if d < 1:
        raise ValueError(f"op 'layer_norm': the dimensions from begin_norm_axis={begin_norm_axis} must be known "
                         f"{_where(input)}")
    inputs = {"X": input}
    if scale:
        inputs["Scale"] = helper.create_parameter(param_attr, (d,), input.dtype, default_initializer=Constant(1.0))
    if shift:
        inputs["Bias"] = helper.create_parameter(bias_attr, (d,), input.dtype, is_bias=True)
    y, mean, var = helper.append_op("layer_norm", inputs, {"begin_norm_axis": begin_norm_axis, "epsilon": epsilon},
                                    outputs=("Y", "Mean", "Variance"))
    mean.stop_gradient = var.stop_gradient = True
    return helper.append_activation(y, act)
