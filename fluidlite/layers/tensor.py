"""Shape layers: reshape, concat, split, transpose, assign."""
from __future__ import annotations

import numpy as np

from ..initializer import assign_value_attrs
from .helper import LayerHelper, check_variable

__all__ = ["reshape", "concat", "split", "transpose", "assign", "flatten"]


def reshape(x, shape, act=None, name=None):
    """x with a new shape: one -1 is inferred, 0 copies x's dim at that index (the batch -1 flows through)."""
    helper = LayerHelper("reshape", name)
    out = helper.append_op("reshape", {"X": check_variable(x, "x", "reshape")}, {"shape": list(shape)})
    return helper.append_activation(out, act)


def concat(input, axis=0, name=None):
    """The Variables of `input` joined along `axis`."""
    if not isinstance(input, (list, tuple)) or not input:
        raise TypeError("concat: input must be a non-empty list of Variables")
    for k, v in enumerate(input):
        check_variable(v, f"input[{k}]", "concat")
    return LayerHelper("concat", name).append_op("concat", {"X": list(input)}, {"axis": axis})


def split(input, num_or_sections, dim=-1, name=None):
    """A list of Variables: `input` cut along `dim` into num_or_sections equal parts (an int) or parts of
    the given sizes (a list; one may be -1)."""
    helper = LayerHelper("split", name)
    check_variable(input, "input", "split")
    if isinstance(num_or_sections, int) and not isinstance(num_or_sections, bool):
        attrs, count = {"num": num_or_sections, "axis": dim}, num_or_sections
    elif isinstance(num_or_sections, (list, tuple)):
        attrs, count = {"sections": list(num_or_sections), "axis": dim}, len(num_or_sections)
    else:
        raise TypeError(f"split: num_or_sections must be an int or a list of ints, got {num_or_sections!r}")
    if count < 1:
        raise ValueError(f"split: num_or_sections={num_or_sections!r} gives no parts")
    names = [helper.tmp_name() for _ in range(count)]
    helper.block.append_op("split", {"X": input}, {"Out": names}, attrs)
    return [helper.block.var(n) for n in names]


def transpose(x, perm, name=None):
    """x with its dims permuted: out.shape[i] = x.shape[perm[i]]."""
    return LayerHelper("transpose", name).append_op("transpose", {"X": check_variable(x, "x", "transpose")},
                                                    {"axis": list(perm)})


def assign(input, output=None):
    """A copy of `input`, a Variable or a NumPy array (a constant op), written into `output` when given."""
    helper = LayerHelper("assign")
    if isinstance(input, (np.ndarray, list, tuple)):
        value = np.array(input)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"assign: a constant must hold numbers, got {value.dtype}")
        attrs = assign_value_attrs(value, value.dtype if output is None else output.dtype)
        if output is None:
            return helper.append_op("assign_value", {}, attrs)
        helper.block.append_op("assign_value", {}, {"Out": output}, attrs)
        return output
    check_variable(input, "input", "assign")
    if output is None:
        return helper.append_op("assign", {"X": input})
    helper.block.append_op("assign", {"X": input}, {"Out": output})
    return output


def flatten(x, axis=1, name=None):
    """x as a matrix [prod(x.shape[:axis]), prod(x.shape[axis:])]; the batch -1 stays unknown."""
    return LayerHelper("flatten", name).append_op("flatten", {"X": check_variable(x, "x", "flatten")}, {"axis": axis})
