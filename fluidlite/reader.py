"""Readers in Paddle's style: a *reader* is a function with no arguments that returns an iterator of
samples (each a tuple of fields); decorators wrap readers into new ones.

    train = fl.reader.batch(fl.reader.shuffle(fl.reader.from_arrays(images, labels), seed=0), 64)
    for epoch in range(3):
        for samples in train():                        # a list of up to 64 (image, label) tuples
            exe.run(main, feed=feeder.feed(samples))   # fl.DataFeeder stacks them

`batches(...)` does the same in one call and yields stacked arrays, one per field, ready for `feed=`.
Each call of a shuffled reader draws a new order from one seeded stream: epochs differ, and the
sequence of epochs repeats with the seed.
"""
from __future__ import annotations

import numpy as np

__all__ = ["from_arrays", "shuffle", "batch", "batches"]


def _check_arrays(arrays):
    if not arrays:
        raise ValueError("reader: give at least one array")
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(a.ndim == 0 or len(a) != n for a in arrays):
        raise ValueError(f"reader: the arrays must have one first dimension, got shapes {[a.shape for a in arrays]}")
    return arrays, n


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"reader: {name} must be a positive int, got {value!r}")


def from_arrays(*arrays):
    """A reader of the samples (a[i], b[i], ...) of equally long arrays, in order."""
    arrays, n = _check_arrays(arrays)

    def reader():
        for i in range(n):
            yield tuple(a[i] for a in arrays)

    return reader


def shuffle(reader, buf_size=None, seed=None):
    """A reader of `reader`'s samples in random order. `buf_size=None` shuffles everything; a size
    shuffles within consecutive buffers of that many samples (Paddle's `reader.shuffle`)."""
    if buf_size is not None:
        _positive_int(buf_size, "buf_size")
    rng = np.random.default_rng(seed)

    def shuffled():
        buf = []
        for sample in reader():
            buf.append(sample)
            if buf_size is not None and len(buf) == buf_size:
                yield from (buf[k] for k in rng.permutation(len(buf)))
                buf = []
        yield from (buf[k] for k in rng.permutation(len(buf)))

    return shuffled


def batch(reader, batch_size, drop_last=False):
    """A reader of lists of `batch_size` samples; the last, shorter list is dropped when `drop_last`."""
    _positive_int(batch_size, "batch_size")

    def batched():
        group = []
        for sample in reader():
            group.append(sample)
            if len(group) == batch_size:
                yield group
                group = []
        if group and not drop_last:
            yield group

    return batched


def batches(*arrays, batch_size, shuffle=False, seed=None, drop_last=False):
    """A reader of tuples of array slices (one per input array, `batch_size` rows each), in a new
    random order per call when `shuffle`. Slices are contiguous copies, ready to feed."""
    arrays, n = _check_arrays(arrays)
    _positive_int(batch_size, "batch_size")
    rng = np.random.default_rng(seed)

    def reader():
        order = rng.permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield tuple(np.ascontiguousarray(a[idx]) for a in arrays)

    return reader
