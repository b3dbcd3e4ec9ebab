"""Losses through the OpTest harness, their layers, fill_constant, and a softmax classifier end to end."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite.ops import common
from fluidlite import layers
from op_test import build_op, check_forward, check_op

rng = np.random.default_rng(0)


def _probs(shape):
    p = rng.uniform(0.2, 1.0, shape)  # away from 0 so finite differences of log are accurate
    return p / p.sum(-1, keepdims=True)


def _labels(lead, classes):
    return rng.integers(0, classes, lead + (1,)).astype(np.int64)


def _np_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


# ---------------------------------------------------------------- cross_entropy

@pytest.mark.parametrize("lead", [(4,), (2, 3)])
def test_cross_entropy_hard(lead):
    x, label = _probs(lead + (5,)), _labels(lead, 5)
    label.reshape(-1)[1] = -100  # ignore_index: loss 0, no gradient

    def ref(X, Label):
        picked = np.take_along_axis(X.astype(np.float64), np.maximum(Label, 0), -1)
        return np.where(Label == -100, 0.0, -np.log(picked)).astype(X.dtype)

    check_op("cross_entropy", lambda dt: {"X": x.astype(dt), "Label": label}, ref, outputs=("Y",))


def test_cross_entropy_soft_grads_to_x_and_label():
    x, label = _probs((3, 4)), _probs((3, 4))
    check_op("cross_entropy", lambda dt: {"X": x.astype(dt), "Label": label.astype(dt)},
             lambda X, Label: (-(Label * np.log(X)).sum(-1, keepdims=True)).astype(X.dtype),
             attrs={"soft_label": True}, outputs=("Y",), wrt=("X", "Label"))


def test_cross_entropy_zero_probability_is_finite():
    x = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    out = check_forward("cross_entropy", {"X": x, "Label": np.array([[0], [0]], np.int64)},
                        lambda X, Label: np.array([[-np.log(np.float32(1e-20))], [0.0]], np.float32), outputs=("Y",))
    assert np.isfinite(out["Y"]).all()


def test_cross_entropy_layer_infer_and_errors():
    x = layers.data("x", [4])
    lab = layers.data("lab", [1], dtype="int64")
    y = layers.cross_entropy(x, lab)
    assert y.shape == (-1, 1) and y.dtype == np.float32
    block = fl.default_main_program().global_block()
    n_ops = len(block.ops)
    bad = layers.data("bad", [2], dtype="int64")
    names_both = r"cross_entropy.*Label.*\[-1, 1\].*'x' shape=\[-1, 4\].*'bad' shape=\[-1, 2\]"
    with pytest.raises(ValueError, match=names_both):
        layers.cross_entropy(x, bad)
    flab = layers.data("flab", [1])
    with pytest.raises(ValueError, match=r"cross_entropy.*int64.*'flab'"):
        layers.cross_entropy(x, flab)
    with pytest.raises(ValueError, match=r"cross_entropy.*soft Label.*'flab'"):
        layers.cross_entropy(x, flab, soft_label=True)
    assert len(block.ops) == n_ops


def test_cross_entropy_label_out_of_range_raises_at_run_time():
    x = layers.data("x", [3])
    lab = layers.data("lab", [1], dtype="int64")
    y = layers.cross_entropy(x, lab)
    with pytest.raises(Exception, match=r"label 3 in Label='lab' is outside \[0, 3\)"):
        fl.Executor().run(feed={"x": _probs((2, 3)).astype("float32"), "lab": np.array([[0], [3]], np.int64)},
                          fetch_list=[y])


# ---------------------------------------------------------------- softmax_with_cross_entropy

@pytest.mark.parametrize("lead", [(4,), (2, 2)])
def test_softmax_with_cross_entropy_hard(lead):
    z, label = rng.standard_normal(lead + (5,)) * 2, _labels(lead, 5)
    label.reshape(-1)[0] = -100

    def ref(Logits, Label):
        ls = _np_log_softmax(Logits)
        loss = np.where(Label == -100, 0.0, -np.take_along_axis(ls, np.maximum(Label, 0), -1))
        return {"Softmax": np.exp(ls).astype(Logits.dtype), "Loss": loss.astype(Logits.dtype)}

    # the projection covers both outputs, so the gradient flowing in through Softmax is checked too
    check_op("softmax_with_cross_entropy", lambda dt: {"Logits": z.astype(dt), "Label": label}, ref,
             wrt=("Logits",), outputs=("Softmax", "Loss"))


def test_softmax_with_cross_entropy_soft():
    z, label = rng.standard_normal((3, 4)), _probs((3, 4)) * 1.3  # rows not summing to 1 still differentiate right

    def ref(Logits, Label):
        ls = _np_log_softmax(Logits)
        loss = -(Label * ls).sum(-1, keepdims=True)
        return {"Softmax": np.exp(ls).astype(Logits.dtype), "Loss": loss.astype(Logits.dtype)}

    check_op("softmax_with_cross_entropy", lambda dt: {"Logits": z.astype(dt), "Label": label.astype(dt)}, ref,
             attrs={"soft_label": True}, wrt=("Logits", "Label"), outputs=("Softmax", "Loss"))


def test_softmax_with_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 0.0]], np.float32)
    label = np.array([[1], [1]], np.int64)
    got = check_forward("softmax_with_cross_entropy", {"Logits": z, "Label": label},
                        lambda Logits, Label: {"Loss": np.array([[1000.0], [0.0]], np.float32)},
                        outputs=("Softmax", "Loss"))
    assert np.isfinite(got["Softmax"]).all()


def test_softmax_with_cross_entropy_layer_and_errors():
    z = layers.data("z", [6])
    lab = layers.data("lab", [1], dtype="int64")
    loss, sm = layers.softmax_with_cross_entropy(z, lab, return_softmax=True)
    assert loss.shape == (-1, 1) and sm.shape == (-1, 6)
    bad = layers.data("bad", [3, 1], dtype="int64")
    with pytest.raises(ValueError, match=r"softmax_with_cross_entropy.*Label.*'z'.*\[-1, 6\].*'bad'.*\[-1, 3, 1\]"):
        layers.softmax_with_cross_entropy(z, bad)
    with pytest.raises(Exception, match=r"label -1 in Label='lab'"):
        fl.Executor().run(feed={"z": np.zeros((2, 6), np.float32), "lab": np.array([[0], [-1]], np.int64)},
                          fetch_list=[loss])


# ---------------------------------------------------------------- elementwise losses

def test_square_error_cost_grads_to_both():
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    check_op("square_error_cost", lambda dt: {"X": x.astype(dt), "Y": y.astype(dt)},
             lambda X, Y: ((X - Y) ** 2).astype(X.dtype), wrt=("X", "Y"))


def test_square_error_cost_large_uses_parallel_kernels(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    x, y, r = (rng.standard_normal(4099) for _ in range(3))
    program, ins, outs = build_op("square_error_cost", {"X": x, "Y": y})
    rv = program.global_block().create_var(name="r", shape=r.shape, dtype="float64", is_data=True)
    gx, gy = fl.gradients([outs["Out"]], [ins["X"][0], ins["Y"][0]], target_gradients=[rv])
    out, dx, dy = fl.Executor().run(program, feed={"in_X_0": x, "in_Y_0": y, "r": r}, fetch_list=[outs["Out"], gx, gy])
    np.testing.assert_allclose(out, (x - y) ** 2, rtol=1e-12)
    np.testing.assert_allclose(dx, 2 * (x - y) * r, rtol=1e-12)
    np.testing.assert_allclose(dy, -2 * (x - y) * r, rtol=1e-12)


def test_square_error_cost_layer_label_stop_gradient_and_errors():
    x = layers.data("x", [3])
    x.stop_gradient = False
    y = layers.data("y", [3])  # data: stop_gradient=True
    cost = layers.square_error_cost(x, y)
    assert cost.shape == (-1, 3)
    gx, = fl.gradients([layers.mean(cost)], [x])
    types = [op.type for op in fl.default_main_program().global_block().ops]
    grad_op = fl.default_main_program().global_block().ops[types.index("square_error_cost_grad")]
    assert grad_op.output("X@GRAD") and not grad_op.output("Y@GRAD")
    bad = layers.data("bad", [4])
    with pytest.raises(ValueError, match=r"square_error_cost.*'x'.*\[-1, 3\].*'bad'.*\[-1, 4\]"):
        layers.square_error_cost(x, bad)


def test_sigmoid_cross_entropy_with_logits():
    x, z = rng.standard_normal((3, 4)) * 3, rng.uniform(0, 1, (3, 4))

    def ref(X, Label):
        x64 = X.astype(np.float64)
        p = 1 / (1 + np.exp(-x64))
        return (-Label * np.log(p) - (1 - Label) * np.log(1 - p)).astype(X.dtype)

    check_op("sigmoid_cross_entropy_with_logits", lambda dt: {"X": x.astype(dt), "Label": z.astype(dt)}, ref,
             wrt=("X", "Label"))
    assert layers.sigmoid_cross_entropy_with_logits(layers.data("a", [2]), layers.data("b", [2])).shape == (-1, 2)


def test_fill_constant_layer_stops_gradient():
    c = layers.fill_constant([2, 3], "float64", 2.5)
    assert c.stop_gradient and c.shape == (2, 3) and c.dtype == np.float64
    got, = fl.Executor().run(fetch_list=[c])
    np.testing.assert_array_equal(got, np.full((2, 3), 2.5))


# ---------------------------------------------------------------- end to end

def test_softmax_classifier_loss_and_weight_gradient_match_numpy():
    x = layers.data("x", [5])
    lab = layers.data("lab", [1], dtype="int64")
    logits = layers.fc(x, size=3)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, lab))
    (w, gw), (b, gb) = fl.append_backward(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xv = rng.standard_normal((8, 5)).astype("float32")
    lv = rng.integers(0, 3, (8, 1)).astype(np.int64)
    fl.global_scope().var(b.name).get_tensor().set(rng.standard_normal(3).astype("float32"))
    loss_v, gw_v, gb_v = exe.run(feed={"x": xv, "lab": lv}, fetch_list=[loss, gw, gb])
    wv, bv = fl.fetch_var(w.name).astype(np.float64), fl.fetch_var(b.name).astype(np.float64)
    ls = _np_log_softmax(xv.astype(np.float64) @ wv + bv)
    np.testing.assert_allclose(loss_v, [-ls[np.arange(8), lv[:, 0]].mean()], rtol=1e-5)
    delta = (np.exp(ls) - np.eye(3)[lv[:, 0]]) / 8
    np.testing.assert_allclose(gw_v, xv.T @ delta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb_v, delta.sum(0), rtol=1e-4, atol=1e-6)
