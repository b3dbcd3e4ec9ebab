"""elementwise_add/sub/mul/div/max: Paddle and NumPy broadcasting, gradients, inference, errors, operators."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import fluidlite as fl
from fluidlite import layers
from op_test import check_forward, check_op

rng = np.random.default_rng(1)

NUMPY_FN = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum}


def _y_values(shape, op):
    y = rng.standard_normal(shape)
    if op == "div":  # keep away from 0 so finite differences stay accurate
        y = np.sign(y + 0.01) * (0.5 + np.abs(y))
    return np.array(y)


def _paddle_ref(op, axis):
    """NumPy reference: Y reshaped so its dims sit at X's dims axis.. (trailing size-1 dims of Y dropped)."""

    def ref(X, Y):
        ys = Y.shape
        while ys and ys[-1] == 1 and axis + len(ys) > X.ndim:
            ys = ys[:-1]
        yy = Y.reshape((1,) * axis + ys + (1,) * (X.ndim - axis - len(ys)))
        return NUMPY_FN[op](X, yy).astype(X.dtype)

    return ref


def _numpy_ref(op):
    return lambda X, Y: NUMPY_FN[op](X, Y).astype(X.dtype)


def _check(op, xs, ys, axis=-1):
    x, y = np.array(rng.standard_normal(xs)), _y_values(ys, op)
    ref = _numpy_ref(op) if axis == -1 else _paddle_ref(op, axis)
    check_op(f"elementwise_{op}", lambda dt: {"X": x.astype(dt), "Y": y.astype(dt)}, ref,
             attrs={"axis": axis}, wrt=("X", "Y"))


PADDLE_CASES = [((2, 3, 4), (3,), 1), ((2, 3, 4), (2, 3), 0), ((2, 3, 4), (3, 1), 1), ((3, 4), (4,), 1),
                ((2, 3, 4), (4,), 2), ((3, 4), (3, 4), 0), ((2, 3, 4), (1,), 0)]
NUMPY_CASES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 4), (1,)), ((3, 4), ()), ((4,), (3, 4)), ((2, 1, 4), (3, 1)),
               ((3, 1), (1, 4)), ((1, 3), (2, 1, 1)), ((2, 3, 4, 2), (2, 1, 4, 1))]


@pytest.mark.parametrize("op", list(NUMPY_FN))
@pytest.mark.parametrize("xs,ys,axis", PADDLE_CASES)
def test_paddle_axis_forms(op, xs, ys, axis):
    _check(op, xs, ys, axis)


@pytest.mark.parametrize("op", list(NUMPY_FN))
@pytest.mark.parametrize("xs,ys", NUMPY_CASES)
def test_numpy_forms(op, xs, ys):
    _check(op, xs, ys)


@st.composite
def paddle_pairs(draw):
    xs = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    axis = draw(st.integers(0, len(xs)))
    k = draw(st.integers(0, len(xs) - axis))
    return xs, xs[axis:axis + k], axis


_HYPO = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_HYPO
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), op=st.sampled_from(["add", "mul"]))
def test_numpy_broadcast_drawn(shapes, op):
    _check(op, *shapes.input_shapes)


@_HYPO
@given(case=paddle_pairs(), op=st.sampled_from(["add", "mul"]))
def test_paddle_broadcast_drawn(case, op):
    _check(op, *case)


def _grads(op, x, y, g, axis=-1):
    """(out, dX, dY) of the op through fl.gradients with the given output gradient."""
    block = fl.default_main_program().global_block()
    xv = block.create_var(name="x", shape=x.shape, dtype=x.dtype, is_data=True)
    yv = block.create_var(name="y", shape=y.shape, dtype=y.dtype, is_data=True)
    out = layers.elementwise_max(xv, yv, axis) if op == "max" else getattr(layers, f"elementwise_{op}")(xv, yv, axis)
    gv = block.create_var(name="g", shape=g.shape, dtype=g.dtype, is_data=True)
    dx, dy = fl.gradients([out], [xv, yv], target_gradients=[gv])
    return fl.Executor().run(feed={"x": x, "y": y, "g": g}, fetch_list=[out, dx, dy])


def test_max_gradient_splits_ties():
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([1.0, 5.0, 0.0])
    g = np.array([2.0, 4.0, 8.0])
    out, dx, dy = _grads("max", x, y, g)
    np.testing.assert_array_equal(out, [1.0, 5.0, 3.0])
    np.testing.assert_array_equal(dx, [1.0, 0.0, 8.0])
    np.testing.assert_array_equal(dy, [1.0, 4.0, 0.0])


@pytest.mark.parametrize("xs,ys,axis", [((2048, 256), (2048, 256), -1), ((4096, 128), (128,), 1),
                                        ((128,), (4096, 128), -1)])
def test_large_parallel_kernels_agree_with_numpy(xs, ys, axis, monkeypatch):
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 19)  # these shapes take the prange kernels
    x = rng.standard_normal(xs).astype(np.float32)
    y = rng.standard_normal(ys).astype(np.float32)
    out_ref = _paddle_ref("mul", axis)(x, y) if axis != -1 else x * y
    g = rng.standard_normal(out_ref.shape).astype(np.float32)
    out, dx, dy = _grads("mul", x, y, g, axis)
    np.testing.assert_allclose(out, out_ref, rtol=1e-6)
    yb = np.broadcast_to(y, out_ref.shape)
    xb = np.broadcast_to(x, out_ref.shape)
    sum_to = lambda a, shape: a.reshape((-1,) + shape).sum(0) if a.shape != shape else a  # noqa: E731
    np.testing.assert_allclose(dx, sum_to(g * yb, xs), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dy, sum_to(g * xb, ys), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_large_bias_gradient_sums_columns_on_the_threads(dtype, monkeypatch):
    """x + bias on (4100, 300): the bias's gradient (column sums) takes the prange kernel, in 64-row blocks
    (a ragged last one); against float64 NumPy, and the serial kernel's sum."""
    from fluidlite.kernels import elementwise as KE
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 16)
    x = rng.standard_normal((4100, 300)).astype(dtype)
    bias = rng.standard_normal(300).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    out, dx, dbias = _grads("add", x, bias, g, 1)
    want = g.astype(np.float64).sum(axis=0)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(dbias, want, **tol)
    np.testing.assert_array_equal(dx, g)
    np.testing.assert_allclose(KE.col_sum_parallel(g), KE.col_sum(g), **tol)
    assert KE.col_sum_parallel(g[:0]).shape == (300,) and not KE.col_sum_parallel(g[:0]).any()


@pytest.mark.parametrize("xs,ys,axis,out", [
    ((-1, 4), (4,), -1, (-1, 4)), ((-1, 3, 4), (3,), 1, (-1, 3, 4)), ((-1, 1), (5,), -1, (-1, 5)),
    ((4,), (-1, 4), -1, (-1, 4)), ((-1, 3), (-1, 3), -1, (-1, 3)), ((-1, 3, 4), (-1, 3), 0, (-1, 3, 4)),
    ((2, -1), (2, 1), -1, (2, -1)),
])
def test_infer_with_batch_dims(xs, ys, axis, out):
    block = fl.default_main_program().global_block()
    for dt in ("float32", "float64"):
        x = block.create_var(name=f"x{dt}", shape=xs, dtype=dt)
        y = block.create_var(name=f"y{dt}", shape=ys, dtype=dt)
        for op in NUMPY_FN:
            o = getattr(layers, f"elementwise_{op}")(x, y, axis=axis)
            assert o.shape == out and o.dtype == np.dtype(dt)


@pytest.mark.parametrize("xs,ys,axis", [((-1, 3), (4,), -1), ((2, 3, 4), (3,), 0), ((2, 3), (3,), 3),
                                        ((3,), (2, 3), 0), ((2, 3, 4), (3, 5), 1)])
def test_incompatible_shapes_raise_and_leave_block_unchanged(xs, ys, axis):
    block = fl.default_main_program().global_block()
    x = block.create_var(name="xa", shape=xs, dtype="float32")
    y = block.create_var(name="yb", shape=ys, dtype="float32")
    n_ops, n_vars = len(block.ops), len(block.vars)
    pattern = (rf"elementwise_sub.*X='xa' shape={list(xs)}.*Y='yb' shape={list(ys)}").replace("[", r"\[")
    with pytest.raises(ValueError, match=pattern):
        block.append_op("elementwise_sub", {"X": x, "Y": y}, {"Out": "o"}, {"axis": axis})
    assert len(block.ops) == n_ops and len(block.vars) == n_vars


def test_bad_attrs_and_dtypes():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[2, 3], dtype="float32")
    y = block.create_var(name="y", shape=[3], dtype="float64")
    with pytest.raises(ValueError, match="axis"):
        block.append_op("elementwise_add", {"X": x, "Y": x}, {"Out": "o"}, {"axis": -2})
    with pytest.raises(TypeError, match="axis"):
        block.append_op("elementwise_add", {"X": x, "Y": x}, {"Out": "o"}, {"axis": 1.5})
    with pytest.raises(ValueError, match="elementwise_add.*dtypes differ"):
        block.append_op("elementwise_add", {"X": x, "Y": y}, {"Out": "o"})
    assert "o" not in block.vars


def test_fc_bias_add_with_num_flatten_dims():
    x = layers.data(name="x", shape=[3, 5], dtype="float32")
    h = layers.fc(x, size=4, num_flatten_dims=2, bias_attr=fl.ParamAttr(initializer=fl.initializer.Constant(0.5)))
    assert h.shape == (-1, 3, 4)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((2, 3, 5)).astype(np.float32)
    out, = exe.run(feed={"x": xs}, fetch_list=[h])
    w = fl.fetch_var(fl.default_main_program().global_block().all_parameters()[0].name)
    np.testing.assert_allclose(out, xs @ w + 0.5, rtol=1e-5, atol=1e-6)


def test_variable_operators_with_variables_and_scalars():
    x = layers.data(name="x", shape=[3], dtype="float64")
    y = layers.data(name="y", shape=[3], dtype="float64")
    outs = [x + y, x - y, x * y, x / y, x + 2, 2 + x, x - 2, 2 - x, x * 3, 3 * x, x / 4, 4 / x, -x]
    xs, ys = rng.standard_normal((2, 3)) + 3, rng.standard_normal((2, 3)) + 3
    want = [xs + ys, xs - ys, xs * ys, xs / ys, xs + 2, 2 + xs, xs - 2, 2 - xs, xs * 3, 3 * xs, xs / 4, 4 / xs, -xs]
    got = fl.Executor().run(feed={"x": xs, "y": ys}, fetch_list=outs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12)
    assert all(o.dtype == np.float64 and o.shape == (-1, 3) for o in outs)
    with pytest.raises(TypeError):
        x + "a"


def test_operator_gradients_flow():
    x = layers.data(name="x", shape=[3], dtype="float64")
    x.stop_gradient = False
    loss = layers.mean((2 - x) * x / 4)
    dx, = fl.gradients([loss], [x])
    xs = rng.standard_normal((2, 3))
    got, = fl.Executor().run(feed={"x": xs}, fetch_list=[dx])
    np.testing.assert_allclose(got, (2 - 2 * xs) / 4 / xs.size, rtol=1e-12)


def test_forward_float32_stays_float32_for_strided_form():
    x = rng.standard_normal((2, 1, 4)).astype(np.float32)
    y = rng.standard_normal((3, 1)).astype(np.float32)
    check_forward("elementwise_div", {"X": x, "Y": y}, lambda X, Y: (X / Y).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_division_by_zero_gives_inf_and_nan_like_numpy(dtype):
    x = np.array([1.0, -1.0, 0.0], dtype)
    y = np.zeros(3, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        check_forward("elementwise_div", {"X": x, "Y": y}, lambda X, Y: X / Y)


def test_add_gradients_that_are_dout_itself_stay_correct_when_summed_and_reused():
    """elementwise_add's dX and dY are dOut's own buffer (no copy); x used three times and y twice
    must still get exact gradients: w = (x + x + x) * (x + x) = 6 x^2."""
    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        x = layers.data("x", [4], dtype="float32")
        x.stop_gradient = False
        y = layers.elementwise_add(x, x)
        z = layers.elementwise_add(y, x)
        loss = layers.reduce_sum(layers.elementwise_mul(z, y))
        dx, dy = fl.gradients([loss], [x, y])
    xv = np.arange(8, dtype=np.float32).reshape(2, 4)
    got_dx, got_dy = fl.Executor().run(main, feed={"x": xv}, fetch_list=[dx, dy])
    np.testing.assert_array_equal(got_dx, 12 * xv)
    np.testing.assert_array_equal(got_dy, 5 * xv)  # z + y
