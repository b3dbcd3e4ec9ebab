"""Executor: feeds, fetches, plan caching and pruning, scope access."""
import re

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _net(dtype="float32"):
    x = layers.data(name="x", shape=[3], dtype=dtype)
    h = layers.fc(x, size=4, act="tanh", bias_attr=False)
    y = layers.scale(h, scale=2.0)
    return x, h, y


def _np_net(xs):
    w = fl.fetch_var("fc_0.w_0")
    return 2.0 * np.tanh(xs @ w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_run_startup_then_main_matches_numpy(dtype):
    x, h, y = _net(dtype)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.random.default_rng(0).standard_normal((5, 3)).astype(dtype)
    out, = exe.run(feed={"x": xs}, fetch_list=[y])
    assert out.dtype == dtype and out.shape == (5, 4)
    np.testing.assert_allclose(out, _np_net(xs), rtol=1e-6 if dtype == "float32" else 1e-14)


def test_fetch_by_name_and_several_targets():
    x, h, y = _net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.ones((2, 3), np.float32)
    hv, yv = exe.run(feed={"x": xs}, fetch_list=[h.name, y])
    np.testing.assert_allclose(yv, 2 * hv, rtol=1e-6)


def test_scalar_and_non_contiguous_feeds_keep_their_shape():
    main = fl.Program()
    block = main.global_block()
    s = block.create_var(name="s", shape=(), dtype="float64", is_data=True)
    m = block.create_var(name="m", shape=(2, 2), dtype="float64", is_data=True)
    block.append_op("scale", {"X": s}, {"Out": "s2"}, {"scale": 2.0})
    block.append_op("scale", {"X": m}, {"Out": "m2"}, {"scale": 2.0})
    wide = np.arange(8.0).reshape(2, 4)
    s2, m2 = fl.Executor().run(main, feed={"s": 3.0, "m": wide[:, ::2]}, fetch_list=["s2", "m2"], scope=fl.Scope())
    assert s2.shape == () and s2 == 6.0
    np.testing.assert_array_equal(m2, 2 * wide[:, ::2])


def test_feed_errors_name_the_variable_and_leave_scope_untouched():
    x, h, y = _net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    scope = fl.global_scope()
    before = {n: a.copy() for n, a in scope.arrays.items()}
    with pytest.raises(TypeError, match="'x'.*float64.*float32"):
        exe.run(feed={"x": np.ones((2, 3))}, fetch_list=[y])  # float64 is never cast silently
    with pytest.raises(ValueError, match=r"'x'.*\[2, 5\]"):
        exe.run(feed={"x": np.ones((2, 5), np.float32)}, fetch_list=[y])
    with pytest.raises(ValueError, match=r"'x'.*\[3\]"):
        exe.run(feed={"x": np.ones((3,), np.float32)}, fetch_list=[y])
    with pytest.raises(ValueError, match="'x' must be fed"):
        exe.run(feed={}, fetch_list=[y])
    with pytest.raises(ValueError, match="'nope'"):
        exe.run(feed={"x": np.ones((2, 3), np.float32), "nope": np.ones(1)}, fetch_list=[y])
    assert set(scope.arrays) == set(before)
    for n, a in before.items():
        np.testing.assert_array_equal(scope.arrays[n], a)


def test_missing_startup_is_a_clear_error():
    x, h, y = _net()
    with pytest.raises(ValueError, match="startup"):
        fl.Executor().run(feed={"x": np.ones((2, 3), np.float32)}, fetch_list=[y])


def test_plan_is_cached_and_recompiled_when_the_program_changes():
    x, h, y = _net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.ones((2, 3), np.float32)
    a, = exe.run(feed={"x": xs}, fetch_list=[y])
    n_plans = len(exe._plans)
    exe.run(feed={"x": xs}, fetch_list=[y])
    assert len(exe._plans) == n_plans  # served from the cache
    z = layers.scale(y, scale=3.0)  # the program changes: the old plan must not be served
    b, = exe.run(feed={"x": xs}, fetch_list=[z])
    np.testing.assert_allclose(b, 3 * a, rtol=1e-6)
    # changing an op's attribute in place also changes the program version through the block
    fl.default_main_program().global_block().ops[-1].attrs["scale"] = 5.0
    fl.default_main_program().global_block()._changed()
    c, = exe.run(feed={"x": xs}, fetch_list=[z])
    np.testing.assert_allclose(c, 5 * a, rtol=1e-6)


def test_a_new_batch_size_gets_its_own_plan():
    x, h, y = _net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    for n in (1, 4, 7):
        out, = exe.run(feed={"x": np.ones((n, 3), np.float32)}, fetch_list=[y])
        assert out.shape == (n, 4)


def test_only_the_ops_the_fetch_needs_run():
    x = layers.data(name="x", shape=[3], dtype="float32")
    a = layers.scale(x, scale=2.0)
    layers.tanh(x)  # not needed for `a`
    exe = fl.Executor()
    exe.run(feed={"x": np.ones((1, 3), np.float32)}, fetch_list=[a])
    plan = list(exe._plans.values())[-1]
    assert [op.type for op in plan.ops] == ["scale"]


def test_fetched_persistable_is_a_copy():
    x, h, y = _net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    w, = exe.run(feed={"x": np.ones((1, 3), np.float32)}, fetch_list=["fc_0.w_0"])
    w[...] = 0
    assert np.abs(fl.fetch_var("fc_0.w_0")).sum() > 0


def test_scope_tensor_get_and_set_checks_shape_and_dtype():
    _net()
    fl.Executor().run(fl.default_startup_program())
    t = fl.global_scope().find_var("fc_0.w_0").get_tensor()
    new = np.arange(12, dtype=np.float32).reshape(3, 4)
    t.set(new, fl.CPUPlace())
    np.testing.assert_array_equal(np.array(t), new)
    np.testing.assert_array_equal(fl.fetch_var("fc_0.w_0"), new)
    with pytest.raises(ValueError, match="fc_0.w_0.*shape"):
        t.set(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="fc_0.w_0.*dtype"):
        t.set(np.zeros((3, 4), np.float64))
    assert fl.global_scope().find_var("nothing") is None
    assert fl.global_scope().var("fresh").get_tensor() is not None


def test_kernel_failure_names_the_op():
    from fluidlite.registry import OPS, NO_GRAD, defop

    def boom(x):
        raise FloatingPointError("kernel exploded")

    defop("test_boom", inputs=("X",), infer=lambda ctx: {"Out": (ctx.shape("X"), ctx.dtype("X"))},
          kernel=boom, grad=NO_GRAD)
    try:
        x = layers.data(name="x", shape=[3], dtype="float32")
        fl.default_main_program().global_block().append_op("test_boom", {"X": x}, {"Out": "o"})
        with pytest.raises(FloatingPointError, match="test_boom.*kernel exploded"):
            fl.Executor().run(feed={"x": np.ones((2, 3), np.float32)}, fetch_list=["o"])
    finally:
        OPS.pop("test_boom")


def test_scope_guard_and_separate_scopes():
    _net()
    exe = fl.Executor()
    s1, s2 = fl.Scope(), fl.Scope()
    exe.run(fl.default_startup_program(), scope=s1)
    with fl.scope_guard(s2):
        exe.run(fl.default_startup_program())
        assert fl.global_scope() is s2
    assert "fc_0.w_0" in s1.arrays and "fc_0.w_0" in s2.arrays


def test_clone_for_test_copies_and_is_independent():
    x, h, y = _net()
    main = fl.default_main_program()
    test_prog = main.clone(for_test=True)
    assert str(test_prog) == str(main)
    layers.scale(y, scale=3.0)
    assert len(test_prog.global_block().ops) == len(main.global_block().ops) - 1
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.ones((2, 3), np.float32)
    a, = exe.run(main, feed={"x": xs}, fetch_list=[y])
    b, = exe.run(test_prog, feed={"x": xs}, fetch_list=[y.name])
    np.testing.assert_array_equal(a, b)


def test_plan_source_frees_values_after_last_use():
    x, h, y = _net()
    exe = fl.Executor(compile_options=fl.compiler.CompileOptions(disabled={"fuse"}))  # one line per op
    exe.run(fl.default_startup_program())
    exe.run(feed={"x": np.ones((1, 3), np.float32)}, fetch_list=[y])
    src = list(exe._plans.values())[-1].source
    assert "del " in src and src.count("K") >= 3


def test_steady_state_steps_do_not_fault_in_fresh_pages():
    import resource

    from fluidlite._memory import tune_malloc

    if not tune_malloc():
        pytest.skip("not glibc: malloc thresholds cannot be tuned here")
    x = layers.data(name="x", shape=[512], dtype="float32")
    h = x
    for _ in range(4):
        h = layers.fc(h, size=512, act="tanh")  # 1 MiB activations, 1 MiB weights
    loss = layers.mean(h)
    fl.append_backward(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": np.ones((512, 512), np.float32)}
    for _ in range(3):
        exe.run(feed=feed, fetch_list=[loss])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        exe.run(feed=feed, fetch_list=[loss])
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    assert faults < 100, f"{faults:.0f} page faults per step: freed outputs are not being reused"


def _shared_weight_net(n_uses=4):
    x = layers.data(name="x", shape=[3], dtype="float64")
    attr = fl.ParamAttr(name="w", initializer=fl.initializer.Normal(0.0, 1.0, seed=3))
    outs = [layers.fc(layers.scale(x, scale=float(k + 1)), size=3, param_attr=attr, bias_attr=False)
            for k in range(n_uses)]
    loss = layers.mean(layers.tanh(layers.sums(outs)))
    (_, grad), = fl.append_backward(loss)
    return loss, grad


def _numpy_shared_weight_grad(xs, w, n_uses=4):
    s = sum((k + 1) for k in range(n_uses)) * xs  # sum_k (k+1) x @ w = (sum_k (k+1)) x @ w
    t = np.tanh(s @ w)
    dz = (1 - t ** 2) / t.size
    return sum(((k + 1) * xs).T @ dz for k in range(n_uses))


def test_sum_of_parts_is_folded_as_they_are_made_and_stays_exact():
    from fluidlite.compiler import CompileOptions

    loss, grad = _shared_weight_net()
    exe = fl.Executor(compile_options=CompileOptions(disabled={"batch_grad"}))  # else w@GRAD is one product
    exe.run(fl.default_startup_program())
    xs = np.random.default_rng(1).standard_normal((5, 3))
    g, = exe.run(feed={"x": xs}, fetch_list=[grad])
    np.testing.assert_allclose(g, _numpy_shared_weight_grad(xs, fl.fetch_var("w")), rtol=1e-10, atol=1e-14)
    src = list(exe._plans.values())[-1].source
    # both 4-part sums (forward `sums`, backward w@GRAD) became running accumulations
    assert len(set(re.findall(r"acc\d+", src))) == 2 and " = F" in src


def test_fetching_a_part_keeps_the_plain_sum():
    loss, grad = _shared_weight_net()
    part = next(n for n in fl.default_main_program().global_block().vars if "@PART" in n)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.random.default_rng(1).standard_normal((5, 3))
    g, p = exe.run(feed={"x": xs}, fetch_list=[grad, part])
    np.testing.assert_allclose(g, _numpy_shared_weight_grad(xs, fl.fetch_var("w")), rtol=1e-10, atol=1e-14)
    src = list(exe._plans.values())[-1].source
    assert len(set(re.findall(r"acc\d+", src))) == 1  # only the forward sum: a fetched part stays whole
    assert p.shape == (3, 3)
