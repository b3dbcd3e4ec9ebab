"""The stack_into pass: the ops making a stack's inputs write into slices of its result."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.compiler import CompileOptions
from fluidlite.compiler.memory import memory_plan
from test_compiler import _lstm

OFF = CompileOptions(disabled=frozenset({"stack_into"}), debug=True)


def _runs(fetch, feeds, options=(CompileOptions(debug=True), OFF)):
    """For each options: the fetched values at each feed (one executor, so later feeds reuse its plan)."""
    out = []
    for opts in options:
        exe = fl.Executor(compile_options=opts)
        exe.run(fl.default_startup_program())
        out.append(([exe.run(feed=f, fetch_list=fetch) for f in feeds], exe.compile(feed=feeds[0], fetch_list=fetch)))
    return out


def _lstm_feed(dtype, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((5, batch, 5)).astype(dtype), "label": rng.integers(0, 3, (batch, 1))}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_gate_gradients_are_made_in_the_stacked_gradient_bit_for_bit(dtype):
    loss, grads = _lstm(dtype, seq_len=5)
    fetch = [loss] + [grads[n] for n in sorted(grads)]
    (on, plan), (off, plan_off) = _runs(fetch, [_lstm_feed(dtype, 3)])
    stack, = [s for s in plan.steps if s.op.type == "stack"]
    assert stack.assembles and not any(s.assembles for s in plan_off.steps)
    writers = [s for s in plan.steps if s.op.type == "lstm_unit_grad"]
    assert len(writers) == 5 and all(s.into and s.into[0][0] == stack.out_names[0] for s in writers)
    assert sorted(s.into[0][1] for s in writers) == list(range(5))
    assert "stacked in place" in plan.source and "stacked in place" not in plan_off.source
    for a, b in zip(on[0], off[0]):
        np.testing.assert_array_equal(a, b)


def test_a_new_batch_size_allocates_the_stack_at_that_size():
    loss, grads = _lstm("float64", seq_len=5)
    fetch = [loss, grads["w_ih"], grads["b"]]
    feeds = [_lstm_feed("float64", 3), _lstm_feed("float64", 7, seed=1)]
    (on, _), (off, _) = _runs(fetch, feeds)
    for got, want in zip(on, off):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_rnn_outputs_are_stacked_where_the_cells_write_them():
    x = layers.data("x", [4, -1, 3], append_batch_size=False, dtype="float64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, 2], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, 2], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev)
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
        rnn.step_output(h)
    seq = rnn()
    last = rnn.step_var(h)
    feed = {"x": np.random.default_rng(2).standard_normal((4, 2, 3))}
    (on, plan), (off, _) = _runs([seq, last], [feed])
    assert [s.assembles for s in plan.steps if s.op.type == "stack"] == [True]
    np.testing.assert_array_equal(on[0][0], off[0][0])
    np.testing.assert_array_equal(on[0][0][-1], on[0][1])  # the last step's h is the stack's last slice


def test_gru_input_gradients_are_made_in_the_stacked_gradient_bit_for_bit():
    x = layers.data("x", [4, -1, 5], append_batch_size=False, dtype="float64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, 3], batch_ref=x_t)
        h = layers.gru_unit(layers.fc(x_t, 9), h_prev, 9)[0]
        rnn.update_memory(h_prev, h)
    loss = layers.mean(rnn.step_var(h))
    grads = dict((p.name, g) for p, g in fl.append_backward(loss))
    fetch = [loss] + [grads[n] for n in sorted(grads)]
    feed = {"x": np.random.default_rng(3).standard_normal((4, 2, 5))}
    (on, plan), (off, _) = _runs(fetch, [feed])
    assert [s.assembles for s in plan.steps if s.op.type == "stack"] == [True]
    assert len([s for s in plan.steps if s.op.type == "gru_unit_grad" and s.into]) == 4
    for a, b in zip(on[0], off[0]):
        np.testing.assert_array_equal(a, b)


def test_a_stack_of_products_or_of_one_value_twice_copies():
    x = layers.data("x", [3], dtype="float64")
    p = layers.fc(x, 2, bias_attr=False)  # `mul` cannot write into a given array
    q = layers.scale(x, 2.0)
    both, twice = layers.stack([p, layers.fc(x, 2, bias_attr=False)]), layers.stack([q, q])
    feed = {"x": np.arange(6.0).reshape(2, 3)}
    (on, plan), _ = _runs([both, twice, q], [feed])
    assert not any(s.assembles for s in plan.steps)
    np.testing.assert_array_equal(on[0][1], np.stack([feed["x"] * 2] * 2))


def test_the_memory_plan_counts_the_stack_whole_from_its_first_slice():
    loss, grads = _lstm("float64", seq_len=5)
    fetch = [loss] + [grads[n] for n in sorted(grads)]
    (_, plan), _ = _runs(fetch, [_lstm_feed("float64", 3)])
    live = [b for _, _, b in memory_plan(plan.ir).timeline]
    first = next(i for i, s in enumerate(plan.steps) if s.op.type == "lstm_unit_grad")
    at = next(i for i, s in enumerate(plan.steps) if s.op.type == "stack")
    stacked = 5 * 3 * 16 * 8  # [5, 3, 16] float64
    assert live[first] - live[first - 1] >= stacked  # the whole buffer when the first slice is written
    assert live[at] <= live[at - 1]  # the stack itself makes nothing


def test_check_nan_inf_switches_the_pass_off():
    assert "stack_into" in CompileOptions(check_nan_inf=True).disabled
