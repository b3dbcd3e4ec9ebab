"""Learning-rate schedules: rates per step against the formulas written here, the counter in the scope."""
import math

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _rates(make, steps, opt=None):
    """The schedule's value at each of `steps` runs of a tiny training program."""
    x = layers.data("x", [2])
    loss = layers.mean(layers.fc(x, 1))
    lr = make()
    (opt or fl.optimizer.SGD)(lr).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    return [float(exe.run(feed={"x": np.ones((1, 2), "float32")}, fetch_list=[lr])[0][0]) for _ in range(steps)]


def _close(have, want):
    np.testing.assert_allclose(have, want, rtol=1e-6)


def test_piecewise_decay():
    _close(_rates(lambda: layers.piecewise_decay([2, 5], [1.0, 0.5, 0.1]), 7),
           [1.0 if s < 2 else 0.5 if s < 5 else 0.1 for s in range(7)])


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay(staircase):
    want = [0.1 * 0.5 ** (math.floor(s / 3) if staircase else s / 3) for s in range(7)]
    _close(_rates(lambda: layers.exponential_decay(0.1, 3, 0.5, staircase), 7), want)


def test_cosine_decay():
    want = [0.2 * 0.5 * (math.cos(math.floor(s / 2) * math.pi / 3) + 1) for s in range(7)]
    _close(_rates(lambda: layers.cosine_decay(0.2, 2, 3), 7), want)


def test_noam_decay_starts_at_counter_plus_one():
    want = [64 ** -0.5 * min((s + 1) ** -0.5, (s + 1) * 4 ** -1.5) for s in range(8)]
    rates = _rates(lambda: layers.noam_decay(64, 4), 8)
    _close(rates, want)
    assert rates[0] > 0


def test_linear_warmup_then_a_decay_share_one_counter():
    def make():
        return layers.linear_lr_warmup(layers.exponential_decay(0.1, 1, 0.9), 3, 0.0, 0.1)

    want = [0.1 * s / 3 if s < 3 else 0.1 * 0.9 ** s for s in range(6)]
    _close(_rates(make, 6), want)


def test_the_counter_lives_in_the_scope_and_resumes_from_a_checkpoint(tmp_path):
    x = layers.data("x", [2])
    loss = layers.mean(layers.fc(x, 1))
    lr = layers.exponential_decay(1.0, 1, 0.5)
    fl.optimizer.SGD(lr).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": np.ones((1, 2), "float32")}
    for _ in range(3):
        exe.run(feed=feed, fetch_list=[lr])
    fl.io.save_persistables(str(tmp_path / "ckpt"))
    with fl.scope_guard(fl.Scope()):
        fl.Executor().run(fl.default_startup_program())
        fl.io.load_persistables(str(tmp_path / "ckpt"))
        (rate,) = fl.Executor().run(feed=feed, fetch_list=[lr])
    assert float(rate[0]) == 0.5 ** 3
    assert int(fl.fetch_var(layers.learning_rate_scheduler.COUNTER)[0]) == 3


def test_schedules_drive_the_update():
    """SGD with piecewise rates moves the bias by exactly lr * grad each step (grad of mean(fc) wrt b is 1)."""
    x = layers.data("x", [2])
    loss = layers.mean(layers.fc(x, 1))
    fl.optimizer.SGD(layers.piecewise_decay([1], [0.5, 0.25])).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    b = [float(fl.fetch_var("fc_0.b_0")[0])]
    for _ in range(3):
        exe.run(feed={"x": np.ones((1, 2), "float32")})
        b.append(float(fl.fetch_var("fc_0.b_0")[0]))
    _close(np.diff(b), [-0.5, -0.25, -0.25])


@pytest.mark.parametrize("make, match", [
    (lambda: layers.piecewise_decay([2], [1.0]), "len\\(values\\)"),
    (lambda: layers.piecewise_decay([3, 2], [1.0, 0.5, 0.1]), "strictly increasing"),
    (lambda: layers.exponential_decay(0.1, 0, 0.5), "decay_steps"),
    (lambda: layers.cosine_decay(0.1, 10, 0), "epochs"),
    (lambda: layers.noam_decay(0, 10), "d_model"),
    (lambda: layers.linear_lr_warmup(0.1, -1, 0.0, 0.1), "warmup_steps"),
    (lambda: layers.exponential_decay(float("nan"), 1, 0.5), "learning_rate"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_increment_op_shape_and_errors():
    block = fl.default_main_program().global_block()
    c = block.create_var(name="c", shape=[1], dtype="int64", persistable=True)
    f = block.create_var(name="f", shape=[2], dtype="float32")
    block.append_op("increment", {"X": c}, {"Out": "c2"})
    assert block.var("c2").shape == (1,) and block.var("c2").dtype == np.int64
    with pytest.raises(ValueError, match=r"exponential_decay.*Step.*'f'"):
        block.append_op("exponential_decay", {"Step": f}, {"Out": "r"},
                        {"learning_rate": 0.1, "decay_steps": 1, "decay_rate": 0.5})
