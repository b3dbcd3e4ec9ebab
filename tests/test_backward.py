"""The SPEC §2 backward contract; every gradient is checked against float64 central differences."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.framework import ROLE_BACKWARD

rng = np.random.default_rng(1)


def data(name, shape, stop_gradient=False):
    return layers.data(name, shape, dtype="float64", stop_gradient=stop_gradient)


def numeric_grad(f, arr, eps=1e-6):
    """d f() / d arr by central differences; `arr` is perturbed in place."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def loss_of(exe, loss, feed, params=None):
    """f() running the forward pass with `feed` and the given parameter arrays (both may be perturbed)."""
    def f():
        for name, value in (params or {}).items():
            fl.global_scope().var(name).get_tensor().set(value)
        return float(exe.run(feed=feed, fetch_list=[loss])[0].sum())
    return f


def check(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=what)


def test_grad_names_and_parameter_gradients_match_finite_differences():
    x = data("x", [3], stop_gradient=True)
    h = layers.fc(x, 4, act="tanh")
    loss = layers.mean(layers.fc(h, 2, act="tanh"))
    pairs = fl.append_backward(loss)
    assert fl.grad_var_name("v") == "v@GRAD"
    assert [(p.name, g.name) for p, g in pairs] == [(n, n + "@GRAD") for n in
                                                    ("fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_1.b_0")]
    assert loss.block.has_var(fl.grad_var_name(h.name))
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": rng.standard_normal((5, 3))}
    params = {p.name: fl.fetch_var(p.name).copy() for p, _ in pairs}
    grads = exe.run(feed=feed, fetch_list=[g for _, g in pairs])
    f = loss_of(exe, loss, feed, params)
    for (p, _), g in zip(pairs, grads):
        check(g, numeric_grad(f, params[p.name]), p.name)


def _sum_ops_writing(block, name):
    return [op for op in block.ops if op.type == "sum" and op.role == ROLE_BACKWARD and name in op.output_names]


@pytest.mark.parametrize("shape", ["two_ops", "sums_h_h", "mul_x_x"])
def test_shared_variable_gets_one_accumulation_called_back_after_all_parts(shape):
    x = data("x", [3])
    h = layers.scale(x, 1.5)
    if shape == "two_ops":
        out = layers.sums([layers.tanh(h), layers.scale(h, 3.0)])
    elif shape == "sums_h_h":
        out = layers.tanh(layers.sums([h, h]))
    else:
        out = layers.elementwise_mul(h, h)
    loss = layers.mean(out)
    block = loss.block
    seen = []

    def callback(blk, ctx):
        if ctx.forward_op is None:  # an accumulation: every part it adds must already be written
            written = {n for op in blk.ops[:-1] for n in op.output_names}
            assert set(ctx.op.input("X")) <= written and ctx.op is blk.ops[-1]
        seen.append((ctx.op, ctx.forward_op, list(ctx.completed)))

    fl.append_backward(loss, parameter_list=[x], callback=callback)
    gh = fl.grad_var_name(h.name)
    sums = _sum_ops_writing(block, gh)
    assert len(sums) == 1
    assert [(fwd, done) for op, fwd, done in seen if op is sums[0]] == [(None, [gh])]
    assert not any(gh in op.input_names for op in block.ops[:block.ops.index(sums[0])])  # no one read a partial sum
    exe = fl.Executor()
    feed = {"x": rng.standard_normal((2, 3))}
    got, = exe.run(feed=feed, fetch_list=[fl.grad_var_name("x")])
    check(got, numeric_grad(loss_of(exe, loss, feed), feed["x"]), "x")


def test_callbacks_run_in_order_for_every_gradient_and_accumulation_op_but_not_the_seed():
    x = data("x", [2])
    h = layers.tanh(x)
    loss = layers.mean(layers.sums([layers.scale(h, 2.0), h]))
    block = loss.block
    n_forward = len(block.ops)
    log = []
    fl.append_backward(loss, parameter_list=[x],
                       callback=[lambda b, c: log.append(("a", c)), lambda b, c: log.append(("b", c))])
    assert [tag for tag, _ in log] == ["a", "b"] * (len(log) // 2)
    assert all(log[i][1] is log[i + 1][1] for i in range(0, len(log), 2))
    called = [c.op for tag, c in log if tag == "a"]
    appended = block.ops[n_forward:]
    assert appended[0].type == "fill_any_like" and appended[0] not in called  # the seed
    assert called == [op for op in appended[1:] if op.type != "fill_zeros_like"]
    assert [c.op.type for _, c in log if c.forward_op is None] == ["sum", "sum"]  # h's accumulation, once per callback
    last = log[-1][1]
    assert last.grad_to_var[fl.grad_var_name("x")] == "x" and last.grad_to_var[fl.grad_var_name(h.name)] == h.name


def test_ops_a_callback_appends_land_right_after_and_feed_later_gradient_ops():
    x = data("x", [3])
    z = layers.scale(x, 1.5)
    h = layers.tanh(z)
    loss = layers.mean(layers.elementwise_mul(h, h))
    gz = fl.grad_var_name(z.name)
    positions = []

    def double_dz(block, ctx):
        if gz in ctx.completed:
            block.append_op("scale", {"X": gz}, {"Out": gz}, {"scale": 2.0})
            positions.append((block.ops.index(ctx.op), len(block.ops) - 1))

    def count(block, ctx):  # never called for the op double_dz appended
        assert not (ctx.op.type == "scale" and ctx.op.input("X") == ctx.op.output("Out") == [gz])

    fl.append_backward(loss, parameter_list=[x], callback=[double_dz, count])
    (at, inserted), = positions
    assert inserted == at + 1
    exe = fl.Executor()
    feed = {"x": rng.standard_normal((2, 3))}
    gx, = exe.run(feed=feed, fetch_list=[fl.grad_var_name("x")])
    check(gx, 2 * numeric_grad(loss_of(exe, loss, feed), feed["x"]), "x (dz doubled by the callback)")


def test_pruning_off_path_stop_gradient_and_no_grad_set():
    x = data("x", [3], stop_gradient=True)
    other = data("other", [3])
    a = layers.fc(x, 3, act="tanh")          # fc_0: cut by stop_gradient on a
    a.stop_gradient = True
    b = layers.fc(x, 3)                      # fc_1: cut by no_grad_set
    unused = layers.tanh(layers.fc(other, 3))  # fc_2: off the path
    c = layers.fc(layers.sums([a, b]), 1)
    loss = layers.mean(c)
    block = loss.block
    n_forward = len(block.ops)
    pairs = fl.append_backward(loss, no_grad_set={b.name})
    assert [p.name for p, _ in pairs] == ["fc_3.w_0", "fc_3.b_0"]
    grad_ops = block.ops[n_forward:]
    produced = {n for op in grad_ops for n in op.output_names}
    for var in (a, b, unused, x, other):
        assert fl.grad_var_name(var.name) not in produced, var.name
    assert not any(op.type == "tanh_grad" for op in grad_ops)  # the tanh ops are in a (cut) and unused
    assert unused.name not in {n for op in grad_ops for n in op.input_names}


def test_parameter_order_follows_creation_or_parameter_list():
    x = data("x", [2], stop_gradient=True)
    h = layers.fc(x, 2, bias_attr=False)
    y = layers.fc(h, 2, bias_attr=False)
    loss = layers.mean(layers.fc(y, 1, bias_attr=False))
    assert [p.name for p, _ in fl.append_backward(loss)] == ["fc_0.w_0", "fc_1.w_0", "fc_2.w_0"]


def test_parameter_list_order_and_parameters_without_gradient_are_left_out():
    x = data("x", [2], stop_gradient=True)
    side = layers.fc(x, 2, bias_attr=False)  # fc_0.w_0 never reaches the loss
    loss = layers.mean(layers.fc(layers.fc(x, 2, bias_attr=False), 1, bias_attr=False))
    block = loss.block
    pairs = fl.append_backward(loss, parameter_list=["fc_2.w_0", block.var("fc_0.w_0"), "fc_1.w_0"])
    assert [p.name for p, _ in pairs] == ["fc_2.w_0", "fc_1.w_0"]
    assert side.name


def test_non_scalar_loss_raises():
    x = data("x", [3])
    block = x.block
    fixed = [block.create_var(name=f"c{k}", shape=shape, dtype="float64") for k, shape in enumerate(([3], [2, 1]))]
    for var in fixed:
        block.append_op("fill_constant", outputs={"Out": var}, attrs={"shape": var.shape, "dtype": "float64"})
    n_ops = len(block.ops)
    for bad in fixed + [layers.tanh(x)]:
        with pytest.raises(ValueError, match=f"{bad.name}.*scalar"):
            fl.append_backward(bad)
    assert len(block.ops) == n_ops + 1


def test_gradients_unconnected_none_explicit_stop_gradient_input_and_target_gradients():
    x = data("x", [3], stop_gradient=True)
    u = data("u", [3])
    r = data("r", [3])
    y = layers.tanh(layers.scale(x, 0.7))
    gx, gu = fl.gradients([y], [x, u], target_gradients=[r])
    assert gu is None and gx is not None
    exe = fl.Executor()
    feed = {"x": rng.standard_normal((2, 3)), "r": rng.standard_normal((2, 3)), "u": np.zeros((2, 3))}
    got, = exe.run(feed=feed, fetch_list=[gx])

    def weighted():
        out, = exe.run(feed=feed, fetch_list=[y])
        return float(np.sum(out * feed["r"]))

    check(got, numeric_grad(weighted, feed["x"]), "x with target gradient r")


def test_gradients_seeds_targets_with_ones_and_sums_over_targets():
    x = data("x", [3], stop_gradient=True)
    t1 = layers.tanh(x)
    t2 = layers.scale(x, 3.0)
    gx, = fl.gradients([t1, t2], x)
    exe = fl.Executor()
    feed = {"x": rng.standard_normal((2, 3))}
    got, = exe.run(feed=feed, fetch_list=[gx])

    def total():
        a, b = exe.run(feed=feed, fetch_list=[t1, t2])
        return float(a.sum() + b.sum())

    check(got, numeric_grad(total, feed["x"]), "x")


def test_gradients_of_an_intermediate_variable():
    x = data("x", [3], stop_gradient=True)
    h = layers.tanh(x)
    loss = layers.mean(layers.elementwise_mul(layers.scale(h, 2.0), h))
    gh, = fl.gradients(loss, [h])
    assert gh is not None
    exe = fl.Executor()
    h_value = np.tanh(rng.standard_normal((2, 3)))
    got, = exe.run(feed={h.name: h_value}, fetch_list=[gh])
    f = loss_of(exe, loss, {h.name: h_value})  # feeding h: the executor does not recompute it
    check(got, numeric_grad(f, h_value), "h")
