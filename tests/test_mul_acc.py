"""The mul_acc pass (a product added by BLAS into another value's buffer) and its op."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.compiler import CompileOptions
from test_compiler import _lstm


def _on_and_off(fetch, feed):
    """(fetched values, plan) with the pass on, then off; each from a fresh startup run."""
    runs = []
    for off in (frozenset(), frozenset({"mul_acc"})):
        exe = fl.Executor(compile_options=CompileOptions(disabled=off, debug=True))
        exe.run(fl.default_startup_program())
        runs.append((exe.run(feed=feed, fetch_list=fetch), exe.compile(feed=feed, fetch_list=fetch)))
    return runs


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_lstm_gives_bit_for_bit_gradients_with_the_gates_written_into_the_input_projection(dtype):
    loss, grads = _lstm(dtype, seq_len=5)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((5, 3, 5)).astype(dtype), "label": rng.integers(0, 3, (3, 1))}
    fetch = [loss] + [grads[n] for n in sorted(grads)]
    (on, plan), (off, plan_off) = _on_and_off(fetch, feed)
    fused = [s for s in plan.steps if s.op.type == "mul_acc" and len(s.inputs["Acc"][0].shape) > 1]
    biased = [s.inputs["Acc"][0].name for s in plan.steps if s.op.type == "mul_acc" and s not in fused]
    # one per step: h_{t-1} @ W_hh added into the step's slice of the hoisted x_t @ W_ih + b
    assert len(fused) == 5 and "mul_acc" not in [s.op.type for s in plan_off.steps]
    # and the bias of that projection and of the classifier's fc added by BLAS: no elementwise_add left
    assert len(biased) == 2 and "elementwise_add" not in [s.op.type for s in plan.steps]
    assert all("Acc" in s.overwritable for s in fused)  # the slices are free once read: no copy
    assert [s.op.type for s in plan.steps].count("sum") < [s.op.type for s in plan_off.steps].count("sum")
    assert all(op.type != "mul_acc" for op in fl.default_main_program().global_block().ops)  # program untouched
    for a, b in zip(on, off):
        np.testing.assert_array_equal(a, b)


def test_a_fed_addend_is_copied_not_overwritten():
    a = layers.data("a", [4], dtype="float64")
    x = layers.data("x", [3], dtype="float64")
    out = layers.sums([a, layers.fc(x, 4, param_attr=fl.ParamAttr(name="w"), bias_attr=False)])
    rng = np.random.default_rng(1)
    feed = {"a": rng.standard_normal((2, 4)), "x": rng.standard_normal((2, 3))}
    kept = feed["a"].copy()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    plan = exe.compile(feed=feed, fetch_list=[out, a])
    step, = [s for s in plan.steps if s.op.type == "mul_acc"]
    assert "Acc" not in step.overwritable
    got, got_a = exe.run(feed=feed, fetch_list=[out, a])
    np.testing.assert_allclose(got, kept + feed["x"] @ fl.fetch_var("w"), rtol=1e-13)
    np.testing.assert_array_equal(feed["a"], kept)
    np.testing.assert_array_equal(got_a, kept)


def test_a_product_read_twice_stays_a_product():
    x = layers.data("x", [3], dtype="float64")
    p = layers.fc(x, 4, bias_attr=False)
    out = layers.sums([p, layers.scale(p, 2.0)])
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    plan = exe.compile(feed={"x": np.ones((2, 3))}, fetch_list=[out])
    assert "mul_acc" not in [s.op.type for s in plan.steps]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mul_acc_op_against_numpy(dtype):
    rng = np.random.default_rng(2)
    x, y, acc = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 5), (5, 4), (2, 3, 4)))
    b = fl.default_main_program().global_block()
    xv, yv, av = (b.create_var(name=n, shape=v.shape, dtype=dtype) for n, v in (("x", x), ("y", y), ("acc", acc)))
    b.append_op("mul_acc", {"X": xv, "Y": yv, "Acc": av}, {"Out": "out"}, {"x_num_col_dims": 2})
    assert b.var("out").shape == (2, 3, 4) and b.var("out").dtype == np.dtype(dtype)
    out, = fl.Executor().run(feed={"x": x, "y": y, "acc": acc}, fetch_list=["out"])
    want = acc.astype(np.float64) + x.astype(np.float64) @ y
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == "float32" else 1e-13)
    with pytest.raises(ValueError, match=r"mul_acc.*Acc is \[2, 3, 3\].*the product \[2, 3, 4\]"):
        b.append_op("mul_acc", {"X": xv, "Y": yv, "Acc": b.create_var(name="bad", shape=(2, 3, 3), dtype=dtype)},
                    {"Out": "out2"}, {"x_num_col_dims": 2})
    assert "out2" not in b.vars


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mul_acc_op_adds_a_row_acc_to_every_row(dtype):
    rng = np.random.default_rng(5)
    x, y, row = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 5), (5, 4), (4,)))
    b = fl.default_main_program().global_block()
    xv, yv, rv = (b.create_var(name=n, shape=v.shape, dtype=dtype) for n, v in (("x", x), ("y", y), ("row", row)))
    b.append_op("mul_acc", {"X": xv, "Y": yv, "Acc": rv}, {"Out": "out"}, {"x_num_col_dims": 2})
    assert b.var("out").shape == (2, 3, 4) and b.var("out").dtype == np.dtype(dtype)
    out, = fl.Executor().run(feed={"x": x, "y": y, "row": row}, fetch_list=["out"])
    want = x.astype(np.float64) @ y + row
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == "float32" else 1e-13)
    with pytest.raises(ValueError, match=r"mul_acc.*Acc is \[3\].*the product \[2, 3, 4\]"):
        b.append_op("mul_acc", {"X": xv, "Y": yv, "Acc": b.create_var(name="bad", shape=(3,), dtype=dtype)},
                    {"Out": "out2"}, {"x_num_col_dims": 2})
    other = "float64" if dtype == "float32" else "float32"
    with pytest.raises(ValueError, match=rf"mul_acc.*Acc is \[4\] {other}"):
        b.append_op("mul_acc", {"X": xv, "Y": yv, "Acc": b.create_var(name="row2", shape=(4,), dtype=other)},
                    {"Out": "out3"}, {"x_num_col_dims": 2})
    assert "out2" not in b.vars and "out3" not in b.vars


def _fc_net(dtype, then):
    """A bias fc whose sum goes through `then`, a loss and its gradients."""
    x = layers.data("x", [6], dtype=dtype)
    label = layers.data("label", [1], dtype="int64")
    h = then(layers.fc(x, 8, param_attr=fl.ParamAttr(name="w"), bias_attr=fl.ParamAttr(name="b")))
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 3), label))
    grads = dict((p.name, g) for p, g in fl.append_backward(loss))
    return loss, [loss, grads["w"], grads["b"]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_bias_add_is_folded_into_the_product_bit_for_bit(dtype):
    loss, fetch = _fc_net(dtype, lambda s: layers.reshape(s, [-1, 2, 4]))
    rng = np.random.default_rng(6)
    feed = {"x": rng.standard_normal((5, 6)).astype(dtype), "label": rng.integers(0, 3, (5, 1))}
    (on, plan), (off, _) = _on_and_off(fetch, feed)
    types = [s.op.type for s in plan.steps]
    assert types.count("mul_acc") == 2 and "elementwise_add" not in types and types.count("mul") == 0
    # the add's gradient no longer names the product (which the plan never makes), but dOut
    made = {n for s in plan.steps for n in s.out_names}
    assert all(n in made or n in feed or plan.ir.is_persistable(n) for s in plan.steps for n in s.in_names)
    for a, b in zip(on, off):
        np.testing.assert_array_equal(a, b)


def test_a_bias_add_an_elementwise_op_reads_is_left_to_the_fuse_pass():
    _, fetch = _fc_net("float32", layers.relu)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": np.ones((2, 6), np.float32), "label": np.zeros((2, 1), np.int64)}
    steps = exe.compile(feed=feed, fetch_list=fetch).ir.steps
    types = [m.op.type for s in steps for m in getattr(s, "members", [s])]
    assert types.count("mul_acc") == 1 and "elementwise_add" in types  # the classifier's fc is folded


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_adds_into_the_addend_as_the_two_steps_round_up_to_max_k(dtype):
    """The pass's bit-for-bit promise rests on BLAS summing K <= MAX_K in one block; a BLAS that blocked
    smaller would fail here (and the pass would have to lower MAX_K)."""
    from fluidlite.compiler.mul_acc import MAX_K
    from fluidlite.kernels import basic as K

    rng = np.random.default_rng(4)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((64, MAX_K), (MAX_K, 300), (64, 300)))
    out = c.copy()
    K.matmul_acc(a, b, out)
    np.testing.assert_array_equal(out, K.matmul2d(a, b) + c)
    np.testing.assert_array_equal(K.matmul_row_acc(a, b, c[0]), K.matmul2d(a, b) + c[0])


def test_a_product_with_a_longer_inner_dimension_is_not_fused():
    from fluidlite.compiler.mul_acc import MAX_K

    a = layers.data("a", [4], dtype="float64")
    x = layers.data("x", [MAX_K + 1], dtype="float64")
    out = layers.sums([a, layers.fc(x, 4, bias_attr=False)])
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    plan = exe.compile(feed={"a": np.ones((2, 4)), "x": np.ones((2, MAX_K + 1))}, fetch_list=[out])
    assert "mul_acc" not in [s.op.type for s in plan.steps]


def _momentum_mlp(dtype, **opt):
    """fc-relu-fc with softmax cross-entropy, trained by Momentum(0.1, 0.9, **opt); returns the loss."""
    x = layers.data("x", [6], dtype=dtype)
    label = layers.data("label", [1], dtype="int64")
    logits = layers.fc(layers.fc(x, 5, act="relu"), 3)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
    clip = opt.pop("grad_clip", None)
    fl.optimizer.Momentum(0.1, 0.9, **opt).minimize(loss, grad_clip=clip)
    return loss


def _train(dtype, batches, off, fetch=()):
    """Persistable values after a Momentum step on each batch size in `batches`, from a fresh startup in a
    fresh scope, with the passes in `off` switched off; and the plan of the first batch size."""
    main = fl.default_main_program()
    scope = fl.Scope()
    exe = fl.Executor(compile_options=CompileOptions(disabled=off, debug=True))
    exe.run(fl.default_startup_program(), scope=scope)
    rng = np.random.default_rng(7)
    plan = None
    for b in batches:
        feed = {"x": rng.standard_normal((b, 6)).astype(dtype), "label": rng.integers(0, 3, (b, 1))}
        exe.run(main, feed=feed, fetch_list=list(fetch), scope=scope)
        plan = plan or exe.compile(main, feed=feed, fetch_list=list(fetch))
    names = sorted(v.name for v in main.list_vars() if v.persistable and v.name in scope.local_var_names())
    return {n: fl.fetch_var(n, scope) for n in names}, plan


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_momentum_gets_the_weight_gradient_added_into_its_velocity_bit_for_bit(dtype):
    _momentum_mlp(dtype)
    on, plan = _train(dtype, [4, 4, 4], frozenset())
    off, plan_off = _train(dtype, [4, 4, 4], frozenset({"mul_acc"}))
    types = [m.op.type for s in plan.steps for m in getattr(s, "members", [s])]
    # both weights: BLAS adds x^T dOut into mu * velocity, and the update is sgd on the velocity;
    # the biases' gradients are column sums, not products: they keep momentum
    assert types.count("mul_grad_decay_acc") == 2 and types.count("sgd") == 2 and types.count("momentum") == 2
    assert types.count("mul_grad") == 1  # the upper layer's input gradient; the lower layer's is not wanted
    folded = [s for s in plan.steps if s.op.type == "mul_grad_decay_acc"]
    assert all("Acc" in s.overwritable for s in folded)  # into the scope's velocity buffer
    assert "mul_grad_decay_acc" not in [s.op.type for s in plan_off.steps]
    assert all(op.type != "mul_grad_decay_acc" for op in fl.default_main_program().global_block().ops)
    assert sorted(on) == sorted(off) and len(on) == 9  # 4 parameters, 4 velocities, the learning rate
    for n in on:
        np.testing.assert_array_equal(on[n], off[n], err_msg=n)


def test_the_velocity_is_written_in_its_own_buffer():
    _momentum_mlp("float32")
    scope = fl.Scope()
    exe = fl.Executor()
    exe.run(fl.default_startup_program(), scope=scope)
    feed = {"x": np.ones((4, 6), np.float32), "label": np.zeros((4, 1), np.int64)}
    plan = exe.compile(feed=feed)
    vel = [s.op.inputs["Acc"][0] for s in plan.steps if s.op.type == "mul_grad_decay_acc"]
    exe.run(feed=feed, scope=scope)
    arrays = [scope.get_array(n) for n in vel]
    exe.run(feed=feed, scope=scope)
    assert len(vel) == 2 and all(scope.get_array(n) is a for n, a in zip(vel, arrays))


@pytest.mark.parametrize("case", ["nesterov", "global clip", "gradient fetched"])
def test_momentum_keeps_its_gradient_when_it_needs_it_or_another_op_reads_it(case):
    opt = {"nesterov": {"use_nesterov": True},
           "global clip": {"grad_clip": fl.clip.GradientClipByGlobalNorm(clip_norm=1.0)}}.get(case, {})
    _momentum_mlp("float64", **opt)
    fetch = [n for n in fl.default_main_program().global_block().vars if n.endswith("w_0@GRAD")][:1]
    fetch = fetch if case == "gradient fetched" else []
    on, plan = _train("float64", [4, 4], frozenset(), fetch)
    off, _ = _train("float64", [4, 4], frozenset({"mul_acc"}), fetch)
    types = [s.op.type for s in plan.steps]
    assert types.count("mul_grad_decay_acc") == (1 if fetch else 0)  # a fetched gradient: the other weight's is folded
    for n in on:
        np.testing.assert_array_equal(on[n], off[n], err_msg=n)


def test_a_gated_momentum_keeps_its_gradient_and_skips_as_told():
    """An update with a SkipUpdate flag must leave the velocity alone on a skipped step: not folded."""
    _momentum_mlp("float64")
    block = fl.default_main_program().global_block()
    block.create_var(name="skip", shape=(1,), dtype="bool", persistable=True)
    for op in block.ops:
        if op.type == "momentum":
            op.inputs["SkipUpdate"] = ["skip"]
    runs = []
    for off in (frozenset(), frozenset({"mul_acc"})):
        scope = fl.Scope()
        exe = fl.Executor(compile_options=CompileOptions(disabled=off, debug=True))
        exe.run(fl.default_startup_program(), scope=scope)
        rng = np.random.default_rng(7)
        for flag in (False, True, False):
            scope.set_array("skip", np.array([flag]))
            feed = {"x": rng.standard_normal((4, 6)), "label": rng.integers(0, 3, (4, 1))}
            exe.run(feed=feed, scope=scope)
        plan = exe.compile(feed=feed)
        runs.append(({n: fl.fetch_var(n, scope) for n in scope.local_var_names()}, plan))
    (on, plan), (off, _) = runs
    assert "mul_grad_decay_acc" not in [s.op.type for s in plan.steps]
    for n in on:
        np.testing.assert_array_equal(on[n], off[n], err_msg=n)


def test_a_plan_rebound_for_a_batch_above_one_block_rounds_as_a_fresh_plan():
    """The plan folds at batch 4; bound for batch MAX_K + 1, where BLAS would block the inner dimension,
    its kernel runs the product and the decayed sum as two steps: bit for bit the unfused plan's."""
    from fluidlite.compiler.mul_acc import MAX_K

    _momentum_mlp("float32")
    on, plan = _train("float32", [4, MAX_K + 1, 4], frozenset())
    off, _ = _train("float32", [4, MAX_K + 1, 4], frozenset({"mul_acc"}))
    assert [s.op.type for s in plan.steps].count("mul_grad_decay_acc") == 2
    for n in on:
        np.testing.assert_array_equal(on[n], off[n], err_msg=n)


def test_a_batch_above_one_block_is_not_folded():
    from fluidlite.compiler.mul_acc import MAX_K

    _momentum_mlp("float32")
    _, plan = _train("float32", [MAX_K + 1], frozenset())
    assert "mul_grad_decay_acc" not in [s.op.type for s in plan.steps]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [3, 300])  # 300: above one BLAS block, the two-step path
def test_mul_grad_decay_acc_op_against_numpy(dtype, rows):
    rng = np.random.default_rng(8)
    x, d, acc = (rng.standard_normal(s).astype(dtype) for s in ((2, rows, 5), (2 * rows, 4), (5, 4)))
    b = fl.default_main_program().global_block()
    xv, dv, av = (b.create_var(name=n, shape=v.shape, dtype=dtype) for n, v in (("x", x), ("d", d), ("acc", acc)))
    b.append_op("mul_grad_decay_acc", {"X": xv, "D": dv, "Acc": av}, {"Out": "out"}, {"x_num_col_dims": 2, "beta": 0.5})
    assert b.var("out").shape == (5, 4) and b.var("out").dtype == np.dtype(dtype)
    out, = fl.Executor().run(feed={"x": x, "d": d, "acc": acc}, fetch_list=["out"])
    want = 0.5 * acc.astype(np.float64) + x.reshape(-1, 5).astype(np.float64).T @ d
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == "float32" else 1e-13, atol=1e-5 if dtype == "float32" else 0)
    with pytest.raises(ValueError, match=r"mul_grad_decay_acc.*X flattens to \[%d, 5\].*D \(\[2, 4\]\)" % (2 * rows)):
        b.append_op("mul_grad_decay_acc", {"X": xv, "D": b.create_var(name="bad", shape=(2, 4), dtype=dtype), "Acc": av},
                    {"Out": "out2"}, {"x_num_col_dims": 2})
    other = "float64" if dtype == "float32" else "float32"
    with pytest.raises(ValueError, match=r"mul_grad_decay_acc"):
        b.append_op("mul_grad_decay_acc", {"X": xv, "D": dv, "Acc": b.create_var(name="acc2", shape=(5, 4), dtype=other)},
                    {"Out": "out3"}, {"x_num_col_dims": 2})
    assert "out2" not in b.vars and "out3" not in b.vars


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_adds_into_the_decayed_velocity_as_the_two_steps_round_up_to_max_k(dtype):
    from fluidlite.compiler.mul_acc import MAX_K
    from fluidlite.kernels import basic as K

    rng = np.random.default_rng(9)
    for rows in (3, MAX_K, MAX_K + 1):  # BLAS's small-matrix path, one block, the two-step path
        a, d, v = (rng.standard_normal(s).astype(dtype) for s in ((rows, 64), (rows, 300), (64, 300)))
        want = dtype(0.9) * v + K.matmul2d_tn(a, d)
        for kernel in (K.matmul_tn_decay_acc, K.matmul_tn_decay_acc_parallel):
            out = v.copy()
            kernel(a, d, out, dtype(0.9))
            np.testing.assert_array_equal(out, want, err_msg=f"{kernel.__name__} at K = {rows}")
