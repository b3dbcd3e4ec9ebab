"""sequence_mask, sequence_reverse and the lstm / gru layers with sequence_length, against NumPy
recurrences written here (per example, over its valid steps only) and float64 finite differences."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from op_test import check_forward, check_op

rng = np.random.default_rng(5)
T, B, D, H = 5, 3, 3, 4
LENGTHS = np.array([5, 2, 3], np.int64)


def sig(v):
    return 1 / (1 + np.exp(-v))


def test_sequence_mask():
    want = (np.arange(6)[None, :] < LENGTHS[:, None])
    check_forward("sequence_mask", {"X": LENGTHS}, lambda X: want.astype(np.float32), {"maxlen": 6, "out_dtype": "float32"},
                  outputs=("Y",))
    check_forward("sequence_mask", {"X": LENGTHS}, lambda X: want[:, :5].astype(np.int64), {}, outputs=("Y",))
    lengths = layers.data("n", [], dtype="int64")
    assert layers.sequence_mask(lengths, maxlen=7, dtype="float64").shape == (-1, 7)
    with pytest.raises(ValueError, match=r"sequence_mask.*integer lengths"):
        layers.sequence_mask(layers.data("f", [2]), maxlen=3)


def _np_reverse(x, lengths):
    out = x.copy()
    for b, n in enumerate(lengths):
        out[:n, b] = x[:n, b][::-1]
    return out


def test_sequence_reverse_forward_and_gradient():
    x = rng.standard_normal((T, B, 2))
    check_op("sequence_reverse", lambda dt: {"X": x.astype(dt), "Length": LENGTHS},
             lambda X, Length: _np_reverse(X, Length))
    check_op("sequence_reverse", lambda dt: {"X": x.astype(dt)}, lambda X: X[::-1])


def np_lstm(x, h0, c0, params, lengths, bidirec):
    """Per example and direction over its valid steps; params[k] = (Wx, Wh, b)."""
    dirs = 2 if bidirec else 1
    out = np.zeros((T, x.shape[1], H * dirs))
    last_h, last_c = np.zeros((dirs,) + h0.shape[1:]), np.zeros((dirs,) + h0.shape[1:])
    for d in range(dirs):
        wx, wh, bias = params[d]
        for b in range(x.shape[1]):
            h, c = h0[d, b], c0[d, b]
            steps = range(lengths[b])
            for t in (reversed(steps) if d else steps):
                g = x[t, b] @ wx + h @ wh + bias
                c = sig(g[H:2 * H]) * c + sig(g[:H]) * np.tanh(g[3 * H:])
                h = sig(g[2 * H:3 * H]) * np.tanh(c)
                out[t, b, d * H:(d + 1) * H] = h
            last_h[d, b], last_c[d, b] = h, c
    return out, last_h, last_c


def np_gru(x, h0, params, lengths, bidirec):
    dirs = 2 if bidirec else 1
    out = np.zeros((T, x.shape[1], H * dirs))
    last = np.zeros((dirs,) + h0.shape[1:])
    for d in range(dirs):
        wp, bp, w, bias = params[d]
        for b in range(x.shape[1]):
            h = h0[d, b]
            steps = range(lengths[b])
            for t in (reversed(steps) if d else steps):
                g = x[t, b] @ wp + bp + bias.reshape(-1)
                u = sig(g[:H] + h @ w[:, :H])
                r = sig(g[H:2 * H] + h @ w[:, H:2 * H])
                cand = np.tanh(g[2 * H:] + (r * h) @ w[:, 2 * H:])
                h = (1 - u) * h + u * cand
                out[t, b, d * H:(d + 1) * H] = h
            last[d, b] = h
    return out, last


def _build(kind, bidirec, with_lengths, dtype="float64"):
    dirs = 2 if bidirec else 1
    x = fl.data("x", [T, None, D], dtype)
    x.stop_gradient = False
    h0 = fl.data("h0", [dirs, None, H], dtype)
    n = fl.data("n", [None], "int64") if with_lengths else None
    if kind == "lstm":
        c0 = fl.data("c0", [dirs, None, H], dtype)
        out, *last = layers.lstm(x, h0, c0, T, H, is_bidirec=bidirec, sequence_length=n)
    else:
        out, *last = layers.gru(x, h0, T, H, is_bidirec=bidirec, sequence_length=n)
    return x, out, last


def _params(kind, dirs):
    get = fl.fetch_var
    if kind == "lstm":
        return [(get(f"lstm_0.cell{k}.fc.w_0"), get(f"lstm_0.cell{k}.fc.w_1"), get(f"lstm_0.cell{k}.fc.b_0"))
                for k in range(dirs)]
    return [(get(f"gru_0.proj{k}.w_0"), get(f"gru_0.proj{k}.b_0"), get(f"gru_0.cell{k}.w_0"), get(f"gru_0.cell{k}.b_0"))
            for k in range(dirs)]


def _feed(kind, dirs, dtype="float64", with_lengths=True):
    feed = {"x": rng.standard_normal((T, B, D)).astype(dtype), "h0": rng.standard_normal((dirs, B, H)).astype(dtype)}
    if kind == "lstm":
        feed["c0"] = rng.standard_normal((dirs, B, H)).astype(dtype)
    if with_lengths:
        feed["n"] = LENGTHS
    return feed


def _reference(kind, feed, params, lengths, bidirec):
    if kind == "lstm":
        return np_lstm(feed["x"], feed["h0"], feed["c0"], params, lengths, bidirec)
    return np_gru(feed["x"], feed["h0"], params, lengths, bidirec)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bidirec, with_lengths", [(False, False), (True, True)])
def test_forward_matches_numpy(kind, dtype, bidirec, with_lengths):
    dirs = 2 if bidirec else 1
    _, out, last = _build(kind, bidirec, with_lengths, dtype)
    assert out.shape == (T, -1, H * dirs) and all(v.shape == (dirs, -1, H) for v in last)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = _feed(kind, dirs, dtype, with_lengths)
    got = exe.run(feed=feed, fetch_list=[out] + last)
    lengths = LENGTHS if with_lengths else np.full(B, T)
    params = [tuple(np.asarray(p, np.float64) for p in ps) for ps in _params(kind, dirs)]
    want = _reference(kind, {k: np.asarray(v, np.float64) for k, v in feed.items()}, params, lengths, bidirec)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradients_match_finite_differences_and_padding_gets_none(kind):
    x, out, last = _build(kind, True, True)
    weights = layers.data("r", [T, B, 2 * H], dtype="float64", append_batch_size=False)
    loss = layers.reduce_sum(layers.elementwise_mul(out, weights))
    loss = layers.elementwise_add(loss, layers.reduce_sum(last[0]))
    wname = "lstm_0.cell1.fc.w_1" if kind == "lstm" else "gru_0.cell1.w_0"
    block = fl.default_main_program().global_block()
    dx, dw = fl.gradients([loss], [x, block.var(wname)])
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = _feed(kind, 2)
    feed["r"] = rng.standard_normal((T, B, 2 * H))
    gx, gw = exe.run(feed=feed, fetch_list=[dx, dw])
    params = _params(kind, 2)

    def objective(values, ps):
        o, lh, *_ = _reference(kind, values, ps, LENGTHS, True)
        return float(np.sum(o * feed["r"]) + np.sum(lh))

    eps = 1e-6
    num_x = np.zeros_like(feed["x"])
    for idx in np.ndindex(num_x.shape):
        hi, lo = dict(feed), dict(feed)
        hi["x"], lo["x"] = feed["x"].copy(), feed["x"].copy()
        hi["x"][idx] += eps
        lo["x"][idx] -= eps
        num_x[idx] = (objective(hi, params) - objective(lo, params)) / (2 * eps)
    np.testing.assert_allclose(gx, num_x, rtol=1e-6, atol=1e-8)
    for b, n in enumerate(LENGTHS):
        assert np.all(gx[n:, b] == 0), "padded steps must get no gradient"
    slot = 1 if kind == "lstm" else 2
    w = params[1][slot]
    num_w = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        moved = [list(p) for p in params]
        for step, sign in ((eps, 1), (-eps, -1)):
            moved[1][slot] = w.copy()
            moved[1][slot][idx] += step
            num_w[idx] += sign * objective(feed, moved) / (2 * eps)
    np.testing.assert_allclose(gw, num_w, rtol=1e-6, atol=1e-8)


def test_error_clip_and_global_norm_clip_work_through_the_layer():
    """An error clip on rnn_out clips d(loss)/d(out) before the LSTM's gradient ops read it; a global-norm
    clip then scales every parameter gradient to the clip norm. Against the NumPy LSTM's finite differences."""
    x, out, last = _build("lstm", False, True)
    out.error_clip = fl.clip.ErrorClipByValue(max=0.01)
    weights = layers.data("r", [T, B, H], dtype="float64", append_batch_size=False)
    loss = layers.reduce_sum(layers.elementwise_mul(out, weights))
    pairs = fl.append_backward(loss, callback=fl.clip.error_clip_callback)
    fl.clip.set_gradient_clip(fl.clip.GradientClipByGlobalNorm(1e-3))
    clipped = fl.clip.append_gradient_clip_ops(pairs)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = _feed("lstm", 1)
    feed["r"] = rng.standard_normal((T, B, H))
    names = [p.name for p, _ in pairs]
    got = exe.run(feed=feed, fetch_list=[g for _, g in pairs] + [g for _, g in clipped])
    raw, scaled = got[:len(pairs)], got[len(pairs):]
    upstream = np.clip(feed["r"], -0.01, 0.01)
    params = _params("lstm", 1)
    wx = params[0][0]
    eps, num = 1e-6, np.zeros_like(wx)
    for idx in np.ndindex(wx.shape):
        vals = []
        for step in (eps, -eps):
            moved = wx.copy()
            moved[idx] += step
            o = np_lstm(feed["x"], feed["h0"], feed["c0"], [(moved,) + tuple(params[0][1:])], LENGTHS, False)[0]
            vals.append(np.sum(o * upstream))
        num[idx] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(raw[names.index("lstm_0.cell0.fc.w_0")], num, rtol=1e-6, atol=1e-10)
    norm = np.sqrt(sum(np.sum(g ** 2) for g in raw))
    assert np.sqrt(sum(np.sum(g ** 2) for g in scaled)) == pytest.approx(1e-3, rel=1e-9)
    for r, c in zip(raw, scaled):
        np.testing.assert_allclose(c, r * (1e-3 / norm), rtol=1e-9)


def test_bad_input_is_refused_at_build_time():
    x = fl.data("x", [T, None, D])
    h0 = fl.data("h0", [1, None, H])
    c0 = fl.data("c0", [1, None, H])
    with pytest.raises(ValueError, match=r"lstm: input 'x' must be time-major \[max_len=6"):
        layers.lstm(x, h0, c0, 6, H)
    with pytest.raises(ValueError, match=r"lstm: init_h 'h0' must be float32 \[2, -1, 4\]"):
        layers.lstm(x, h0, c0, T, H, num_layers=2)
    with pytest.raises(ValueError, match=r"gru: sequence_length 'n' must be integer \[batch\]"):
        layers.gru(x, h0, T, H, sequence_length=fl.data("n", [None, 1], "float32"))
    with pytest.raises(ValueError, match="dropout_prob"):
        layers.lstm(x, h0, c0, T, H, dropout_prob=1.5)


def test_two_bidirectional_layers_feed_each_other():
    x = fl.data("x", [T, None, D], "float64")
    h0, c0 = fl.data("h0", [4, None, H], "float64"), fl.data("c0", [4, None, H], "float64")
    n = fl.data("n", [None], "int64")
    out, last_h, last_c = layers.lstm(x, h0, c0, T, H, num_layers=2, is_bidirec=True, sequence_length=n,
                                      dropout_prob=0.3, is_test=True)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    feed = {"x": rng.standard_normal((T, B, D)), "h0": rng.standard_normal((4, B, H)),
            "c0": rng.standard_normal((4, B, H)), "n": LENGTHS}
    got = exe.run(feed=feed, fetch_list=[out, last_h, last_c])
    params = [(fl.fetch_var(f"lstm_0.cell{k}.fc.w_0"), fl.fetch_var(f"lstm_0.cell{k}.fc.w_1"),
               fl.fetch_var(f"lstm_0.cell{k}.fc.b_0")) for k in range(4)]
    o1, h1, c1 = np_lstm(feed["x"], feed["h0"][:2], feed["c0"][:2], params[:2], LENGTHS, True)
    o2, h2, c2 = np_lstm(o1, feed["h0"][2:], feed["c0"][2:], params[2:], LENGTHS, True)  # is_test: no dropout
    for g, w in zip(got, (o2, np.concatenate([h1, h2]), np.concatenate([c1, c2]))):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_error_clip_reaches_every_step_hidden_state(kind):
    """error_clip= puts an ErrorClipByValue on each step's hidden state: the callback clips every dL/dh_t
    (one clip op per step and direction, role error_clip), and a tiny bound shrinks the input gradient."""
    def grads(bound):
        main, startup = fl.Program(), fl.Program()
        with fl.program_guard(main, startup), fl.unique_name.guard():
            x = fl.data("x", [T, None, D], "float64")
            x.stop_gradient = False
            h0 = fl.data("h0", [2, None, H], "float64")
            n = fl.data("n", [None], "int64")
            clip = None if bound is None else fl.clip.ErrorClipByValue(bound)
            if kind == "lstm":
                c0 = fl.data("c0", [2, None, H], "float64")
                out, *_ = layers.lstm(x, h0, c0, T, H, is_bidirec=True, sequence_length=n, error_clip=clip)
            else:
                out, _ = layers.gru(x, h0, T, H, is_bidirec=True, sequence_length=n, error_clip=clip)
            loss = layers.reduce_sum(layers.square(out))
            fl.append_backward(loss, parameter_list=[x], callback=fl.clip.error_clip_callback)
        clips = [op for op in main.global_block().ops if op.role == "error_clip"]
        scope = fl.Scope()
        fl.Executor().run(startup, scope=scope)
        feed = _feed(kind, 2)
        np.random.seed(0)
        (gx,) = fl.Executor().run(main, feed=feed, fetch_list=[fl.grad_var_name("x")], scope=scope)
        return len(clips), gx

    n_free, free = grads(None)
    n_clips, clipped = grads(1e-9)
    assert n_free == 0 and n_clips == 2 * T
    assert np.abs(clipped).max() < 1e-6 * np.abs(free).max()
