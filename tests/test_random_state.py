"""Random streams live in the scope: same program + seed + scope -> same values, whatever else ran."""
import threading

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import io, layers
from fluidlite.random_state import STATE_SUFFIX


def _dropout_net(seed=5, noise=False):
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[64])
        h = layers.fc(x, size=32, act="relu")
        d = layers.dropout(h, 0.5, seed=seed)
        mask = main.global_block().ops[-1].output("Mask")[0]
        outs = [mask]
        if noise:
            outs.append(layers.gaussian_random([4, 3], seed=seed).name)
        loss = layers.mean(d)
        fl.optimizer.SGD(0.1).minimize(loss)
    return main, startup, outs


X = np.random.default_rng(1).standard_normal((8, 64)).astype("float32")


def _steps(exe, main, scope, fetch, n):
    return [exe.run(main, feed={"x": X}, fetch_list=fetch, scope=scope) for _ in range(n)]


def _fresh_scope(exe, startup):
    scope = fl.Scope()
    exe.run(startup, scope=scope)
    return scope


def _same(a, b):
    return all(np.array_equal(u, v) for s, t in zip(a, b) for u, v in zip(s, t)) and len(a) == len(b)


def test_the_stream_is_a_persistable_variable_wired_into_the_op():
    main, _, outs = _dropout_net(noise=True)
    states = [v for v in main.list_vars() if v.name.endswith(STATE_SUFFIX)]
    assert len(states) == 2 and all(v.persistable and v.dtype == np.int64 and v.shape == (2,) for v in states)
    ops = [op for op in main.global_block().ops if op.type in ("dropout", "gaussian_random")]
    assert [op.input("State") for op in ops] == [op.output("StateOut") for op in ops]
    assert sorted(op.attrs["stream"] for op in ops) == [0, 1]
    fl.verify(main)


def test_two_scopes_on_one_executor_get_the_masks_they_get_alone():
    main, startup, outs = _dropout_net(noise=True)
    exe = fl.Executor()
    alone = _steps(exe, main, _fresh_scope(exe, startup), outs, 4)
    a, b = _fresh_scope(exe, startup), _fresh_scope(exe, startup)
    ra, rb = [], []
    for _ in range(4):  # interleaved
        ra += _steps(exe, main, a, outs, 1)
        rb += _steps(exe, main, b, outs, 1)
    assert _same(ra, alone) and _same(rb, alone)
    assert not np.array_equal(alone[0][0], alone[1][0]) and not np.array_equal(alone[0][1], alone[1][1])


def test_threads_sharing_an_executor_get_the_masks_they_get_alone():
    main, startup, outs = _dropout_net(noise=True)
    exe = fl.Executor()
    alone = _steps(exe, main, _fresh_scope(exe, startup), outs, 5)
    scopes = [_fresh_scope(exe, startup) for _ in range(3)]
    results = [None] * 3

    def work(i):
        results[i] = _steps(exe, main, scopes[i], outs, 5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(_same(r, alone) for r in results)


def test_rebuilt_or_evicted_plans_continue_the_stream():
    main, startup, outs = _dropout_net(noise=True)
    exe = fl.Executor()
    reference = _steps(exe, main, _fresh_scope(exe, startup), outs, 4)
    scope = _fresh_scope(exe, startup)
    got = []
    for _ in range(4):
        got += _steps(fl.Executor(), main, scope, outs, 1)  # a new Executor (a new plan) every step
        exe.close()
    assert _same(got, reference)


def test_a_checkpoint_resumes_the_stream(tmp_path):
    main, startup, outs = _dropout_net(noise=True)
    exe = fl.Executor()
    scope = _fresh_scope(exe, startup)
    _steps(exe, main, scope, outs, 3)
    io.save_persistables(tmp_path / "ck", main, scope)
    after = _steps(exe, main, scope, outs, 2)
    resumed = fl.Scope()
    io.load_persistables(tmp_path / "ck", main, resumed)
    assert _same(_steps(fl.Executor(), main, resumed, outs, 2), after)


def test_a_checkpoint_saved_before_the_first_draw_still_saves_and_loads(tmp_path):
    main, startup, outs = _dropout_net()
    exe = fl.Executor()
    scope = _fresh_scope(exe, startup)
    io.save_persistables(tmp_path / "ck", main, scope)  # the stream has no value yet
    loaded = fl.Scope()
    io.load_persistables(tmp_path / "ck", main, loaded)
    assert _same(_steps(exe, main, loaded, outs, 2), _steps(exe, main, _fresh_scope(exe, startup), outs, 2))


def test_gradient_noise_does_not_repeat_and_is_reproducible():
    main, startup, outs = _dropout_net(seed=9, noise=True)
    exe = fl.Executor()
    first = _steps(exe, main, _fresh_scope(exe, startup), outs[1:], 3)
    again = _steps(exe, main, _fresh_scope(exe, startup), outs[1:], 3)
    assert _same(first, again)
    assert not np.array_equal(first[0][0], first[1][0]) and not np.array_equal(first[1][0], first[2][0])


def test_seed_zero_differs_between_scopes_but_not_within_one_run():
    main, startup, outs = _dropout_net(seed=0)
    exe = fl.Executor()
    a = _steps(exe, main, _fresh_scope(exe, startup), outs, 1)
    b = _steps(exe, main, _fresh_scope(exe, startup), outs, 1)
    assert not _same(a, b)


def test_initializers_stay_fixed_by_their_seed():
    main, startup, _ = _dropout_net()
    assert not any(op.input("State") for op in startup.global_block().ops)
    exe = fl.Executor()
    s1, s2 = _fresh_scope(exe, startup), fl.Scope()
    exe.run(startup, scope=s2)
    exe.run(startup, scope=s2)  # running the startup program again re-initialises identically
    for p in main.all_parameters():
        np.testing.assert_array_equal(s1.get_array(p.name), s2.get_array(p.name))


def test_a_batch_dimension_needs_a_reference_input():
    x = layers.data(name="x", shape=[8])
    with pytest.raises(ValueError, match="batch_size_like"):
        layers.gaussian_random([-1, 16])
    noise = layers.gaussian_random_batch_size_like(x, [-1, 16], mean=1.0, std=2.0, seed=3)
    assert noise.shape == (-1, 16)
    with pytest.raises(ValueError, match="out of range"):
        layers.gaussian_random_batch_size_like(x, [-1, 16], input_dim_idx=2)
    exe = fl.Executor()
    for batch in (3, 700):
        out, = exe.run(feed={"x": np.ones((batch, 8), "float32")}, fetch_list=[noise])
        assert out.shape == (batch, 16) and out.dtype == np.float32
    assert abs(out.mean() - 1.0) < 0.05 and abs(out.std() - 2.0) < 0.05  # 11200 draws
    again, = exe.run(feed={"x": np.ones((700, 8), "float32")}, fetch_list=[noise])
    assert not np.array_equal(out, again)


def test_a_program_with_streams_round_trips(tmp_path):
    main, startup, outs = _dropout_net(noise=True)
    io.save_program(main, tmp_path / "p.json")
    loaded = io.load_program(tmp_path / "p.json")
    assert str(loaded) == str(main)
    exe = fl.Executor()
    assert _same(_steps(exe, loaded, _fresh_scope(exe, startup), outs, 2),
                 _steps(exe, main, _fresh_scope(exe, startup), outs, 2))
