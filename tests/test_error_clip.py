"""Error clipping: placement in the backward ops and a manual NumPy (float64) backward of a clipped net."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.clip import ErrorClipByValue, error_clip_callback

C = 0.02  # error clip bound, small enough to be active


def build(two_consumers=False):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 5  # a fixed draw, in which the clips are active
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4], dtype="float64")
        y = layers.data(name="y", shape=[1], dtype="float64")
        h1 = layers.fc(x, size=5, act="tanh")
        h1.error_clip = ErrorClipByValue(max=C)
        h2 = layers.fc(h1, size=3, act="tanh")
        h2.error_clip = ErrorClipByValue(max=C, min=-C / 2)
        pred = layers.fc([h1, h2] if two_consumers else h2, size=1)
        loss = layers.mean(layers.square_error_cost(pred, y))
        pg = fl.append_backward(loss, callback=error_clip_callback)
    return main, startup, h1, h2, loss, pg


def placement(block, var):
    """Index of the (single) error-clip op of var's gradient; checks it directly follows its producer."""
    g = fl.grad_var_name(var.name)
    clips = [i for i, op in enumerate(block.ops) if op.role == "error_clip" and op.input("X") == [g]]
    assert len(clips) == 1, f"{g}: {len(clips)} error-clip ops"
    k = clips[0]
    assert block.ops[k].type == "clip" and block.ops[k].output("Out") == [g]  # in place
    assert g in block.ops[k - 1].output_names and block.ops[k - 1].role == "backward"
    assert not any(g in op.input_names for op in block.ops[:k])  # nothing read the unclipped error
    assert any(g in op.input_names for op in block.ops[k + 1:])
    return k


@pytest.mark.parametrize("two_consumers", [False, True])
def test_error_clip_sits_right_after_the_op_completing_the_gradient(two_consumers):
    main, _, h1, h2, _, _ = build(two_consumers)
    block = main.global_block()
    k1, k2 = placement(block, h1), placement(block, h2)
    assert k2 < k1  # h2's error exists first in backward
    producer = block.ops[k1 - 1]
    assert producer.type == ("sum" if two_consumers else "mul_grad")  # clipped once, after the summation
    fl.verify(main)


def test_no_callback_no_error_clip():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4], dtype="float64")
        h = layers.fc(x, size=5, act="tanh")
        h.error_clip = ErrorClipByValue(max=C)
        fl.append_backward(layers.mean(layers.fc(h, size=1)))
    assert not [op for op in main.global_block().ops if op.role == "error_clip"]


def test_bad_error_clip_object_is_a_type_error():
    x = layers.data(name="x", shape=[4], dtype="float64")
    h = layers.fc(x, size=2, act="tanh")
    h.error_clip = 0.5
    with pytest.raises(TypeError, match="error_clip"):
        fl.append_backward(layers.mean(layers.fc(h, size=1)), callback=error_clip_callback)


def numpy_backward(x, y, W, two_consumers):
    """Manual float64 forward/backward of fc-tanh, fc-tanh, fc, mean squared error, errors of h1, h2 clipped."""
    (w1, b1), (w2, b2) = W["fc_0"], W["fc_1"]
    h1 = np.tanh(x @ w1 + b1)
    h2 = np.tanh(h1 @ w2 + b2)
    if two_consumers:
        w3a, w3b, b3 = W["fc_2"]
        pred = h1 @ w3a + h2 @ w3b + b3
    else:
        w3, b3 = W["fc_2"]
        pred = h2 @ w3 + b3
    n = pred.size
    dpred = 2 * (pred - y) / n
    grads = {}
    dh2 = dpred @ (w3b if two_consumers else w3).T
    raw = {"h2": dh2.copy()}
    dh2 = np.clip(dh2, -C / 2, C)
    dz2 = dh2 * (1 - h2 ** 2)
    dh1 = dz2 @ w2.T
    if two_consumers:
        dh1 = dh1 + dpred @ w3a.T
        grads["fc_2.w_0"], grads["fc_2.w_1"] = h1.T @ dpred, h2.T @ dpred
    else:
        grads["fc_2.w_0"] = h2.T @ dpred
    grads["fc_2.b_0"] = dpred.sum(0)
    raw["h1"] = dh1.copy()
    dh1 = np.clip(dh1, -C, C)
    dz1 = dh1 * (1 - h1 ** 2)
    grads["fc_1.w_0"], grads["fc_1.b_0"] = h1.T @ dz2, dz2.sum(0)
    grads["fc_0.w_0"], grads["fc_0.b_0"] = x.T @ dz1, dz1.sum(0)
    return np.mean((pred - y) ** 2), grads, raw


@pytest.mark.parametrize("two_consumers", [False, True])
def test_gradients_match_a_manual_numpy_backward_with_active_clip(two_consumers):
    main, startup, h1, h2, loss, pg = build(two_consumers)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 1)) * 5 + 3
    exe = fl.Executor()
    exe.run(startup)
    # non-zero biases, so the test sees them
    for p in main.all_parameters():
        if ".b_" in p.name:
            fl.global_scope().var(p.name).get_tensor().set(rng.standard_normal(p.shape))
    val = {p.name: fl.fetch_var(p.name) for p in main.all_parameters()}
    W = {"fc_0": (val["fc_0.w_0"], val["fc_0.b_0"]), "fc_1": (val["fc_1.w_0"], val["fc_1.b_0"])}
    W["fc_2"] = ((val["fc_2.w_0"], val["fc_2.w_1"], val["fc_2.b_0"]) if two_consumers
                 else (val["fc_2.w_0"], val["fc_2.b_0"]))
    want_loss, want, raw = numpy_backward(x, y, W, two_consumers)
    assert np.abs(raw["h1"]).max() > C and np.abs(raw["h2"]).max() > C  # the clips are active
    got = exe.run(main, feed={"x": x, "y": y}, fetch_list=[loss] + [g for _, g in pg])
    np.testing.assert_allclose(got[0], [want_loss], rtol=1e-12)
    assert sorted(p.name for p, _ in pg) == sorted(want)
    for (p, _), g in zip(pg, got[1:]):
        np.testing.assert_allclose(g, want[p.name], rtol=1e-10, atol=1e-14, err_msg=p.name)
