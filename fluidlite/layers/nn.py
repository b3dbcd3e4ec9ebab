"""matmul, embedding, dropout."""
from __future__ import annotations

import numpy as np

from ..framework import default_main_program
from .helper import LayerHelper, check_variable


def matmul(x, y, transpose_x=False, transpose_y=False, alpha=1.0, name=None):
    """alpha * op(x) @ op(y); leading (batch) dims broadcast like NumPy, 1-D operands as in np.matmul."""
    helper = LayerHelper("matmul", name)
    return helper.append_op("matmul", {"X": check_variable(x, "x", "matmul"), "Y": check_variable(y, "y", "matmul")},
                            {"transpose_X": transpose_x, "transpose_Y": transpose_y, "alpha": alpha})


def embedding(input, size, is_sparse=False, padding_idx=None, param_attr=None, dtype="float32"):
    """Rows of a [vocab, dim] table W (a new parameter of shape `size`) picked by int64 ids.

    `input` is [..., 1] or [...]; the output is [..., dim]. A negative `padding_idx` counts from
    the end of the vocabulary; that row reads as zeros and gets no gradient. The gradient is dense."""
    helper = LayerHelper("embedding")
    check_variable(input, "input", "embedding")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ValueError(f"embedding {helper.name}: size must be [vocab, dim] of positive ints, got {size!r}")
    if padding_idx is None:
        padding_idx = -1
    elif not -size[0] <= padding_idx < size[0]:
        raise ValueError(f"embedding {helper.name}: padding_idx={padding_idx} is outside a vocabulary of {size[0]}")
    elif padding_idx < 0:
        padding_idx += size[0]
    w = helper.create_parameter(param_attr, tuple(size), np.dtype(dtype))
    return helper.append_op("lookup_table", {"W": w, "Ids": input},
                            {"padding_idx": padding_idx, "is_sparse": is_sparse})


def dropout(x, dropout_prob, is_test=False, seed=None, dropout_implementation="downgrade_in_infer", name=None):
    """Zero each element with probability `dropout_prob` (see the dropout op for the two scalings).

    `seed=None` takes the program's `random_seed` (0: a fresh random mask each step)."""
    helper = LayerHelper("dropout", name)
    if seed is None:
        seed = default_main_program().random_seed
    out, mask = helper.append_op("dropout", {"X": check_variable(x, "x", "dropout")},
                                 {"dropout_prob": dropout_prob, "is_test": is_test, "seed": seed,
                                  "dropout_implementation": dropout_implementation}, outputs=("Out", "Mask"))
    mask.stop_gradient = True
    return out
