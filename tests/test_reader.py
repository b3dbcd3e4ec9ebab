"""fluidlite.reader: Paddle-style readers, shuffle with a seed, batch with drop_last, and a training loop."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers, reader

X = np.arange(20, dtype=np.float32).reshape(10, 2)
Y = np.arange(10, dtype=np.int64).reshape(10, 1)


def test_from_arrays_yields_samples_in_order():
    samples = list(reader.from_arrays(X, Y)())
    assert len(samples) == 10 and all(len(s) == 2 for s in samples)
    np.testing.assert_array_equal(samples[3][0], X[3])
    assert samples[3][1][0] == 3


@pytest.mark.parametrize("drop_last,sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batch_sizes_and_drop_last(drop_last, sizes):
    groups = list(reader.batch(reader.from_arrays(X, Y), 4, drop_last=drop_last)())
    assert [len(g) for g in groups] == sizes
    arrays = list(reader.batches(X, Y, batch_size=4, drop_last=drop_last)())
    assert [len(a) for a, _ in arrays] == sizes
    np.testing.assert_array_equal(np.concatenate([a for a, _ in arrays]), X[:sum(sizes)])


@pytest.mark.parametrize("buf_size", [None, 3])
def test_shuffle_is_a_permutation_seeded_and_new_each_epoch(buf_size):
    def epochs(seed):
        r = reader.shuffle(reader.from_arrays(Y), buf_size=buf_size, seed=seed)
        return [[int(s[0][0]) for s in r()] for _ in range(2)]

    a, b = epochs(1), epochs(1)
    assert a == b  # the seed fixes the sequence of epochs
    assert sorted(a[0]) == list(range(10)) and a[0] != a[1]
    assert epochs(2) != a
    if buf_size:  # shuffling stays within consecutive buffers
        assert sorted(a[0][:3]) == [0, 1, 2]


def test_batches_shuffle_keeps_fields_aligned_and_contiguous():
    r = reader.batches(X, Y, batch_size=3, shuffle=True, seed=0)
    first, second = list(r()), list(r())
    for x, y in first:
        assert x.flags.c_contiguous and y.flags.c_contiguous
        np.testing.assert_array_equal(x[:, 0], 2 * y[:, 0])
    assert not np.array_equal(first[0][1], second[0][1])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="batch_size"):
        reader.batch(reader.from_arrays(X), bad)
    with pytest.raises(ValueError, match="batch_size"):
        reader.batches(X, batch_size=bad)
    with pytest.raises(ValueError, match="first dimension"):
        reader.batches(X, Y[:5], batch_size=2)
    with pytest.raises(ValueError, match="buf_size"):
        reader.shuffle(reader.from_arrays(X), buf_size=bad)


def test_a_training_loop_without_slicing():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 3)).astype(np.float32)
    ys = (xs @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data("x", [3])
        y = layers.data("y", [1])
        loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
        fl.optimizer.SGD(0.1).minimize(loss)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    feeder = fl.DataFeeder([x, y], program=main)
    train = reader.batch(reader.shuffle(reader.from_arrays(xs, ys), seed=0), 16)
    losses = []
    for _ in range(10):
        for samples in train():
            losses.append(exe.run(main, feed=feeder.feed(samples), fetch_list=[loss], scope=scope)[0][0])
    assert losses[-1] < 0.01 * losses[0]
