"""The mul_acc pass (a product added by BLAS into another value's buffer) and its op."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.compiler import CompileOptions
from test_compiler import _lstm


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_lstm_gives_bit_for_bit_gradients_with_the_gates_written_into_the_input_projection(dtype):
    loss, grads = _lstm(dtype, seq_len=5)
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((5, 3, 5)).astype(dtype), "label": rng.integers(0, 3, (3, 1))}
    fetch = [loss] + [grads[n] for n in sorted(grads)]
    runs = {}
    for name, off in (("on", frozenset()), ("off", frozenset({"mul_acc"}))):
        exe = fl.Executor(compile_options=CompileOptions(disabled=off, debug=True))
        exe.run(fl.default_startup_program())
        runs[name] = (exe.run(feed=feed, fetch_list=fetch), exe.compile(feed=feed, fetch_list=fetch))
    (on, plan), (off, plan_off) = runs["on"], runs["off"]
    fused = [s for s in plan.steps if s.op.type == "mul_acc"]
    # one per step: h_{t-1} @ W_hh added into the step's slice of the hoisted x_t @ W_ih + b
    assert len(fused) == 5 and "mul_acc" not in [s.op.type for s in plan_off.steps]
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


def test_a_product_with_a_longer_inner_dimension_is_not_fused():
    from fluidlite.compiler.mul_acc import MAX_K

    a = layers.data("a", [4], dtype="float64")
    x = layers.data("x", [MAX_K + 1], dtype="float64")
    out = layers.sums([a, layers.fc(x, 4, bias_attr=False)])
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    plan = exe.compile(feed={"a": np.ones((2, 4)), "x": np.ones((2, MAX_K + 1))}, fetch_list=[out])
    assert "mul_acc" not in [s.op.type for s in plan.steps]
