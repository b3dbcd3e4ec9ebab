"""The synthetic tasks: shapes, determinism with the seed, and each task's defining property."""
import numpy as np
import pytest

from fluidlite import synthetic as data


@pytest.mark.parametrize("seq_len,batch", [(2, 1), (7, 5), (50, 16)])
def test_adding_problem_shapes_and_property(seq_len, batch):
    x, y = data.adding_problem(seq_len, batch, seed=3)
    assert x.shape == (seq_len, batch, 2) and y.shape == (batch, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert set(np.unique(markers)) <= {0.0, 1.0}
    np.testing.assert_array_equal(markers.sum(0), 2)  # exactly two markers per sequence
    half = seq_len // 2
    np.testing.assert_array_equal(markers[:half].sum(0), 1)  # one in each half
    assert values.min() >= 0 and values.max() <= 1
    for b in range(batch):
        marked = values[markers[:, b] == 1, b]
        assert y[b, 0] == np.float32(marked[0] + marked[1])


def test_adding_problem_is_deterministic_and_varies_with_seed():
    a = data.adding_problem(20, 8, seed=1)
    b = data.adding_problem(20, 8, seed=1)
    c = data.adding_problem(20, 8, seed=2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    rng = np.random.default_rng(5)  # one stream gives different successive batches
    assert not np.array_equal(data.adding_problem(20, 8, seed=rng)[0], data.adding_problem(20, 8, seed=rng)[0])


def test_adding_problem_float64_and_baseline():
    x, y = data.adding_problem(10, 4000, seed=0, dtype="float64")
    assert x.dtype == y.dtype == np.float64
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.02  # variance of a sum of two U[0,1]


def test_copy_memory_property():
    delay, batch, k, n = 6, 5, 4, 3
    x, y = data.copy_memory(delay, batch, n_symbols=k, copy_len=n, seed=0)
    seq_len = delay + 2 * n
    assert x.shape == (seq_len, batch, k + 2) and y.shape == (seq_len, batch) and y.dtype == np.int64
    np.testing.assert_array_equal(x.sum(-1), 1)  # one-hot
    shown = x.argmax(-1)
    assert shown[:n].min() >= 1 and shown[:n].max() <= k
    np.testing.assert_array_equal(shown[n:delay + n - 1], 0)
    np.testing.assert_array_equal(shown[delay + n - 1], k + 1)  # the recall marker
    np.testing.assert_array_equal(shown[delay + n:], 0)
    np.testing.assert_array_equal(y[-n:], shown[:n])
    np.testing.assert_array_equal(y[:-n], 0)
    again = data.copy_memory(delay, batch, n_symbols=k, copy_len=n, seed=0)
    np.testing.assert_array_equal(again[0], x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        data.adding_problem(1, 4)
    with pytest.raises(ValueError, match="delay"):
        data.copy_memory(0, 4)
