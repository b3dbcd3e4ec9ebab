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
