"""Index, view and metric ops (#16): forward against NumPy in both float dtypes, float64 finite-difference
gradients, inference with a -1 batch, and build-time errors."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from op_test import check_forward, check_grad, check_op, run_op

rng = np.random.default_rng(7)
X = rng.standard_normal((3, 4, 5))
FLOATS = ("float32", "float64")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_arg_max_min(dtype, axis):
    x = np.round(X * 2).astype(dtype)  # ties: the first index wins, as np.argmax
    check_forward("arg_max", {"X": x}, lambda X: np.argmax(X, axis=axis), {"axis": axis})
    check_forward("arg_min", {"X": x}, lambda X: np.argmin(X, axis=axis), {"axis": axis})


def _np_top_k(x, k):
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return {"Out": np.take_along_axis(x, order, -1), "Indices": order.astype(np.int64)}


def test_top_k_forward_and_gradient():
    check_op("top_k", lambda dt: {"X": X.astype(dt)}, lambda X: _np_top_k(X, 3), {"k": 3},
             outputs=("Out", "Indices"), grad_outputs=("Out",))
    ties = np.array([[1.0, 3.0, 3.0, 0.0]])
    got = run_op("top_k", {"X": ties}, {"k": 2}, outputs=("Out", "Indices"))
    np.testing.assert_array_equal(got["Indices"], [[1, 2]])


def test_one_hot():
    ids = np.array([[0], [3], [1]], np.int64)
    check_forward("one_hot", {"X": ids}, lambda X: np.eye(4, dtype=np.float32)[X[:, 0]], {"depth": 4})
    with pytest.raises(ValueError, match="one_hot"):
        run_op("one_hot", {"X": np.array([[4]], np.int64)}, {"depth": 4})


def test_gather_forward_and_repeated_rows_accumulate_gradient():
    idx = np.array([2, 0, 2], np.int64)
    check_op("gather", lambda dt: {"X": X.astype(dt), "Index": idx}, lambda X, Index: X[Index])
    check_forward("gather", {"X": X, "Index": idx[:, None]}, lambda X, Index: X[Index[:, 0]])
    with pytest.raises(ValueError, match="gather"):
        run_op("gather", {"X": X, "Index": np.array([3], np.int64)})


def test_where():
    cond = X > 0
    y = rng.standard_normal(X.shape)
    check_op("where", lambda dt: {"Condition": cond, "X": X.astype(dt), "Y": y.astype(dt)},
             lambda Condition, X, Y: np.where(Condition, X, Y), wrt=("X", "Y"))
    check_grad("where", {"Condition": cond, "X": X, "Y": y}, wrt=("Y",))  # one side only: an optional output


@pytest.mark.parametrize("times", [(1, 2, 1), (2, 1, 3)])
def test_expand(times):
    check_op("expand", lambda dt: {"X": X.astype(dt)}, lambda X: np.tile(X, times), {"expand_times": list(times)})


@pytest.mark.parametrize("axes, starts, ends", [([1], [1], [3]), ([0, 2], [-2, 1], [100, -1]), ([2], [0], [5])])
def test_slice(axes, starts, ends):
    def ref(Input):
        index = [slice(None)] * Input.ndim
        for a, s, e in zip(axes, starts, ends):
            index[a] = slice(s, e)
        return Input[tuple(index)]

    attrs = {"axes": axes, "starts": starts, "ends": ends}
    check_op("slice", lambda dt: {"Input": X.astype(dt)}, ref, attrs, wrt=("Input",))


def test_squeeze_unsqueeze():
    x = rng.standard_normal((3, 1, 4, 1))
    check_op("squeeze", lambda dt: {"X": x.astype(dt)}, lambda X: X.reshape(3, 4), {"axes": []})
    check_op("squeeze", lambda dt: {"X": x.astype(dt)}, lambda X: X.reshape(3, 4, 1), {"axes": [1]})
    check_op("unsqueeze", lambda dt: {"X": X.astype(dt)}, lambda X: X.reshape(1, 3, 4, 1, 5), {"axes": [0, 3]})


def test_cast_between_floats_carries_the_gradient():
    check_forward("cast", {"X": X}, lambda X: X.astype(np.float32), {"out_dtype": "float32"})
    check_forward("cast", {"X": X * 3}, lambda X: X.astype(np.int64), {"out_dtype": "int64"})
    check_forward("cast", {"X": np.array([1, -2, 0], np.int64)}, lambda X: X.astype(np.float64),
                  {"out_dtype": "float64"})
    check_grad("cast", {"X": X}, attrs={"out_dtype": "float64"})
    x = layers.data("x", [3], dtype="float64", stop_gradient=False)
    loss = layers.reduce_sum(layers.square(layers.cast(x, "float32")))
    (dx,) = fl.gradients([loss], [x])
    assert dx.dtype == np.float64
    xs = np.array([[1.0, -2.0, 0.5]])
    (g,) = fl.Executor().run(feed={"x": xs}, fetch_list=[dx])
    np.testing.assert_allclose(g, 2 * xs, rtol=1e-6)


def test_accuracy_layer_matches_numpy_top_k():
    scores = layers.data("scores", [5])
    label = layers.data("label", [1], dtype="int64")
    acc1, acc3 = layers.accuracy(scores, label), layers.accuracy(scores, label, k=3)
    assert acc1.shape == (1,) and acc1.dtype == np.float32
    s = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 5, (40, 1))
    got1, got3 = fl.Executor().run(feed={"scores": s, "label": y}, fetch_list=[acc1, acc3])
    top = np.argsort(-s, axis=1, kind="stable")
    assert float(got1[0]) == pytest.approx(np.mean(top[:, 0] == y[:, 0]))
    assert float(got3[0]) == pytest.approx(np.mean((top[:, :3] == y).any(1)))


def test_stack_unstack_layers_round_trip_with_gradients():
    a = layers.data("a", [3], dtype="float64", stop_gradient=False)
    b = layers.data("b", [3], dtype="float64", stop_gradient=False)
    s = layers.stack([a, b], axis=1)
    assert s.shape == (-1, 2, 3)
    parts = layers.unstack(s, axis=1)
    assert len(parts) == 2 and parts[0].shape == (-1, 3)
    loss = layers.reduce_sum(layers.elementwise_mul(parts[0], parts[1]))
    da, db = fl.gradients([loss], [a, b])
    av, bv = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    sv, ga, gb = fl.Executor().run(feed={"a": av, "b": bv}, fetch_list=[s, da, db])
    np.testing.assert_array_equal(sv, np.stack([av, bv], axis=1))
    np.testing.assert_allclose(ga, bv)
    np.testing.assert_allclose(gb, av)


def test_inference_with_a_batch_dimension():
    x = layers.data("x", [4, 5])
    ids = layers.data("ids", [1], dtype="int64")
    assert layers.argmax(x, axis=1).shape == (-1, 5) and layers.argmax(x, axis=1).dtype == np.int64
    values, indices = layers.topk(x, 2)
    assert values.shape == (-1, 4, 2) and indices.dtype == np.int64
    assert layers.one_hot(ids, 7).shape == (-1, 7)
    assert layers.gather(x, layers.reshape(ids, [-1])).shape == (-1, 4, 5)
    assert layers.expand(x, [1, 2, 3]).shape == (-1, 8, 15)
    assert layers.slice(x, [2], [1], [-1]).shape == (-1, 4, 3)
    assert layers.unsqueeze(x, [1]).shape == (-1, 1, 4, 5)
    assert layers.squeeze(layers.unsqueeze(x, [1]), [1]).shape == (-1, 4, 5)
    assert layers.cast(x, "float64").dtype == np.float64
    assert layers.where(layers.cast(x, "bool"), x, x).shape == (-1, 4, 5)


@pytest.mark.parametrize("build, match", [
    (lambda x, i: layers.argmax(x, axis=3), r"arg_max.*axis=3.*rank 3"),
    (lambda x, i: layers.topk(x, 6), r"top_k.*k=6.*'x' shape=\[-1, 4, 5\]"),
    (lambda x, i: layers.one_hot(x, 3), r"one_hot.*integer ids"),
    (lambda x, i: layers.gather(x, x), r"gather.*Index.*integer ids"),
    (lambda x, i: layers.expand(x, [2, 2]), r"expand.*expand_times=\[2, 2\]"),
    (lambda x, i: layers.slice(x, [1], [3], [2]), r"slice.*3:2 of axis 1.*empty"),
    (lambda x, i: layers.slice(x, [0], [0], [1]), r"slice.*axis 0.*unknown"),
    (lambda x, i: layers.squeeze(x, [1]), r"squeeze.*axes \[1\].*not 1"),
    (lambda x, i: layers.where(x, x, x), r"where.*Condition must be bool"),
    (lambda x, i: layers.accuracy(x, i), r"accuracy.*input \[N, C\].*\[-1, 4, 5\]"),
    (lambda x, i: layers.cast(x, "str"), r"cast.*numeric"),
])
def test_bad_input_is_refused_at_build_time(build, match):
    x = layers.data("x", [4, 5])
    i = layers.data("i", [1], dtype="int64")
    block = fl.default_main_program().global_block()
    n_ops = len(block.ops)
    with pytest.raises((ValueError, TypeError), match=match):
        build(x, i)
    assert len(block.ops) == n_ops
