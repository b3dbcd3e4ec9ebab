"""data: declare an input to be fed."""
from __future__ import annotations

import numpy as np

from ..framework import default_main_program


def data(name, shape, dtype="float32", append_batch_size=True, stop_gradient=True):
    """An input variable; with `append_batch_size` a batch dimension -1 is prepended."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"data: name must be a non-empty str, got {name!r}")
    shape = [int(d) for d in shape]
    if append_batch_size and -1 not in shape:
        shape = [-1] + shape
    if any(d < -1 or d == 0 for d in shape):
        raise ValueError(f"data {name!r}: bad shape {shape}")
    block = default_main_program().global_block()
    if name in block.vars:
        raise ValueError(f"data: a variable named {name!r} already exists")
    return block.create_var(name=name, shape=shape, dtype=np.dtype(dtype), stop_gradient=stop_gradient, is_data=True)
