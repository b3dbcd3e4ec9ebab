"""Synthetic sequence tasks generated on the spot (no downloads), time-major and seeded.

- `adding_problem`: the long-range adding task of Hochreiter & Schmidhuber (1997), as used by
  Pascanu, Mikolov & Bengio (2013) to show exploding and vanishing gradients.
- `copy_memory`: remember a few symbols over a long blank delay, then recall them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["adding_problem", "copy_memory", "as_rng"]


def as_rng(seed=None) -> np.random.Generator:
    """A Generator from an int seed, or the Generator itself (so batches can share one stream)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def adding_problem(seq_len: int, batch_size: int, seed=None, dtype="float32"):
    """(x, y): x [seq_len, batch, 2] holds (value ~ U[0, 1], marker) pairs, with exactly two markers
    per sequence, one in each half; y [batch, 1] is the sum of the two marked values.

    Predicting the constant 1 gives a mean squared error of about 1/6 (the baseline to beat)."""
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"adding_problem: need seq_len >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    rng = as_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(seq_len, batch_size))
    half = seq_len // 2
    first = rng.integers(0, half, size=batch_size)
    second = rng.integers(half, seq_len, size=batch_size)
    markers = np.zeros((seq_len, batch_size))
    cols = np.arange(batch_size)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (x[first, cols, 0] + x[second, cols, 0]).reshape(batch_size, 1)  # sum in the output dtype
    return x, y.astype(dtype)


def copy_memory(delay: int, batch_size: int, n_symbols: int = 8, copy_len: int = 10, seed=None, dtype="float32"):
    """(x, y) for the copy-memory task; the sequence length is delay + 2 * copy_len.

    The first copy_len steps show symbols 1..n_symbols, then blanks (0) follow, with the
    recall marker (n_symbols + 1) at step delay + copy_len - 1; the net must output the shown
    symbols during the last copy_len steps and blank everywhere else.
    x [seq_len, batch, n_symbols + 2] is one-hot; y [seq_len, batch] holds int64 labels."""
    if delay < 1 or batch_size < 1 or n_symbols < 1 or copy_len < 1:
        raise ValueError(f"copy_memory: delay, batch_size, n_symbols and copy_len must be >= 1, "
                         f"got {delay}, {batch_size}, {n_symbols}, {copy_len}")
    rng = as_rng(seed)
    seq_len = delay + 2 * copy_len
    symbols = rng.integers(1, n_symbols + 1, size=(copy_len, batch_size))
    labels = np.zeros((seq_len, batch_size), np.int64)
    labels[:copy_len] = symbols
    labels[delay + copy_len - 1] = n_symbols + 1
    x = np.eye(n_symbols + 2, dtype=dtype)[labels]
    y = np.zeros((seq_len, batch_size), np.int64)
    y[-copy_len:] = symbols
    return x, y
