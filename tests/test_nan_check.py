"""Executor(check_nan_inf=True): the first op that writes NaN/Inf raises NanInfError, and the scope is untouched."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _divide_program(dtype):
    """y = fc(x) / z, then more ops: a zero in the fed z makes the division the first Inf."""
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data(name="x", shape=[3], dtype=dtype)
        z = layers.data(name="z", shape=[2], dtype=dtype)
        h = layers.fc(x, size=2, bias_attr=False)
        q = layers.elementwise_div(h, z)
        r = layers.scale(q, scale=0.0)  # inf * 0 = NaN: a later op that also writes a non-finite value
        loss = layers.mean(layers.tanh(r))
    return main, startup, h, q, loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_first_op_in_execution_order_is_named(dtype):
    main, startup, h, q, loss = _divide_program(dtype)
    exe, scope = fl.Executor(check_nan_inf=True), fl.Scope()
    exe.run(startup, scope=scope)
    xs = np.ones((4, 3), dtype)
    zs = np.ones((4, 2), dtype)
    zs[1, 0] = 0.0
    with pytest.raises(fl.NanInfError) as info:
        exe.run(main, feed={"x": xs, "z": zs}, fetch_list=[loss], scope=scope)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.op.type == "elementwise_div" and err.var_name == q.name
    msg = str(err)
    assert "role forward" in msg and q.name in msg
    assert f"X={h.name!r}: {dtype}[4, 2]" in msg and f"Y='z': {dtype}[4, 2] min 0, max 1, non-finite 0" in msg
    zs[1, 0] = 1.0  # the same program runs when nothing overflows
    ok = fl.Executor(check_nan_inf=True).run(main, feed={"x": xs, "z": zs}, fetch_list=[loss], scope=scope)
    ref = fl.Executor().run(main, feed={"x": xs, "z": zs}, fetch_list=[loss], scope=scope)
    assert ok[0].tobytes() == ref[0].tobytes()


def test_later_ops_do_not_run_and_unchecked_runs_go_on():
    main, startup, h, q, loss = _divide_program("float32")
    scope = fl.Scope()
    fl.Executor().run(startup, scope=scope)
    feed = {"x": np.ones((2, 3), "float32"), "z": np.zeros((2, 2), "float32")}
    out, = fl.Executor().run(main, feed=feed, fetch_list=[loss], scope=scope)  # off: NaN flows through
    assert np.isnan(out).all()
    calls = []
    exe = fl.Executor(check_nan_inf=True)
    plan = exe.compile(main, feed, [loss])
    for k, step in enumerate(plan.steps):  # spy on every kernel of the plan
        def spy(*a, _k=k, _f=step.kernel, **kw):
            calls.append(plan.steps[_k].op.type)
            return _f(*a, **kw)
        plan._step.__globals__[f"K{k}"] = spy
    with pytest.raises(fl.NanInfError):
        exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
    assert calls[-1] == "elementwise_div" and "scale" not in calls and "tanh" not in calls


def _training(optimizer):
    """Forward finite, backward overflowing: d(x / y)/dy = -x / y**2 with y = 1e-30 underflows to /0."""
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data(name="x", shape=[2])
        y = layers.data(name="y", shape=[2])
        h = layers.fc(x, size=2, act="tanh")
        d = layers.elementwise_div(h, layers.elementwise_mul(y, layers.fc(x, size=2)))
        loss = layers.mean(layers.scale(d, scale=1e-8))
        optimizer.minimize(loss)
    return main, startup, loss, d


@pytest.mark.parametrize("make", [lambda: fl.optimizer.SGD(0.1), lambda: fl.optimizer.Adam(0.1)])
def test_gradient_op_names_its_forward_op_and_persistables_keep_their_values(make):
    main, startup, loss, d = _training(make())
    exe, scope = fl.Executor(check_nan_inf=True), fl.Scope()
    exe.run(startup, scope=scope)
    good = {"x": np.full((3, 2), 0.5, "float32"), "y": np.ones((3, 2), "float32")}
    exe.run(main, feed=good, fetch_list=[loss], scope=scope)  # a finite step updates the state
    persist = [v.name for v in main.global_block().vars.values() if v.persistable]
    before = {n: fl.fetch_var(n, scope).copy() for n in persist}
    bad = dict(good, y=np.full((3, 2), 1e-30, "float32"))
    with pytest.raises(fl.NanInfError) as info:
        exe.run(main, feed=bad, fetch_list=[loss], scope=scope)
    err = info.value
    assert err.op.role == "backward" and err.op.type.endswith("_grad")
    assert "role backward" in str(err) and "it differentiates forward op" in str(err)
    assert err.op.type == "elementwise_div_grad"  # dY = -dOut * X / Y**2 overflows; the forward was finite
    div = next(op for op in main.global_block().ops if d.name in op.output_names)
    assert f"it differentiates forward op {div.to_string()}" in str(err)
    for n in persist:
        assert fl.fetch_var(n, scope).tobytes() == before[n].tobytes(), n
    # the forward values were finite: an unchecked run would have updated the parameters with Inf/NaN
    fl.Executor().run(main, feed=bad, fetch_list=[loss], scope=scope)
    assert any(not np.isfinite(fl.fetch_var(n, scope)).all() for n in persist)


def test_off_costs_nothing_and_the_environment_turns_it_on(monkeypatch):
    main, startup, h, q, loss = _divide_program("float32")
    feed = {"x": np.ones((2, 3), "float32"), "z": np.zeros((2, 2), "float32")}
    off = fl.Executor().compile(main, feed, [loss]).source
    on = fl.Executor(check_nan_inf=True).compile(main, feed, [loss]).source
    assert "N0(" not in off and ".copy()" not in off.split("return")[0]
    assert on.count("    N") == len(fl.Executor().compile(main, feed, [loss]).ops)
    monkeypatch.setenv("FLUIDLITE_CHECK_NAN_INF", "1")
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    with pytest.raises(fl.NanInfError):
        exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
    monkeypatch.setenv("FLUIDLITE_CHECK_NAN_INF", "0")
    assert "N0(" not in fl.Executor().compile(main, feed, [loss]).source
