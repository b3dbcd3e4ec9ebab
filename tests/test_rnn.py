"""Recurrent ops (stack, unstack, fill_constant_batch_size_like, lstm_unit, gru_unit) and StaticRNN."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.kernels import rnn as K
from op_test import check_forward, check_op, run_op

rng = np.random.default_rng(0)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


# ---- ops ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack(axis):
    xs = [rng.standard_normal((2, 3)) for _ in range(4)]
    check_op("stack", lambda dt: {"X": [a.astype(dt) for a in xs]}, lambda X: np.stack(X, axis=axis),
             attrs={"axis": axis})


def test_stack_grad_skips_inputs_without_gradient():
    block = fl.default_main_program().global_block()
    a = block.create_var(name="a", shape=(2, 3), dtype="float64", stop_gradient=False)
    b = block.create_var(name="b", shape=(2, 3), dtype="float64", stop_gradient=True)
    block.append_op("stack", {"X": [a, b, a]}, {"Out": "s"}, {"axis": 1})
    r = block.create_var(name="r", shape=(2, 3, 3), dtype="float64")
    ga, = fl.gradients([block.var("s")], [a], target_gradients=[r])
    rv, av, bv = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    got, = fl.Executor().run(feed={"a": av, "b": bv, "r": rv}, fetch_list=[ga])
    np.testing.assert_allclose(got, rv[:, 0] + rv[:, 2])


@pytest.mark.parametrize("axis", [0, 1])
def test_unstack_forward_and_grad(axis):
    x = rng.standard_normal((3, 4, 2))
    block = fl.default_main_program().global_block()
    xv = block.create_var(name="x", shape=x.shape, dtype="float64", stop_gradient=False)
    n = x.shape[axis]
    block.append_op("unstack", {"X": xv}, {"Out": [f"o{k}" for k in range(n)]}, {"axis": axis})
    outs = [block.var(f"o{k}") for k in range(n)]
    rs = [block.create_var(name=f"r{k}", shape=outs[k].shape, dtype="float64") for k in range(n)]
    gx, = fl.gradients(outs, [xv], target_gradients=rs)
    rv = [rng.standard_normal(o.shape) for o in outs]
    got = fl.Executor().run(feed={"x": x, **{f"r{k}": rv[k] for k in range(n)}}, fetch_list=outs + [gx])
    for k in range(n):
        np.testing.assert_array_equal(got[k], np.take(x, k, axis=axis))
    np.testing.assert_allclose(got[-1], np.stack(rv, axis=axis))  # d(sum_k o_k * r_k)/dx


def test_stack_unstack_infer_and_errors():
    block = fl.default_main_program().global_block()
    a = block.create_var(name="a", shape=(-1, 3), dtype="float32")
    b = block.create_var(name="b", shape=(-1, 4), dtype="float32")
    block.append_op("stack", {"X": [a, a]}, {"Out": "s"}, {"axis": 0})
    assert block.var("s").shape == (2, -1, 3) and block.var("s").dtype == np.float32
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"stack.*'b'.*\[-1, 4\]"):
        block.append_op("stack", {"X": [a, b]}, {"Out": "bad"})
    with pytest.raises(ValueError, match="unstack.*dimension 0 must be known"):
        block.append_op("unstack", {"X": a}, {"Out": ["u"]}, {"axis": 0})
    with pytest.raises(ValueError, match="axis=3"):
        block.append_op("unstack", {"X": a}, {"Out": ["u"]}, {"axis": 3})
    assert len(block.ops) == n_ops and "bad" not in block.vars and "u" not in block.vars


def test_fill_constant_batch_size_like():
    ref = rng.standard_normal((5, 7, 2)).astype(np.float32)
    got = run_op("fill_constant_batch_size_like", {"Input": ref},
                 {"shape": [-1, 3], "value": 1.5, "dtype": "float64", "input_dim_idx": 1})["Out"]
    np.testing.assert_array_equal(got, np.full((7, 3), 1.5))
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=(4, -1, 2), dtype="float32")
    block.append_op("fill_constant_batch_size_like", {"Input": x}, {"Out": "z"},
                    {"shape": [2, 0], "input_dim_idx": 1, "output_dim_idx": 1})
    assert block.var("z").shape == (2, -1)
    with pytest.raises(ValueError, match="fill_constant_batch_size_like.*input_dim_idx=5"):
        block.append_op("fill_constant_batch_size_like", {"Input": x}, {"Out": "bad"},
                        {"shape": [2, 0], "input_dim_idx": 5})
    assert "bad" not in block.vars


def lstm_ref(X, C_prev, forget_bias):
    h = C_prev.shape[1]
    i, f, o, j = (X[:, k * h:(k + 1) * h] for k in range(4))
    c = sigmoid(f + forget_bias) * C_prev + sigmoid(i) * np.tanh(j)
    gate = np.concatenate([sigmoid(i), sigmoid(f + forget_bias), sigmoid(o), np.tanh(j)], axis=1)
    return {"C": c.astype(X.dtype), "H": (sigmoid(o) * np.tanh(c)).astype(X.dtype), "Gate": gate.astype(X.dtype)}


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_lstm_unit_op(forget_bias):
    x, c = rng.standard_normal((3, 8)), rng.standard_normal((3, 2))
    check_op("lstm_unit", lambda dt: {"X": x.astype(dt), "C_prev": c.astype(dt)},
             lambda X, C_prev: lstm_ref(X, C_prev, forget_bias), attrs={"forget_bias": forget_bias},
             wrt=("X", "C_prev"), outputs=("C", "H", "Gate"), grad_outputs=("C", "H"))


def test_lstm_unit_op_on_its_parallel_kernels(monkeypatch):
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 1)  # every cell takes its parallel twin
    x, c = rng.standard_normal((5, 12)), rng.standard_normal((5, 3))
    check_op("lstm_unit", lambda dt: {"X": x.astype(dt), "C_prev": c.astype(dt)},
             lambda X, C_prev: lstm_ref(X, C_prev, 1.0), attrs={"forget_bias": 1.0},
             wrt=("X", "C_prev"), outputs=("C", "H", "Gate"), grad_outputs=("C", "H"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_unit_parallel_kernels_give_the_serial_kernels_bits(dtype):
    n, h = 33, 37  # rows that do not split evenly; a hidden size off the SIMD width
    x, c = (4 * rng.standard_normal((n, 4 * h))).astype(dtype), rng.standard_normal((n, h)).astype(dtype)
    dh, dc = rng.standard_normal((n, h)).astype(dtype), rng.standard_normal((n, h)).astype(dtype)
    fresh = lambda *shapes: [np.full(s, np.nan, dtype) for s in shapes]  # noqa: E731
    serial = K.lstm_unit_into(x, c, 0.5, *fresh(c.shape, c.shape, x.shape))
    twin = K.lstm_unit_into_parallel(x, c, 0.5, *fresh(c.shape, c.shape, x.shape))
    for a, b in zip(serial, twin):
        np.testing.assert_array_equal(a, b)
    gate, cell = serial[2], serial[0]
    serial = K.lstm_unit_grad_into(gate, c, cell, dh, dc, *fresh(x.shape, c.shape))
    twin = K.lstm_unit_grad_into_parallel(gate, c, cell, dh, dc, *fresh(x.shape, c.shape))
    for a, b in zip(serial, twin):
        np.testing.assert_array_equal(a, b)


def test_float32_lstm_unit_and_grad_near_float64_with_saturated_gates():
    # the float32 kernels use the vectorizing expf_; H = 37 leaves a remainder after the SIMD lanes
    n, h = 5, 37
    x, c = 8 * rng.standard_normal((n, 4 * h)), 4 * rng.standard_normal((n, h))
    dh, dc = rng.standard_normal((n, h)), rng.standard_normal((n, h))
    f32 = np.float32
    got = run_op("lstm_unit", {"X": x.astype(f32), "C_prev": c.astype(f32)}, {"forget_bias": 1.0},
                 outputs=("C", "H", "Gate"))
    want = lstm_ref(x.astype(f32).astype(float), c.astype(f32).astype(float), 1.0)
    for slot in ("C", "H", "Gate"):
        np.testing.assert_allclose(got[slot], want[slot], rtol=4e-7, atol=4e-7, err_msg=slot)
    # backward from the float64 gates, by the chain rule written out in NumPy
    i, f, o, j = np.split(want["Gate"], 4, axis=1)
    tc = np.tanh(want["C"])
    g = dc + dh * o * (1 - tc ** 2)
    want_dx = np.concatenate([g * j * i * (1 - i), g * c.astype(f32) * f * (1 - f), dh * tc * o * (1 - o),
                              g * i * (1 - j ** 2)], axis=1)
    gates = {s: v.astype(f32) for s, v in got.items()}
    dx, dcp = K.lstm_unit_grad_into(gates["Gate"], c.astype(f32), gates["C"], dh.astype(f32), dc.astype(f32),
                                    np.empty((n, 4 * h), f32), np.empty((n, h), f32))
    assert dx.dtype == dcp.dtype == np.float32
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(dcp, g * f, rtol=1e-5, atol=2e-6)


def test_lstm_unit_infer_and_errors():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=(-1, 8), dtype="float32")
    c = block.create_var(name="c", shape=(-1, 2), dtype="float32")
    block.append_op("lstm_unit", {"X": x, "C_prev": c}, {"C": "c1", "H": "h1", "Gate": "g1"})
    assert block.var("h1").shape == (-1, 2) and block.var("c1").dtype == np.float32
    assert block.var("g1").shape == (-1, 8)
    c3 = block.create_var(name="c3", shape=(-1, 3), dtype="float32")
    with pytest.raises(ValueError, match=r"lstm_unit.*X='x' shape=\[-1, 8\].*C_prev='c3' shape=\[-1, 3\]"):
        block.append_op("lstm_unit", {"X": x, "C_prev": c3}, {"C": "bad_c", "H": "bad_h", "Gate": "bad_g"})
    assert "bad_h" not in block.vars


def gru_ref(Input, HiddenPrev, Weight, Bias, origin_mode):
    h = HiddenPrev.shape[1]
    g = Input + Bias.reshape(-1)
    u = sigmoid(g[:, :h] + HiddenPrev @ Weight[:, :h])
    r = sigmoid(g[:, h:2 * h] + HiddenPrev @ Weight[:, h:2 * h])
    rh = r * HiddenPrev
    c = np.tanh(g[:, 2 * h:] + rh @ Weight[:, 2 * h:])
    new = u * HiddenPrev + (1 - u) * c if origin_mode else (1 - u) * HiddenPrev + u * c
    dt = Input.dtype
    return {"Gate": np.concatenate([u, r, c], 1).astype(dt), "ResetHiddenPrev": rh.astype(dt), "Hidden": new.astype(dt)}


@pytest.mark.parametrize("origin_mode", [False, True])
def test_gru_unit_op(origin_mode):
    arrays = {"Input": rng.standard_normal((3, 6)), "HiddenPrev": rng.standard_normal((3, 2)),
              "Weight": rng.standard_normal((2, 6)), "Bias": rng.standard_normal((1, 6))}
    check_op("gru_unit", lambda dt: {k: v.astype(dt) for k, v in arrays.items()},
             lambda **kw: gru_ref(**kw, origin_mode=origin_mode), attrs={"origin_mode": origin_mode},
             wrt=("Input", "HiddenPrev", "Weight", "Bias"), outputs=("Gate", "ResetHiddenPrev", "Hidden"),
             grad_outputs=("Hidden",))


def test_gru_unit_without_bias_and_errors():
    arrays = {"Input": rng.standard_normal((2, 6)), "HiddenPrev": rng.standard_normal((2, 2)),
              "Weight": rng.standard_normal((2, 6))}
    check_forward("gru_unit", arrays, lambda **kw: gru_ref(**kw, Bias=np.zeros(6), origin_mode=False),
                  outputs=("Gate", "ResetHiddenPrev", "Hidden"))
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=(-1, 6), dtype="float32")
    h = block.create_var(name="h", shape=(-1, 2), dtype="float32")
    w = block.create_var(name="w", shape=(2, 9), dtype="float32")
    with pytest.raises(ValueError, match=r"gru_unit.*Weight='w' shape=\[2, 9\]"):
        block.append_op("gru_unit", {"Input": x, "HiddenPrev": h, "Weight": w},
                        {"Gate": "g", "ResetHiddenPrev": "r", "Hidden": "bad"})
    assert "bad" not in block.vars


# ---- StaticRNN ----------------------------------------------------------------------------------

T, B, D, H = 4, 3, 2, 5


def build_rnn(dtype="float64", error_clip=None, use_init=False):
    """h_t = tanh(x_t Wx + h_{t-1} Wh + b); loss = mean(sum over steps of h_t * r_t)."""
    x = layers.data("x", [T, B, D], dtype=dtype, append_batch_size=False, stop_gradient=False)
    h0 = layers.data("h0", [B, H], dtype=dtype, append_batch_size=False, stop_gradient=False) if use_init else None
    r = layers.data("r", [T, B, H], dtype=dtype, append_batch_size=False)
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(init=h0) if use_init else rnn.memory(shape=[-1, H], batch_ref=x_t)
        h = layers.fc([x_t, h_prev], size=H, act="tanh")
        if error_clip is not None:
            h.error_clip = error_clip
        rnn.update_memory(h_prev, h)
        rnn.step_output(h)
    hs = rnn()
    loss = layers.scale(layers.mean(layers.elementwise_mul(hs, r)), scale=float(T * B * H))
    return x, h0, r, rnn, h, hs, loss


def numpy_rnn(xs, wx, wh, b, h0):
    h, out = h0, []
    for t in range(len(xs)):
        h = np.tanh(xs[t] @ wx + h @ wh + b)
        out.append(h)
    return np.stack(out)


def numpy_bptt(xs, wx, wh, b, h0, r, clip=None):
    """Gradients of sum(hs * r) by hand, clipping each dL/dh_t (complete) to [-clip, clip]."""
    hs = numpy_rnn(xs, wx, wh, b, h0)
    dwx, dwh, db = np.zeros_like(wx), np.zeros_like(wh), np.zeros_like(b)
    carry = np.zeros_like(h0)
    for t in reversed(range(len(xs))):
        dh = r[t] + carry
        if clip is not None:
            dh = np.clip(dh, -clip, clip)
        da = dh * (1 - hs[t] ** 2)
        prev = hs[t - 1] if t else h0
        dwx += xs[t].T @ da
        dwh += prev.T @ da
        db += da.sum(0)
        carry = da @ wh.T
    return dwx, dwh, db


def _params():
    return [fl.fetch_var(n) for n in ("fc_0.w_0", "fc_0.w_1", "fc_0.b_0")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("use_init", [False, True])
def test_static_rnn_forward_matches_numpy_loop(dtype, use_init):
    x, h0, r, rnn, h, hs, _ = build_rnn(dtype, use_init=use_init)
    assert hs.shape == (T, B, H) and hs.dtype == np.dtype(dtype)
    assert fl.default_main_program().num_blocks == 1  # the recording block is gone
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((T, B, D)).astype(dtype)
    h0v = rng.standard_normal((B, H)).astype(dtype)
    feed = {"x": xs, **({"h0": h0v} if use_init else {})}
    got, last = exe.run(feed=feed, fetch_list=[hs, rnn.step_var(h)])
    wx, wh, b = _params()
    want = numpy_rnn(xs, wx, wh, b, h0v if use_init else np.zeros((B, H), dtype))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(last, got[-1])


def _finite_diff(exe, feed, loss, arrays, eps=1e-6):
    """Central differences of loss w.r.t. each array, perturbed in place (scope values or feeds)."""
    out = []
    for a in arrays:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = exe.run(feed=feed, fetch_list=[loss])[0].sum()
            a[idx] = old - eps
            down = exe.run(feed=feed, fetch_list=[loss])[0].sum()
            a[idx] = old
            g[idx] = (up - down) / (2 * eps)
        out.append(g)
    return out


def test_static_rnn_gradients_match_finite_differences():
    x, h0, r, rnn, h, hs, loss = build_rnn("float64", use_init=True)
    params = [fl.default_main_program().global_block().var(n) for n in ("fc_0.w_0", "fc_0.w_1", "fc_0.b_0")]
    grads = fl.gradients([loss], params + [x, h0])
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": rng.standard_normal((T, B, D)), "h0": rng.standard_normal((B, H)),
            "r": rng.standard_normal((T, B, H))}
    analytic = exe.run(feed=feed, fetch_list=grads)
    scope = fl.global_scope().arrays  # perturb parameters where the plan reads them
    numeric = _finite_diff(exe, feed, loss, [scope[p.name] for p in params] + [feed["x"], feed["h0"]])
    for a, n, name in zip(analytic, numeric, ["wx", "wh", "b", "x", "h0"]):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8, err_msg=name)


def test_error_clip_applies_to_every_step():
    clip = 0.3
    x, h0, r, rnn, h, hs, loss = build_rnn("float64", error_clip=fl.clip.ErrorClipByValue(clip), use_init=True)
    block = fl.default_main_program().global_block()
    clipped = [n for n, v in block.vars.items() if v.error_clip is not None]
    assert len(clipped) == T and all(f"@step{t}" in clipped[t] for t in range(T))
    pg = fl.append_backward(loss, callback=fl.clip.error_clip_callback)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": rng.standard_normal((T, B, D)), "h0": rng.standard_normal((B, H)),
            "r": 2 * rng.standard_normal((T, B, H))}
    got = exe.run(feed=feed, fetch_list=[g for _, g in pg])
    wx, wh, b = _params()
    want = numpy_bptt(feed["x"], wx, wh, b, feed["h0"], feed["r"], clip=clip)
    unclipped = numpy_bptt(feed["x"], wx, wh, b, feed["h0"], feed["r"])
    assert not np.allclose(want[1], unclipped[1])  # the clip matters for this data
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.reshape(w.shape), w, rtol=1e-10, atol=1e-12)


def test_lstm_in_static_rnn_matches_numpy():
    x = layers.data("x", [T, B, D], dtype="float64", append_batch_size=False)
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev, forget_bias=1.0)
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
        rnn.step_output(h)
    hs = rnn()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((T, B, D))
    got, = exe.run(feed={"x": xs}, fetch_list=[hs])
    wx, wh, b = [fl.fetch_var(n) for n in ("lstm_unit_0.fc.w_0", "lstm_unit_0.fc.w_1", "lstm_unit_0.fc.b_0")]
    hv, cv = np.zeros((B, H)), np.zeros((B, H))
    for t in range(T):
        out = lstm_ref(xs[t] @ wx + hv @ wh + b, cv, 1.0)
        hv, cv = out["H"], out["C"]
        np.testing.assert_allclose(got[t], hv, rtol=1e-12, atol=1e-12)


def test_gru_unit_layer_in_static_rnn_runs():
    x = layers.data("x", [T, B, D], dtype="float64", append_batch_size=False)
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        h, _, _ = layers.gru_unit(layers.fc(x_t, 3 * H), h_prev, 3 * H)
        rnn.update_memory(h_prev, h)
        rnn.step_output(h)
    hs = rnn()
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((T, B, D))
    got, = exe.run(feed={"x": xs}, fetch_list=[hs])
    w, b = fl.fetch_var("gru_unit_0.w_0"), fl.fetch_var("gru_unit_0.b_0")
    fw, fb = fl.fetch_var("fc_0.w_0"), fl.fetch_var("fc_0.b_0")
    hv = np.zeros((B, H))
    for t in range(T):
        hv = gru_ref(xs[t] @ fw + fb, hv, w, b, False)["Hidden"]
        np.testing.assert_allclose(got[t], hv, rtol=1e-12, atol=1e-12)


def test_static_rnn_misuse_raises():
    x = layers.data("x", [T, B, D], append_batch_size=False)
    rnn = layers.StaticRNN()
    with pytest.raises(RuntimeError, match="inside"):
        rnn.step_input(x)
    with pytest.raises(ValueError, match="never updated"):
        with rnn.step():
            x_t = rnn.step_input(x)
            rnn.memory(shape=[-1, H], batch_ref=x_t)
    assert fl.default_main_program().current_block().idx == 0
    rnn2 = layers.StaticRNN()
    with pytest.raises(ValueError, match="seq_len"):
        with rnn2.step():
            rnn2.step_input(layers.data("y", [5, 2], append_batch_size=False))
            rnn2.step_input(x)
    rnn3 = layers.StaticRNN()
    with pytest.raises(ValueError, match="cannot be updated by"):
        with rnn3.step():
            x_t = rnn3.step_input(x)
            h = rnn3.memory(shape=[-1, D], batch_ref=x_t)
            rnn3.update_memory(h, layers.fc(x_t, size=D + 1))


def test_unroll_cost_is_linear():
    """Op count grows linearly with seq_len and each step's ops are renamed copies."""
    x = layers.data("x", [50, 2, 3], append_batch_size=False)
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, 4], batch_ref=x_t)
        h = layers.fc([x_t, h_prev], size=4, act="tanh")
        rnn.update_memory(h_prev, h)
    ops = fl.default_main_program().global_block().ops
    step_ops = [op for op in ops if op.type == "tanh"]
    assert len(step_ops) == 50
    assert [op.output("Out")[0].rsplit("@step", 1)[1] for op in step_ops] == [str(t) for t in range(50)]


def _projection_rnn(T=4, hidden=3, clip_projection=False):
    x = fl.layers.data("x", [T, -1, 2], dtype="float64", append_batch_size=False)
    rnn = fl.layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
        proj = fl.layers.fc(x_t, size=hidden, bias_attr=False, param_attr=fl.ParamAttr(name="wx"))
        if clip_projection:
            proj.error_clip = fl.clip.ErrorClipByValue(1.0)
        h = fl.layers.tanh(proj + fl.layers.fc(h_prev, size=hidden, bias_attr=False, param_attr=fl.ParamAttr(name="wh")))
        rnn.update_memory(h_prev, h)
        rnn.step_output(h)
    return proj, rnn, rnn()


def test_state_free_step_ops_run_once_over_the_sequence():
    T = 4
    proj, rnn, hs = _projection_rnn(T)
    block = fl.default_main_program().global_block()
    muls = [op for op in block.ops if op.type == "mul"]
    assert len(muls) == T + 1  # one projection of all of x, T recurrent products
    assert muls[0].input("X") == ["x"] and muls[0].attrs["x_num_col_dims"] == 2
    loss = fl.layers.mean(hs)
    (wx, gwx), (wh, gwh) = fl.append_backward(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.random.default_rng(0).standard_normal((T, 2, 2))
    out, g1, g2 = exe.run(feed={"x": xs}, fetch_list=[hs, gwx, gwh])
    Wx, Wh = fl.fetch_var("wx"), fl.fetch_var("wh")
    h, hs_np = np.zeros((2, 3)), []
    for t in range(T):  # the same net as a NumPy loop, and its backward
        h = np.tanh(xs[t] @ Wx + h @ Wh)
        hs_np.append(h)
    np.testing.assert_allclose(out, np.stack(hs_np), rtol=1e-12)
    dh = np.zeros((2, 3))
    dWx, dWh = np.zeros_like(Wx), np.zeros_like(Wh)
    for t in reversed(range(T)):
        dz = (dh + 1.0 / out.size) * (1 - hs_np[t] ** 2)
        dWx += xs[t].T @ dz
        dWh += (hs_np[t - 1] if t else np.zeros((2, 3))).T @ dz
        dh = dz @ Wh.T
    np.testing.assert_allclose(g1, dWx, rtol=1e-10)
    np.testing.assert_allclose(g2, dWh, rtol=1e-10)
    assert rnn.step_var(proj, 2).name == f"{proj.name}@step2"  # a hoisted variable is still per step


def test_an_op_whose_output_carries_an_error_clip_stays_in_the_loop():
    T = 3
    _projection_rnn(T, clip_projection=True)
    block = fl.default_main_program().global_block()
    assert sum(op.type == "mul" for op in block.ops) == 2 * T
    clipped = [v for v in block.vars.values() if v.error_clip is not None]
    assert len(clipped) == T  # every step's projection keeps its clip


def test_no_gradient_flows_back_through_the_saved_lstm_gates():
    x = fl.layers.data("x", [8], dtype="float64", stop_gradient=False)
    c = fl.layers.data("c", [2], dtype="float64", stop_gradient=False)
    block = fl.default_main_program().global_block()
    block.append_op("lstm_unit", {"X": x, "C_prev": c}, {"C": "c1", "H": "h1", "Gate": "g1"})
    dx, = fl.gradients([block.var("g1")], [x])
    assert dx is None  # Gate is a saved value, not a differentiable output
