"""Initializers (MSRA, TruncatedNormal, NumpyArrayInitializer), assign of arrays, create_parameter,
fl.data and DataFeeder, against NumPy and SciPy references written here."""
import math

import numpy as np
import pytest
from scipy import stats

import fluidlite as fl
from fluidlite import initializer as init
from fluidlite import layers


def _init_value(initializer, shape, dtype="float32"):
    startup = fl.Program()
    with fl.program_guard(fl.Program(), startup):
        p = layers.create_parameter(list(shape), dtype, name="p", default_initializer=initializer)
    scope = fl.Scope()
    fl.Executor().run(startup, scope=scope)
    return p, np.array(scope.find_var("p").get_tensor())


@pytest.mark.parametrize("uniform", [True, False])
def test_msra_uses_fan_in_of_fc_and_conv_layouts(uniform):
    for shape, fan_in in (((300, 400), 300), ((64, 8, 5, 5), 200)):
        _, w = _init_value(init.MSRA(uniform=uniform, seed=7), shape, "float64")
        std = math.sqrt(2.0 / fan_in)
        if uniform:
            assert np.abs(w).max() <= math.sqrt(6.0 / fan_in)
            assert stats.kstest(w.ravel() / math.sqrt(6.0 / fan_in), "uniform", args=(-1, 2)).pvalue > 1e-3
        else:
            assert abs(w.std() / std - 1) < 0.03


def test_xavier_uses_conv_fans():
    _, w = _init_value(init.Xavier(seed=3), (16, 3, 3, 3), "float64")  # fan_in 27, fan_out 144
    limit = math.sqrt(6.0 / (27 + 144))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.9 * limit


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_truncated_normal_matches_scipy(dtype):
    _, w = _init_value(init.TruncatedNormal(loc=1.0, scale=0.5, seed=11), (200, 100), dtype)
    assert w.dtype == np.dtype(dtype)
    assert w.min() >= 0.0 - 1e-6 and w.max() <= 2.0 + 1e-6
    ref = stats.truncnorm(-2, 2, loc=1.0, scale=0.5)
    assert stats.kstest(w.ravel().astype(np.float64), ref.cdf).pvalue > 1e-3
    assert abs(w.std() - ref.std()) < 0.01


def test_numpy_array_initializer_copies_the_array():
    value = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    _, w = _init_value(init.NumpyArrayInitializer(value), (2, 3), "float64")
    np.testing.assert_array_equal(w, value)
    _, w32 = _init_value(init.NumpyArrayInitializer(value), (2, 3), "float32")
    np.testing.assert_array_equal(w32, value.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \[2, 3\].*'p'.*\[3, 2\]"):
        _init_value(init.NumpyArrayInitializer(value), (3, 2))
    with pytest.raises(ValueError, match="NaN"):
        init.NumpyArrayInitializer([1.0, float("nan")])


@pytest.mark.parametrize("value", [np.array([[1.5, -2.0], [0.25, 3.0]], np.float32), np.array([1.5, -2.0, 7.0]),
                                   np.array([[3], [-4], [2 ** 40]], np.int64)])
def test_assign_of_an_array(value):
    out = layers.assign(value)
    assert out.shape == value.shape and out.dtype == value.dtype
    (got,) = fl.Executor().run(fetch_list=[out])
    assert got.dtype == value.dtype
    np.testing.assert_array_equal(got, value)


def test_assign_value_op_checks_its_values():
    block = fl.default_main_program().global_block()
    with pytest.raises(ValueError, match=r"assign_value.*3 values for shape \[2, 2\]"):
        block.append_op("assign_value", {}, {"Out": "o"}, {"shape": [2, 2], "dtype": "float32",
                                                          "fp_values": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="fp_values do not fit dtype int64"):
        block.append_op("assign_value", {}, {"Out": "o"}, {"shape": [1], "dtype": "int64", "fp_values": [1.0]})
    assert "o" not in block.vars
    with pytest.raises(TypeError, match="float values to a int64"):
        layers.assign(np.array([1.5]), output=block.create_var(name="i", shape=[1], dtype="int64"))


def test_create_parameter_trains_like_numpy():
    x = layers.data("x", [3], dtype="float64")
    w = layers.create_parameter([3, 2], "float64", name="w", default_initializer=init.Constant(0.5))
    b = layers.create_parameter([2], "float64", is_bias=True)
    loss = layers.mean(layers.elementwise_add(layers.matmul(x, w), b))
    fl.optimizer.SGD(0.1).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    np.testing.assert_array_equal(fl.fetch_var(b.name), np.zeros(2))
    xs = np.arange(12.0).reshape(4, 3)
    exe.run(feed={"x": xs})
    grad_w = np.repeat(xs.sum(0)[:, None], 2, axis=1) / 8
    np.testing.assert_allclose(fl.fetch_var("w"), 0.5 - 0.1 * grad_w, rtol=1e-12)
    assert isinstance(w, fl.Parameter) and w.trainable
    with pytest.raises(TypeError, match="float type"):
        layers.create_parameter([2], "int64")


def test_fl_data_keeps_the_shape_as_written():
    a = fl.data("a", [None, 3, 4])
    b = fl.data("b", [-1, 1], dtype="int64")
    c = fl.data("c", [8, 2])
    assert a.shape == (-1, 3, 4) and b.shape == (-1, 1) and b.dtype == np.int64 and c.shape == (8, 2)
    assert a.stop_gradient
    with pytest.raises(ValueError, match="LoD"):
        fl.data("d", [None, 1], lod_level=1)


def test_data_feeder_builds_the_feed_dict():
    img = fl.data("img", [None, 2, 2])
    label = fl.data("label", [None, 1], dtype="int64")
    feeder = fl.DataFeeder(feed_list=[img, "label"], place=fl.CPUPlace())
    samples = [([[1, 2], [3, 4]], [0]), (np.ones(4), 1)]
    feed = feeder.feed(samples)
    assert feed["img"].dtype == np.float32 and feed["img"].shape == (2, 2, 2)
    np.testing.assert_array_equal(feed["img"][1], np.ones((2, 2)))
    assert feed["label"].dtype == np.int64 and feed["label"].shape == (2, 1)
    loss = layers.mean(layers.reshape(img, [-1, 4]))
    (v,) = fl.Executor().run(feed=feed, fetch_list=[loss])
    assert float(v[0]) == pytest.approx(14 / 8)
    with pytest.raises(ValueError, match="sample 1 must be a tuple of 2 fields"):
        feeder.feed([(np.ones(4), 0), (np.ones(4),)])
    with pytest.raises(ValueError, match=r"'img' holds 3 values"):
        feeder.feed([(np.ones(3), 0)])
    with pytest.raises(TypeError, match="'label' is int64 but its fields are floats"):
        feeder.feed([(np.ones(4), 0.5)])
    with pytest.raises(ValueError, match="not a variable"):
        fl.DataFeeder(["nope"])
