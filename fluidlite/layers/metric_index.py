"""Index layers and the accuracy metric (Paddle Fluid 1.x names): accuracy, argmax, argmin, topk, one_hot,
gather, where."""
from __future__ import annotations

from .helper import LayerHelper, check_variable

__all__ = ["accuracy", "argmax", "argmin", "topk", "one_hot", "gather", "where"]


def _int(value, name, layer, low=None):
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"{layer}: {name} must be an int{f' >= {low}' if low is not None else ''}, got {value!r}")
    return value


def topk(input, k, name=None):
    """(values, indices): the k largest entries along the last axis, descending (Paddle's topk)."""
    helper = LayerHelper("topk", name)
    return helper.append_op("top_k", {"X": check_variable(input, "input", "topk")},
                            {"k": _int(k, "k", "topk", 1)}, outputs=("Out", "Indices"))


def accuracy(input, label, k=1, correct=None, total=None):
    """float32 [1]: the fraction of rows of `input` (scores [N, C]) whose `label` ([N, 1] int64) is among
    the row's k highest scores (Paddle's accuracy; ties go to the lower class index)."""
    check_variable(input, "input", "accuracy")
    check_variable(label, "label", "accuracy")
    if len(input.shape) != 2 or len(label.shape) != 2 or label.shape[1] != 1 or label.dtype.kind not in "iu":
        raise ValueError(f"op 'accuracy': needs input [N, C] and an integer label [N, 1], got {input.name!r} "
                         f"{list(input.shape)} and {label.name!r} {list(label.shape)} {label.dtype}")
    _, indices = topk(input, k)
    return LayerHelper("accuracy").append_op("accuracy", {"Indices": indices, "Label": label})


def argmax(x, axis=0):
    """int64: the index of the first largest entry along `axis` (the axis is removed)."""
    return LayerHelper("arg_max").append_op("arg_max", {"X": check_variable(x, "x", "argmax")},
                                            {"axis": _int(axis, "axis", "argmax")})


def argmin(x, axis=0):
    """int64: the index of the first smallest entry along `axis` (the axis is removed)."""
    return LayerHelper("arg_min").append_op("arg_min", {"X": check_variable(x, "x", "argmin")},
                                            {"axis": _int(axis, "axis", "argmin")})


def one_hot(input, depth):
    """float32 [..., depth] from int ids [..., 1]; an id outside [0, depth) raises when run."""
    return LayerHelper("one_hot").append_op("one_hot", {"X": check_variable(input, "input", "one_hot")},
                                            {"depth": _int(depth, "depth", "one_hot", 1)})


def gather(input, index, overwrite=True):
    """Rows input[index[i]] of the first dimension; `index` is int [M] or [M, 1]."""
    return LayerHelper("gather").append_op("gather", {"X": check_variable(input, "input", "gather"),
                                                      "Index": check_variable(index, "index", "gather")})


def where(condition, x, y, name=None):
    """x where condition (bool) else y; all three the same shape."""
    return LayerHelper("where", name).append_op("where", {"Condition": check_variable(condition, "condition", "where"),
                                                          "X": check_variable(x, "x", "where"),
                                                          "Y": check_variable(y, "y", "where")})
