"""DP-SGD's noise, its random state, the privacy accountant and the errors of GradientClipPerExample."""
import dp_accounting
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.per_example import STATE_NAME

SIGMA, C, B = 1.3, 0.5, 4


def _mlp(noise=SIGMA, seed=7, clip=None):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [3])
        y = layers.data("y", [1], dtype="int64")
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(layers.fc(x, 4, act="tanh"), 2), y))
        clip = clip or fl.clip.GradientClipPerExample(C, noise_multiplier=noise, seed=seed)
        _, pairs = fl.optimizer.SGD(0.0).minimize(loss, grad_clip=clip)
    return main, startup, pairs


def _feed():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((B, 3)).astype("float32"), "y": rng.integers(0, 2, (B, 1))}


def _noise_samples(steps, seed=7, scope=None):
    """(noise of every parameter at each step, the pre-noise clipped sums' names), lr 0 so nothing moves."""
    main, startup, pairs = _mlp(seed=seed)
    exe, scope = fl.Executor(), scope or fl.Scope()
    exe.run(startup, scope=scope)
    clean = [g.op.input("X")[0] for _, g in pairs]
    fetch = [g for _, g in pairs] + clean
    rows = []
    for _ in range(steps):
        out = exe.run(main, feed=_feed(), fetch_list=fetch, scope=scope)
        rows.append(np.concatenate([(n - c).ravel() for n, c in zip(out[:len(pairs)], out[len(pairs):])]))
    return np.array(rows, np.float64), main, scope


def test_noise_is_gaussian_with_the_dp_sgd_scale_fresh_each_step():
    noise, main, scope = _noise_samples(300)
    std = SIGMA * C / B  # N(0, (sigma C)^2) added to the clipped sum, then divided by the batch size
    z = noise / std
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 0.03
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.02
    steps = np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]  # consecutive steps are independent
    params = np.corrcoef(z[:, 0], z[:, -1])[0, 1]  # and so are parameters
    assert abs(steps) < 0.05 and abs(params) < 0.2
    state = fl.fetch_var(STATE_NAME, scope)
    assert state.tolist() == [7, 300]  # the stream's (key, counter) lives in the scope and advanced each run
    assert str(main).count("dp_gaussian_noise") >= 4  # one op per parameter, visible in the listing


def test_noise_repeats_with_its_seed_and_resumes_from_the_scope():
    a, _, _ = _noise_samples(3, seed=11)
    b, _, scope = _noise_samples(2, seed=11)
    np.testing.assert_allclose(a[:2], b, atol=1e-6)  # float32 rounding of (x + n) - x
    c, _, _ = _noise_samples(1, seed=12)
    assert not np.allclose(a[0], c[0])
    # continuing in the same scope (the state saved with the persistables) gives step 3 of the first run
    main, startup, pairs = _mlp(seed=11)
    out = fl.Executor().run(main, feed=_feed(), fetch_list=[g for _, g in pairs] + [g.op.input("X")[0] for _, g in pairs],
                            scope=scope)
    resumed = np.concatenate([(n - c).ravel() for n, c in zip(out[:4], out[4:])])
    np.testing.assert_allclose(resumed, a[2], atol=1e-6)


def test_seed_none_draws_a_key_per_startup_and_zero_noise_adds_no_op():
    keys = []
    for _ in range(2):
        main, startup, _ = _mlp(seed=None)
        scope = fl.Scope()
        fl.Executor().run(startup, scope=scope)
        keys.append(int(fl.fetch_var(STATE_NAME, scope)[0]))
    assert keys[0] != keys[1]
    main, _, _ = _mlp(noise=0.0)
    assert "dp_gaussian_noise" not in str(main) and "dp_clip_norm" in str(main)


def _gru_program():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [3, -1, 2], append_batch_size=False)
        y = layers.data("y", [1], dtype="int64")
        rnn = layers.StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(x)
            h_prev = rnn.memory(shape=[-1, 4], batch_ref=x_t)
            h, _, _ = layers.gru_unit(layers.fc(x_t, 12), h_prev, 12)
            rnn.update_memory(h_prev, h)
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(rnn.step_var(h), 2), y))
    return main, startup, loss


def test_an_op_without_a_per_example_rule_is_named_at_minimize():
    main, startup, loss = _gru_program()
    n_ops = len(main.global_block().ops)
    with fl.program_guard(main, startup), pytest.raises(ValueError, match=r"op 'gru_unit'.*no per-example norm rule"):
        fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))
    assert len(main.global_block().ops) == n_ops  # nothing was appended


def test_an_op_mixing_examples_is_refused():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [3])
        h = layers.fc(x, 4)
        centred = layers.elementwise_sub(h, layers.reduce_mean(h, dim=0, keep_dim=True))  # batch statistics
        loss = layers.mean(layers.square_error_cost(centred, layers.data("y", [4])))
        with pytest.raises(ValueError, match="op 'reduce_mean'.*batch dimension"):
            fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))


@pytest.mark.parametrize("kwargs,match", [
    ({"l2_norm_clip": 0.0}, "l2_norm_clip must be >"),
    ({"l2_norm_clip": -1.0}, "l2_norm_clip must be >"),
    ({"l2_norm_clip": float("nan")}, "finite"),
    ({"l2_norm_clip": 1.0, "noise_multiplier": -0.1}, "noise_multiplier must be >="),
    ({"l2_norm_clip": 1.0, "seed": -3}, "seed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fl.clip.GradientClipPerExample(**kwargs)


def test_a_loss_that_is_not_a_mean_or_sum_of_per_example_terms():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [3])
        loss = layers.scale(layers.mean(layers.fc(x, 1)), 2.0)
        with pytest.raises(ValueError, match="must be mean"):
            fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))


def test_no_other_clip_combines_with_it():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [3])
        h = layers.fc(x, 2, param_attr=fl.ParamAttr(gradient_clip=fl.clip.GradientClipByNorm(1.0)))
        loss = layers.mean(h)
        with pytest.raises(ValueError, match="cannot be combined"):
            fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        loss = layers.mean(layers.fc(layers.data("x", [3]), 2))
        fl.clip.set_gradient_clip(fl.clip.GradientClipPerExample(1.0))
        with pytest.raises(ValueError, match="only as minimize"):
            fl.optimizer.SGD(0.1).minimize(loss)


def test_epsilon_agrees_with_the_accountant():
    q, sigma, steps, delta = 256 / 60000, 1.1, 60 * 60000 // 256, 1e-5
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    eps = fl.privacy.epsilon(sigma, q, steps, delta)
    assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-12)
    assert 2.0 < eps < 4.0  # Abadi et al.'s MNIST setting is a few epsilon
    pld = fl.privacy.epsilon(sigma, q, steps, delta, accountant="pld")
    assert pld <= eps * 1.01  # PLD accounting is tighter than RDP
    assert fl.privacy.epsilon(sigma, q, steps // 2, delta) < eps < fl.privacy.epsilon(sigma / 2, q, steps, delta)
    assert fl.privacy.epsilon(sigma, q, 0, delta) == 0.0  # no step, no privacy spent
    for bad in [(0.0, q, steps, delta), (sigma, 0.0, steps, delta), (sigma, q, -1, delta), (sigma, q, steps, 1.0)]:
        with pytest.raises(ValueError):
            fl.privacy.epsilon(*bad)


def test_the_clip_object_round_trips_save_load(tmp_path):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        layers.mean(layers.fc(layers.data("x", [3]), 2))
        clip = fl.clip.GradientClipPerExample(0.7, noise_multiplier=1.25, seed=5)
        fl.clip.set_gradient_clip(clip)
    fl.io.save_program(main, tmp_path / "p.json")
    got = fl.io.load_program(tmp_path / "p.json").global_block().var("fc_0.w_0").gradient_clip_attr
    assert type(got) is fl.privacy.GradientClipPerExample and got._config() == clip._config()
