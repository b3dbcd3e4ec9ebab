"""The ops the core relies on (scale, tanh, mul, mean, sum, fills) through the OpTest harness."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite.ops import common
from op_test import check_forward, check_op, run_op

rng = np.random.default_rng(0)


def test_tanh():
    check_op("tanh", lambda dt: {"X": rng.standard_normal((3, 4)).astype(dt)}, lambda X: np.tanh(X))


@pytest.mark.parametrize("xd", [1, 2])
def test_mul(xd):
    x = rng.standard_normal((2, 3, 4))
    y = rng.standard_normal((4, 5)) if xd == 2 else rng.standard_normal((12, 5))
    check_op("mul", lambda dt: {"X": x.astype(dt), "Y": y.astype(dt)},
             lambda X, Y: X.reshape(X.shape[:xd] + (-1,)).reshape(-1, Y.shape[0]).dot(Y).reshape(X.shape[:xd] + (5,)),
             attrs={"x_num_col_dims": xd}, wrt=("X", "Y"))


def test_mul_overflow_gives_inf_without_numpy_warnings():
    """A run reports inf/NaN in its values, not as NumPy RuntimeWarnings, and a user's
    np.seterr(all='raise') does not turn them into exceptions."""
    import warnings

    x = np.full((2, 3), 3e38, np.float32)
    y = np.full((3, 2), 3e38, np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = run_op("mul", {"X": x, "Y": y})["Out"]
    assert np.isinf(got).all() and got.dtype == np.float32


def test_fetched_gradients_of_sum_are_distinct_arrays():
    """sum's gradient hands every input the same array; fetched, they must not alias each other."""
    a = fl.layers.create_parameter([3], "float32", name="pa")
    b = fl.layers.create_parameter([3], "float32", name="pb")
    loss = fl.layers.mean(fl.layers.sums([a, b]))
    grads = dict((p.name, g) for p, g in fl.append_backward(loss))
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    ga, gb = exe.run(fetch_list=[grads["pa"], grads["pb"]])
    np.testing.assert_allclose(ga, np.full(3, 1 / 3, np.float32))
    ga[:] = 7.0
    np.testing.assert_allclose(gb, np.full(3, 1 / 3, np.float32))


def test_sum_of_three():
    xs = [rng.standard_normal((3, 2)) for _ in range(3)]
    check_op("sum", lambda dt: {"X": [a.astype(dt) for a in xs]}, lambda X: X[0] + X[1] + X[2])


def test_mean():
    check_op("mean", lambda dt: {"X": rng.standard_normal((3, 2)).astype(dt)}, lambda X: np.array([X.mean()], X.dtype))


@pytest.mark.parametrize("after", [True, False])
def test_scale(after):
    attrs = {"scale": 2.5, "bias": 1.0, "bias_after_scale": after}
    check_op("scale", lambda dt: {"X": rng.standard_normal((3, 2)).astype(dt)},
             lambda X: (2.5 * X + 1.0 if after else 2.5 * (X + 1.0)).astype(X.dtype), attrs=attrs)


def test_scale_large_uses_parallel_kernel_and_agrees(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    x = rng.standard_normal(4099).astype(np.float32)
    check_forward("scale", {"X": x}, lambda X: (X * np.float32(3.0)).astype(X.dtype), {"scale": 3.0})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fill_and_random_ops(dtype):
    out = run_op("fill_constant", {}, {"shape": [2, 3], "dtype": dtype, "value": 1.5})["Out"]
    np.testing.assert_array_equal(out, np.full((2, 3), 1.5, dtype))
    u1 = run_op("uniform_random", {}, {"shape": [1000], "dtype": dtype, "min": -2, "max": 3, "seed": 7})["Out"]
    u2 = run_op("uniform_random", {}, {"shape": [1000], "dtype": dtype, "min": -2, "max": 3, "seed": 7})["Out"]
    assert u1.dtype == dtype and (u1 >= -2).all() and (u1 < 3).all() and abs(u1.mean() - 0.5) < 0.15
    np.testing.assert_array_equal(u1, u2)  # same seed, same numbers
    g = run_op("gaussian_random", {}, {"shape": [4000], "dtype": dtype, "mean": 1, "std": 2, "seed": 3})["Out"]
    assert abs(g.mean() - 1) < 0.15 and abs(g.std() - 2) < 0.15


def test_mul_shape_mismatch_names_op_slots_and_shapes():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[-1, 3], dtype="float32")
    y = block.create_var(name="y", shape=[4, 2], dtype="float32")
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"mul.*'x'.*\[-1, 3\].*'y'.*\[4, 2\]"):
        block.append_op("mul", {"X": x, "Y": y}, {"Out": "z"})
    assert len(block.ops) == n_ops and "z" not in block.vars  # nothing half-changed


def test_bad_attribute_type_and_unknown_attribute():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[3], dtype="float32")
    with pytest.raises(TypeError, match="scale.*'scale'"):
        block.append_op("scale", {"X": x}, {"Out": "o"}, {"scale": "big"})
    with pytest.raises(ValueError, match="unknown attribute"):
        block.append_op("scale", {"X": x}, {"Out": "o"}, {"sclae": 2.0})
    with pytest.raises(ValueError, match="unknown op type"):
        block.append_op("no_such_op", {"X": x}, {"Out": "o"})


def test_int_input_to_float_op_is_rejected():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[3], dtype="int64")
    with pytest.raises(ValueError, match="tanh.*float"):
        block.append_op("tanh", {"X": x}, {"Out": "o"})


def test_sum_of_many_and_of_large_inputs(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    xs = [rng.standard_normal((4, 3)) for _ in range(7)]
    check_op("sum", lambda dt: {"X": [a.astype(dt) for a in xs]}, lambda X: np.sum(X, axis=0).astype(X[0].dtype))
    big = [rng.standard_normal(4099).astype(np.float32) for _ in range(3)]
    check_forward("sum", {"X": big}, lambda X: (X[0] + X[1]) + X[2])


def test_sum_grad_shares_one_array_and_infers_each_output():
    g = rng.standard_normal((3, 2))
    for dt in ("float32", "float64"):
        got = run_op("sum_grad", {"Out@GRAD": g.astype(dt)}, {"n": 1}, outputs=("X@GRAD",))["X@GRAD"]
        np.testing.assert_array_equal(got, g.astype(dt))
        assert got.dtype == dt
    block = fl.default_main_program().global_block()
    og = block.create_var(name="og", shape=(-1, 2), dtype="float32")
    block.append_op("sum_grad", {"Out@GRAD": og}, {"X@GRAD": ["ga", "gb"]}, {"n": 2})
    assert block.var("ga").shape == block.var("gb").shape == (-1, 2) and block.var("gb").dtype == np.float32
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match="sum_grad.*'n'"):
        block.append_op("sum_grad", {"Out@GRAD": og}, {"X@GRAD": ["gc"]}, {"n": 0})
    with pytest.raises(ValueError, match="sum_grad"):
        block.append_op("sum_grad", {"Out@GRAD": og}, {"X@GRAD": ["gd"]}, {"n": 2})  # n says 2 outputs
    assert len(block.ops) == n_ops and "gc" not in block.vars and "gd" not in block.vars


def test_summing_the_shared_gradients_of_one_sum_again_counts_each_once():
    # sums([x, x, x]): x@GRAD is the sum of three names for one array; accumulating in place into the
    # first would add the running total to itself (4 instead of 3; found by test_fuzz_programs)
    x = fl.layers.data("x", [2], dtype="float32", stop_gradient=False)
    loss = fl.layers.mean(fl.layers.sums([x, x, x]))
    dx, = fl.gradients([loss], [x])
    got, = fl.Executor().run(feed={"x": np.ones((1, 2), np.float32)}, fetch_list=[dx])
    np.testing.assert_array_equal(got, np.full((1, 2), 1.5, np.float32))


def test_an_in_place_error_clip_on_one_sum_gradient_leaves_the_shared_others_alone():
    # a@GRAD and x's own part are one shared array; the clip on a@GRAD must not write into it in place
    x = fl.layers.data("x", [4], dtype="float64", stop_gradient=False)
    a = fl.layers.scale(x, 2.0)
    a.error_clip = fl.clip.ErrorClipByValue(0.1)
    s = fl.layers.sums([a, x])
    loss = fl.layers.mean(fl.layers.elementwise_mul(s, s))
    fl.append_backward(loss, parameter_list=[x], callback=fl.clip.error_clip_callback)
    xv = rng.standard_normal((3, 4))
    got, = fl.Executor().run(feed={"x": xv}, fetch_list=[fl.grad_var_name("x")])
    ds = 2 * (3 * xv) / xv.size
    assert np.abs(ds).max() > 0.1  # the clip matters for this data
    np.testing.assert_allclose(got, 2 * np.clip(ds, -0.1, 0.1) + ds, rtol=1e-12)
