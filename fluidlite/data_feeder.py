"""`fl.data` (Paddle 1.6+: the batch dimension is written out) and `DataFeeder` (samples -> feed dict)."""
from __future__ import annotations

import numpy as np

from .framework import Variable, default_main_program

__all__ = ["DataFeeder", "data"]


def data(name, shape, dtype="float32", lod_level=0):
    """An input variable with exactly `shape`; `None` or -1 marks the batch (or any unknown) dimension.
    `lod_level` must be 0: fluidlite has no LoD tensors (pad and pass lengths, see layers.lstm)."""
    if lod_level:
        raise ValueError(f"data {name!r}: lod_level={lod_level}: fluidlite has no LoD tensors; pad the sequences "
                         f"and pass their lengths (layers.sequence_mask, layers.lstm(sequence_length=...))")
    if not isinstance(shape, (list, tuple)):
        raise TypeError(f"data {name!r}: shape must be a list, got {shape!r}")
    dims = [-1 if d is None else d for d in shape]
    from .layers.io import data as layer_data

    return layer_data(name, dims, dtype, append_batch_size=False)


class DataFeeder:
    """Turns a minibatch of samples (each a tuple with one field per variable of `feed_list`) into a feed
    dict of arrays shaped and typed like the variables. Floats narrow to the variable's float dtype;
    a float field for an integer variable is refused rather than truncated."""

    def __init__(self, feed_list, place=None, program=None):
        program = program or default_main_program()
        self.feed_vars = []
        for item in feed_list:
            if isinstance(item, str):
                var = program.global_block().vars.get(item)
                if var is None:
                    raise ValueError(f"DataFeeder: {item!r} is not a variable of the program")
                item = var
            if not isinstance(item, Variable):
                raise TypeError(f"DataFeeder: feed_list holds Variables or names, got {type(item).__name__}")
            self.feed_vars.append(item)
        self.place = place

    def feed(self, iterable) -> dict:
        samples = list(iterable)
        if not samples:
            raise ValueError("DataFeeder.feed: the minibatch is empty")
        n = len(self.feed_vars)
        for i, sample in enumerate(samples):
            if not isinstance(sample, (list, tuple)) or len(sample) != n:
                raise ValueError(f"DataFeeder.feed: sample {i} must be a tuple of {n} fields "
                                 f"({', '.join(v.name for v in self.feed_vars)}), got {sample!r:.80}")
        return {var.name: self._column(var, [s[k] for s in samples]) for k, var in enumerate(self.feed_vars)}

    @staticmethod
    def _column(var, fields):
        sample_shape = tuple(var.shape[1:])
        known = -1 not in sample_shape
        arrays = []
        for field in fields:
            a = np.asarray(field)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"DataFeeder: the fields for {var.name!r} are {a.dtype}, not numbers")
            if var.dtype.kind in "iu" and a.dtype.kind == "f":
                raise TypeError(f"DataFeeder: {var.name!r} is {var.dtype} but its fields are floats")
            if known:
                if a.size != int(np.prod(sample_shape)):
                    raise ValueError(f"DataFeeder: a sample of {var.name!r} holds {a.size} values, the variable's "
                                     f"{list(var.shape)} needs {int(np.prod(sample_shape))} per sample")
                a = a.reshape(sample_shape)
            arrays.append(a)
        try:
            column = np.stack(arrays)
        except ValueError:
            raise ValueError(f"DataFeeder: the fields for {var.name!r} differ in shape "
                             f"({sorted({a.shape for a in arrays})})") from None
        return np.ascontiguousarray(column, dtype=var.dtype)
