"""The plan compiler: each pass alone on a hand-built PlanIR, the verifier between passes, passes
switched off give the same numbers, and the public plan source."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.compiler import (PASSES, CompileOptions, IRError, PlanIR, alias, check, codegen, compile_plan, fold,
                                infer, lower, prune)

OPTS = CompileOptions()


def _train_net(dtype="float64"):
    x = layers.data(name="x", shape=[3], dtype=dtype)
    label = layers.data(name="y", shape=[1], dtype=dtype)
    h = layers.fc(x, size=4, act="tanh")
    shared = fl.ParamAttr(name="w_shared")
    outs = [layers.fc(layers.scale(h, scale=float(k + 1)), size=2, param_attr=shared, bias_attr=False)
            for k in range(3)]
    pred = layers.fc(layers.sums(outs), size=1)
    loss = layers.mean(layers.square_error_cost(pred, label))
    fl.optimizer.Momentum(0.1, 0.9).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    return loss


def _ir(fetch, feed_sig):
    return PlanIR(fl.default_main_program().global_block(), {n: (s, d) for n, s, d in feed_sig}, tuple(fetch))


def _feed(n=5, dtype="float64"):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 3)).astype(dtype), "y": rng.standard_normal((n, 1)).astype(dtype)}


def _sig(feed):
    return tuple((k, v.shape, v.dtype) for k, v in feed.items())


def test_pass_order_is_named():
    assert [name for name, _ in PASSES] == ["prune", "infer", "batch_grad", "mul_acc", "lstm_seq", "stack_into", "alias",
                                              "inplace", "lower", "fold", "fuse", "codegen"]


def test_prune_alone_keeps_what_fetches_and_persistable_writes_need():
    x = layers.data(name="x", shape=[3], dtype="float32")
    a = layers.scale(x, scale=2.0)
    layers.tanh(x)  # feeds nothing fetched
    ir = prune(_ir([a.name], (("x", (2, 3), np.dtype("float32")),)), OPTS)
    assert [s.op.type for s in ir.steps] == ["scale"]
    ir = prune(_ir([a.name], (("x", (2, 3), np.dtype("float32")),)), CompileOptions(disabled={"prune"}))
    assert [s.op.type for s in ir.steps] == ["scale", "tanh"]


def test_infer_alone_gives_concrete_shapes_and_scope_traffic():
    loss = _train_net()
    ir = infer(prune(_ir([loss.name], _sig(_feed(7))), OPTS), OPTS)
    assert ir.metas["fc_0.tmp_0"].shape == (7, 4)
    assert "fc_0.w_0" in ir.scope_inputs and "fc_0.w_0" in ir.persist_out
    assert ir.declared["fc_0.w_0"] == ((3, 4), np.dtype("float64"))


def test_infer_rejects_an_unfed_data_variable():
    loss = _train_net()
    ir = prune(_ir([loss.name], (("x", (2, 3), np.dtype("float64")),)), OPTS)
    with pytest.raises(ValueError, match="data variable 'y' must be fed"):
        infer(ir, OPTS)


def test_alias_alone_never_lets_a_fed_fetched_or_foreign_persistable_buffer_be_overwritten():
    loss = _train_net()
    feed = _feed()
    ir = alias(infer(prune(_ir([loss.name], _sig(feed)), OPTS), OPTS), OPTS)
    assert any(s.overwritable for s in ir.steps)
    for s in ir.steps:
        for slot in s.overwritable:
            for n in s.op.inputs[slot]:
                assert n not in feed and n != loss.name
                assert not ir.is_persistable(n) or n in s.out_names
    off = alias(infer(prune(_ir([loss.name], _sig(feed)), OPTS), OPTS), CompileOptions(disabled={"alias"}))
    assert not any(s.overwritable for s in off.steps)


def test_lower_and_fold_alone():
    loss = _train_net()
    ir = lower(alias(infer(prune(_ir([loss.name], _sig(_feed())), OPTS), OPTS), OPTS), OPTS)
    assert all(callable(s.kernel) for s in ir.steps)
    folded = fold(ir, OPTS)
    assert {s.op.type for s in folded.steps if s.fold is not None} == {"sum"}
    assert not any(s.fold for s in fold(ir, CompileOptions(disabled={"fold"})).steps)


def test_codegen_alone_emits_one_call_per_step_and_runs():
    x = layers.data(name="x", shape=[3], dtype="float64")
    y = layers.scale(layers.tanh(x), scale=2.0)
    sig = (("x", (2, 3), np.dtype("float64")),)
    ir = lower(alias(infer(prune(_ir([y.name], sig), OPTS), OPTS), OPTS), OPTS)
    ir = codegen(fold(ir, OPTS), OPTS)
    assert ir.source.startswith("def _step(F, A):") and ir.source.count(" = K") == 2
    xs = np.arange(6.0).reshape(2, 3)
    out, = ir.step_fn({"x": xs}, {})
    np.testing.assert_allclose(out, 2 * np.tanh(xs))


def test_verifier_names_the_pass_that_broke_the_ir():
    loss = _train_net()
    ir = compile_plan(fl.default_main_program().global_block(), _sig(_feed()), (loss.name,), OPTS)
    check(ir, "codegen")  # a compiled IR verifies
    ir.steps[0].overwritable = frozenset({"NoSuchSlot"})
    with pytest.raises(IRError, match="(?s)after pass 'broken'.*NoSuchSlot"):
        check(ir, "broken")
    ir.steps[0].overwritable = frozenset()
    ir.steps.insert(0, ir.steps.pop())  # an op moved before the values it reads
    with pytest.raises(IRError, match="(?s)read before"):
        check(ir, "reorder")


def test_debug_mode_runs_the_verifier_after_every_pass(monkeypatch):
    import fluidlite.compiler as compiler

    seen = []
    monkeypatch.setattr(compiler, "check", lambda ir, after: seen.append(after))
    loss = _train_net()
    fl.Executor(compile_options=CompileOptions(debug=True)).compile(feed=_feed(), fetch_list=[loss])
    assert seen == [name for name, _ in PASSES]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("off", [(), ("alias",), ("inplace",), ("fold",), ("prune",), ("batch_grad",), ("fuse",),
                                 ("mul_acc",), ("alias", "inplace", "fold", "prune", "batch_grad", "fuse", "mul_acc")])
def test_switching_passes_off_changes_no_number(off, dtype):
    loss = _train_net(dtype)
    startup = fl.default_startup_program()
    results = []
    for options in (CompileOptions(debug=True, batch_grad=True),
                    CompileOptions(disabled=set(off), debug=True, batch_grad=True)):
        scope, exe = fl.Scope(), fl.Executor(compile_options=options)
        exe.run(startup, scope=scope)
        losses = [exe.run(feed=_feed(dtype=dtype), fetch_list=[loss], scope=scope)[0] for _ in range(3)]
        results.append((losses, {p.name: fl.fetch_var(p.name, scope)
                                 for p in fl.default_main_program().all_parameters()}))
    (l0, p0), (l1, p1) = results
    if "batch_grad" in off:  # one product instead of a sum of parts: the same additions in another order
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == "float32" else 1e-12)  # noqa: E731
    else:  # bit for bit: these passes change buffers and schedules, not math
        close = np.testing.assert_array_equal
    for a, b in zip(l0, l1):
        close(a, b)
    for n in p0:
        close(p0[n], p1[n])


def test_unknown_pass_cannot_be_switched_off():
    with pytest.raises(ValueError, match="cannot switch off.*'codegen'"):
        CompileOptions(disabled={"codegen"})


def test_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLUIDLITE_PASSES_OFF", "fold, alias")
    monkeypatch.setenv("FLUIDLITE_DEBUG_PASSES", "1")
    monkeypatch.setenv("FLUIDLITE_BATCH_GRAD", "1")
    assert fl.Executor().compile_options == CompileOptions(disabled={"fold", "alias"}, debug=True, batch_grad=True)


def test_compile_returns_the_plan_run_uses_and_its_source_is_public():
    loss = _train_net()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = _feed()
    plan = exe.compile(feed=feed, fetch_list=[loss])
    assert plan.source.splitlines()[0] == "def _step(F, A):" and "A['fc_0.w_0'] = " in plan.source
    assert [op for s in plan.steps for op in s.ops] == plan.ops
    exe.run(feed=feed, fetch_list=[loss])
    assert exe.compile(feed=feed, fetch_list=[loss]) is plan  # served from the cache


def test_scope_public_interface():
    scope = fl.Scope()
    a = np.ones(3, np.float32)
    scope.set_array("a", a)
    assert scope.get_array("a") is a and scope.arrays["a"] is a and scope.get_array("b") is None
    scope.declare({"b": ((2,), np.dtype("float32"))})
    with pytest.raises(ValueError, match="shape"):
        scope.var("b").get_tensor().set(np.ones(3, np.float32))


def _persistable_clip_program(dtype, n=6):
    main = fl.Program()
    b = main.global_block()
    gs = [b.create_var(name=f"g{i}", shape=(n,), dtype=dtype, persistable=True) for i in range(2)]
    outs = {k: b.create_var(name=k, shape=(n,), dtype=dtype, persistable=True)
            for k in ("by_value", "by_norm", "global0", "global1")}
    b.append_op("clip", {"X": gs[0]}, {"Out": outs["by_value"]}, {"min": -0.5, "max": 0.5})
    b.append_op("clip_by_norm", {"X": gs[0]}, {"Out": outs["by_norm"]}, {"max_norm": 1.0})
    b.append_op("global_norm", {"X": gs}, {"Out": "norm"})
    b.append_op("scale_by_global_norm", {"X": gs, "GlobalNorm": "norm"},
                {"Out": [outs["global0"], outs["global1"]]}, {"clip_norm": 1.0})
    return main, list(outs)


def _expected_clips(g0, g1):
    gn = np.sqrt((g0.astype(np.float64) ** 2).sum() + (g1.astype(np.float64) ** 2).sum())
    n0 = np.sqrt((g0.astype(np.float64) ** 2).sum())
    return {"by_value": np.clip(g0, -0.5, 0.5), "by_norm": g0 * (1.0 / max(n0, 1.0)),
            "global0": g0 * (1.0 / max(gn, 1.0)), "global1": g1 * (1.0 / max(gn, 1.0))}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_persistable_results_are_written_into_the_scope_arrays(dtype):
    main, names = _persistable_clip_program(dtype)
    scope, exe = fl.Scope(), fl.Executor()
    rng = np.random.default_rng(0)
    addresses = None
    for step in range(3):
        g0, g1 = (rng.standard_normal(6) * (step + 1)).astype(dtype), rng.standard_normal(6).astype(dtype)
        scope.var("g0").get_tensor().set(g0)
        scope.var("g1").get_tensor().set(g1)
        exe.run(main, scope=scope)
        for k, want in _expected_clips(g0, g1).items():
            np.testing.assert_allclose(scope.get_array(k), want, rtol=1e-6 if dtype == "float32" else 1e-13)
        now = {k: scope.get_array(k).ctypes.data for k in names}
        if addresses is not None:
            assert now == addresses  # the same buffers, rewritten
        addresses = now
    assert "out=[R(A, 'by_value'" in exe.compile(main).source


def test_a_persistable_result_someone_holds_is_not_overwritten():
    main, _ = _persistable_clip_program("float64")
    scope, exe = fl.Scope(), fl.Executor()
    scope.var("g0").get_tensor().set(np.full(6, 3.0))
    scope.var("g1").get_tensor().set(np.full(6, 3.0))
    exe.run(main, scope=scope)
    held = scope.get_array("by_value")
    view = scope.get_array("by_norm")[:3]
    before = held.copy(), view.copy()
    scope.var("g0").get_tensor().set(np.full(6, -3.0))
    exe.run(main, scope=scope)
    np.testing.assert_array_equal(held, before[0])  # a new array went to the scope instead
    np.testing.assert_array_equal(view, before[1])
    np.testing.assert_array_equal(scope.get_array("by_value"), np.full(6, -0.5))


def test_inplace_off_allocates_every_result():
    main, names = _persistable_clip_program("float64")
    scope, exe = fl.Scope(), fl.Executor(compile_options=CompileOptions(disabled={"inplace"}))
    scope.var("g0").get_tensor().set(np.ones(6))
    scope.var("g1").get_tensor().set(np.ones(6))
    exe.run(main, scope=scope)
    first = {k: scope.get_array(k) for k in names}  # held here, so even the pass could not reuse them
    exe.run(main, scope=scope)
    assert all(scope.get_array(k) is not first[k] for k in names)
    assert "out=" not in exe.compile(main).source


def _lstm(dtype, seq_len=6):
    x = layers.data("x", [seq_len, -1, 5], dtype=dtype, append_batch_size=False)
    label = layers.data("label", [1], dtype="int64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, 4], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, 4], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev, param_attr=[fl.ParamAttr(name="w_ih"), fl.ParamAttr(name="w_hh")],
                                bias_attr=fl.ParamAttr(name="b"))
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
    logits = layers.fc(rnn.step_var(h), size=3)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
    params_grads = fl.append_backward(loss)
    return loss, dict((p.name, g) for p, g in params_grads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_grad_makes_the_recurrent_weight_gradient_one_product(dtype):
    loss, grads = _lstm(dtype)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((6, 3, 5)).astype(dtype), "label": rng.integers(0, 3, (3, 1)).astype(np.int64)}
    fetch = [loss, grads["w_hh"], grads["w_ih"]]
    results = {}
    for name, options in (("on", CompileOptions(debug=True, batch_grad=True)), ("off", CompileOptions())):
        exe = fl.Executor(compile_options=options)
        exe.run(fl.default_startup_program())
        plan = exe.compile(feed=feed, fetch_list=fetch)
        results[name] = (exe.run(feed=feed, fetch_list=fetch), plan)
    (on, plan_on), (off, plan_off) = results["on"], results["off"]
    assert [s.op.type for s in plan_on.steps].count("matmul_tn_sum") == 1
    assert "matmul_tn_sum" not in [s.op.type for s in plan_off.steps]
    assert not any("w_hh@GRAD@PART" in n for s in plan_on.steps for n in s.out_names)
    # the recurrent dX products read one row-major copy of w_hh^T, made once
    assert [(s.op.type, s.in_names) for s in plan_on.steps if s.op.type == "transpose"] == [("transpose", ["w_hh"])]
    # one dX per step but the first, whose h_prev (the initial memory) needs no gradient
    assert sum(s.op.type == "mul" and s.in_names[1] == "w_hh@TRANSPOSED" for s in plan_on.steps) == 5
    assert all(op.type != "matmul_tn_sum" for op in fl.default_main_program().global_block().ops)  # program untouched
    # the product reads the dOut_t the input projection's gradient stacks already (one array [T, B, 4H])
    tn, = [s for s in plan_on.steps if s.op.type == "matmul_tn_sum"]
    stack, = [s for s in plan_on.steps if s.op.type == "stack"]
    assert tn.op.inputs["Y"] == stack.op.outputs["Out"] and len(tn.op.inputs["X"]) == 6
    assert [s.op.type for s in plan_on.steps].index("matmul_tn_sum") > [s.op.type for s in plan_on.steps].index("stack")
    np.testing.assert_array_equal(on[0], off[0])
    # the same additions in another order: float rounding only
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(on[1], off[1], **tol)
    np.testing.assert_allclose(on[2], off[2], **tol)


def test_matmul_tn_sum_op_against_numpy():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((b, 3)) for b in (2, 4, 3)]
    ys = [rng.standard_normal((b, 5)) for b in (2, 4, 3)]
    b = fl.default_main_program().global_block()
    xv = [b.create_var(name=f"x{i}", shape=x.shape, dtype="float64") for i, x in enumerate(xs)]
    yv = [b.create_var(name=f"y{i}", shape=y.shape, dtype="float64") for i, y in enumerate(ys)]
    b.append_op("matmul_tn_sum", {"X": xv, "Y": yv}, {"Out": "out"})
    feed = {**{f"x{i}": x for i, x in enumerate(xs)}, **{f"y{i}": y for i, y in enumerate(ys)}}
    out, = fl.Executor().run(feed=feed, fetch_list=["out"])
    np.testing.assert_allclose(out, sum(x.T @ y for x, y in zip(xs, ys)), rtol=1e-12)
    with pytest.raises(ValueError, match="matmul_tn_sum"):
        b.append_op("matmul_tn_sum", {"X": xv[:2], "Y": yv[:1]}, {"Out": "bad"})
    # Y as one stacked array [len(X), B, N]
    ys3 = rng.standard_normal((3, 2, 5))
    prog = fl.Program()
    b = prog.global_block()
    x2 = [b.create_var(name=f"xs{i}", shape=(2, 3), dtype="float64") for i in range(3)]
    y3 = b.create_var(name="y3", shape=ys3.shape, dtype="float64")
    b.append_op("matmul_tn_sum", {"X": x2, "Y": y3}, {"Out": "out3"})
    assert b.var("out3").shape == (3, 5)
    xs2 = [rng.standard_normal((2, 3)) for _ in range(3)]
    out3, = fl.Executor().run(prog, feed={**{f"xs{i}": x for i, x in enumerate(xs2)}, "y3": ys3}, fetch_list=["out3"])
    np.testing.assert_allclose(out3, sum(x.T @ y for x, y in zip(xs2, ys3)), rtol=1e-12)
    with pytest.raises(ValueError, match=r"matmul_tn_sum.*stacked Y must be \[2, B, N\]"):
        b.append_op("matmul_tn_sum", {"X": x2[:2], "Y": y3}, {"Out": "bad3"})
    assert "bad3" not in b.vars
