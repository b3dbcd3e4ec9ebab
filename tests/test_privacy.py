"""DP-SGD's noise, its random state, the privacy accountant and the errors of GradientClipPerExample."""
import dp_accounting
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite import io
from fluidlite.random_state import STATE_SUFFIX

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
    ops = [op for op in main.global_block().ops if op.type == "dp_gaussian_noise"]
    assert len(ops) == 4  # one op per parameter, visible in the listing
    for op in ops:  # each draws from a random stream (fluidlite.random_state) kept in the scope
        state = op.input("State")[0]
        assert state.endswith(STATE_SUFFIX) and op.output("StateOut") == [state]
        assert main.global_block().var(state).persistable
        assert fl.fetch_var(state, scope)[1] == 300  # (key, counter): advanced once per run
    assert len({op.attrs["stream"] for op in ops}) == 4 and all(op.attrs["seed"] == 7 for op in ops)


def _noise_states(main):
    return [op.input("State")[0] for op in main.global_block().ops if op.type == "dp_gaussian_noise"]


def _noise_of(exe, main, pairs, scope):
    out = exe.run(main, feed=_feed(), fetch_list=[g for _, g in pairs] + [g.op.input("X")[0] for _, g in pairs],
                  scope=scope)
    return np.concatenate([(n - c).ravel() for n, c in zip(out[:len(pairs)], out[len(pairs):])])


@pytest.mark.parametrize("seed", [None, 3])
def test_a_checkpoint_resumes_the_noise_exactly(tmp_path, seed):
    main, startup, pairs = _mlp(seed=seed)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    for _ in range(3):
        _noise_of(exe, main, pairs, scope)
    io.save_persistables(tmp_path / "ck", main, scope)
    uninterrupted = [_noise_of(exe, main, pairs, scope) for _ in range(2)]
    fresh = fl.Scope()
    io.load_persistables(tmp_path / "ck", main, fresh)
    resumed = [_noise_of(fl.Executor(), main, pairs, fresh) for _ in range(2)]
    np.testing.assert_array_equal(resumed, uninterrupted)
    assert not np.allclose(uninterrupted[0], uninterrupted[1])
    other = fl.Scope()  # a new startup run: a fresh stream (a new key without a seed, counter 0 with one)
    exe.run(startup, scope=other)
    assert not np.allclose(_noise_of(exe, main, pairs, other), uninterrupted[0])


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
        keys.append(int(fl.fetch_var(_noise_states(main)[0], scope)[0]))
    assert keys[0] != keys[1]
    main, _, _ = _mlp(noise=0.0)
    assert "dp_gaussian_noise" not in str(main) and "dp_clip_norm" in str(main)


def test_an_op_without_a_per_example_rule_is_named_at_minimize():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        h = layers.fc(layers.data("x", [3]), 4)
        h = layers.elementwise_mul(h, layers.create_parameter([4], "float32"))  # a per-feature gain: no rule
        loss = layers.mean(layers.softmax_with_cross_entropy(h, layers.data("y", [1], dtype="int64")))
    n_ops, n_vars = len(main.global_block().ops), len(main.global_block().vars)
    with fl.program_guard(main, startup), pytest.raises(ValueError, match=r"op 'elementwise_mul'.*no per-example norm rule"):
        fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))
    assert len(main.global_block().ops) == n_ops and len(main.global_block().vars) == n_vars  # nothing was appended


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
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        loss = layers.mean(layers.fc(layers.data("x", [3]), 2))
        fl.clip.set_gradient_clip(fl.clip.GradientClipByGlobalNorm(1.0))  # every parameter has a clip
        with pytest.raises(ValueError, match="cannot be combined"):
            fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        h = layers.fc(layers.data("x", [3]), 2, param_attr=fl.ParamAttr(need_clip=False))
        loss = layers.mean(h)
        n_ops = len(main.global_block().ops)
        with pytest.raises(ValueError, match="need_clip=False"):
            fl.optimizer.SGD(0.1).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(1.0))
        assert len(main.global_block().ops) == n_ops


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


def test_the_noise_generator_is_gaussian_in_the_tails_and_independent_of_threads():
    """The counter-based ziggurat against the normal distribution (scipy's, an independent reference)."""
    import numba
    from scipy import stats

    from fluidlite.ops.privacy_ops import _ZIGGURAT
    from fluidlite.kernels import privacy as K

    z = np.zeros(1 << 20)
    K.add_gaussian(z, np.uint64(12345), 1.0, *_ZIGGURAT)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    for t in (2.0, 3.0, 3.5):  # beyond the ziggurat's base strip (3.44) comes from the tail algorithm
        expected = 2 * stats.norm.sf(t) * z.size
        assert abs((np.abs(z) > t).sum() - expected) < 5 * np.sqrt(expected), t
    far = np.abs(z[np.abs(z) > 3.0])  # the conditional tail law P(|z| > s | |z| > 3)
    assert stats.kstest(far, lambda s: 1 - stats.norm.sf(s) / stats.norm.sf(3.0)).pvalue > 1e-3
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(z.size)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = K.add_gaussian(np.zeros(300_001, np.float32), np.uint64(7), 0.5, *_ZIGGURAT)
    finally:
        numba.set_num_threads(old)
    again = K.add_gaussian(np.zeros(300_001, np.float32), np.uint64(7), 0.5, *_ZIGGURAT)
    np.testing.assert_array_equal(one, again)
    assert one.dtype == np.float32 and abs(one.std() - 0.5) < 0.005
    other = K.add_gaussian(np.zeros(300_001, np.float32), np.uint64(8), 0.5, *_ZIGGURAT)
    assert abs(np.corrcoef(one, other)[0, 1]) < 0.01  # another key: another stream
