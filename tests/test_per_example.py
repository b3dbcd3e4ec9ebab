"""Per-example norms and the clipped update (fluidlite/per_example.py) against per-example gradients
computed independently: NumPy backprop written out per example (MLP, embedding classifier, vanilla RNN
with shared weights). GRU, LSTM, CNNs, matmul and layer_norm: tests/test_per_example_models.py."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _softmax_ce_grad(z, label):
    p = np.exp(z - z.max())
    p /= p.sum()
    p[label] -= 1.0
    return p


def _run_private(build, feed, clip_norm, dtype="float32", loss_kind="mean", lr=0.0):
    """Builds `build()` -> per-example loss l, minimizes mean(l) (or reduce_sum) with the per-example clip;
    returns (norms, {param: clipped grad}, {param: initial value}, program, scope)."""
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 1  # the same initial parameters every call (conv2d's Normal is unseeded otherwise)
    with fl.program_guard(main, startup), fl.unique_name.guard():
        per_example = build(dtype)
        loss = layers.mean(per_example) if loss_kind == "mean" else layers.reduce_sum(per_example)
        _, pairs = fl.optimizer.SGD(lr).minimize(loss, grad_clip=fl.clip.GradientClipPerExample(clip_norm))
    fl.verify(main)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    params = {p.name: fl.fetch_var(p.name, scope).copy() for p, _ in pairs}
    norm = fl.clip.per_example_norm_var(main)
    out = exe.run(main, feed=feed, fetch_list=[norm] + [g for _, g in pairs], scope=scope)
    return out[0], {p.name: g for (p, _), g in zip(pairs, out[1:])}, params, main, scope


def _check(norms, grads, per_example, clip_norm, rtol, mean=True):
    """norms vs the NumPy per-example norms, grads vs sum_i c_i g_i (/ B for a mean loss)."""
    ref_norms = np.sqrt([sum(float((g.astype(np.float64) ** 2).sum()) for g in pe.values()) for pe in per_example])
    assert norms.dtype == np.float32  # SPEC 10: the exposed norms are float32 whatever the model's dtype
    np.testing.assert_allclose(norms, ref_norms, rtol=max(rtol, 1e-6))
    scale = np.minimum(1.0, clip_norm / ref_norms)
    assert (scale < 1).any() and (scale == 1).any(), "the test needs clipped and unclipped examples"
    for name, got in grads.items():
        ref = sum(c * pe[name] for c, pe in zip(scale, per_example)) / (len(per_example) if mean else 1)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# ---- MLP -----------------------------------------------------------------------------------------

def _mlp(dtype):
    x = layers.data("x", [5], dtype=dtype)
    y = layers.data("y", [1], dtype="int64")
    h = layers.fc(x, 7, act="tanh")
    return layers.softmax_with_cross_entropy(layers.fc(h, 3), y)


def _mlp_numpy(p, xs, ys):
    w0, b0, w1, b1 = p["fc_0.w_0"], p["fc_0.b_0"], p["fc_1.w_0"], p["fc_1.b_0"]
    out = []
    for x, y in zip(xs.astype(np.float64), ys[:, 0]):
        h = np.tanh(x @ w0 + b0)
        d = _softmax_ce_grad(h @ w1 + b1, y)
        dz = (w1 @ d) * (1 - h ** 2)
        out.append({"fc_0.w_0": np.outer(x, dz), "fc_0.b_0": dz, "fc_1.w_0": np.outer(h, d), "fc_1.b_0": d})
    return out


def _mlp_data(batch, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": (3 * rng.standard_normal((batch, 5))).astype(dtype), "y": rng.integers(0, 3, (batch, 1))}


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-4), ("float64", 1e-10)])
def test_mlp_norms_and_clipped_mean_match_numpy(dtype, rtol):
    feed = _mlp_data(8, dtype)
    norms, grads, params, _, _ = _run_private(_mlp, feed, 1.0, dtype)  # a first pass to learn the norms
    clip_norm = float(np.median(norms))
    norms, grads, params, _, _ = _run_private(_mlp, feed, clip_norm, dtype)
    assert norms.shape == (8,) and norms.dtype == np.float32
    _check(norms, grads, _mlp_numpy(params, feed["x"], feed["y"]), clip_norm, rtol)


def test_reduce_sum_loss_drops_the_one_over_b():
    feed = _mlp_data(6, "float64", seed=1)
    norms, grads, params, _, _ = _run_private(_mlp, feed, 3.7, "float64", loss_kind="sum")
    _check(norms, grads, _mlp_numpy(params, feed["x"], feed["y"]), 3.7, 1e-10, mean=False)


def test_batch_of_one_and_the_update_uses_the_clipped_gradient():
    feed = _mlp_data(1, "float64", seed=2)
    norms, grads, params, main, scope = _run_private(_mlp, feed, 0.01, "float64", lr=0.5)
    pe = _mlp_numpy(params, feed["x"], feed["y"])[0]
    ref_norm = np.sqrt(sum(float((g ** 2).sum()) for g in pe.values()))
    np.testing.assert_allclose(norms, [ref_norm], rtol=1e-6)
    scale = min(1.0, 0.01 / ref_norm)
    assert scale < 1
    for name, g in pe.items():
        np.testing.assert_allclose(grads[name], scale * g, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(fl.fetch_var(name, scope), params[name] - 0.5 * scale * g, rtol=1e-10, atol=1e-14)


# ---- embedding classifier: ids [B, L], a 3-D fc over the L tokens, summed ----------------------------

V, L, E, H = 6, 5, 4, 3


def _embedding_net(dtype):
    ids = layers.data("ids", [L], dtype="int64")
    y = layers.data("y", [1], dtype="int64")
    emb = layers.embedding(ids, size=[V, E], padding_idx=0, dtype=dtype)  # [-1, L, E]
    h = layers.fc(emb, H, num_flatten_dims=2, act="tanh")  # [-1, L, H]: one weight used at L positions
    return layers.softmax_with_cross_entropy(layers.fc(layers.reduce_sum(h, dim=1), 2), y)


def _embedding_numpy(p, ids, ys):
    table, w0, b0, w1, b1 = (p[n] for n in ("embedding_0.w_0", "fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_1.b_0"))
    out = []
    for row, y in zip(ids, ys[:, 0]):
        e = np.where((row == 0)[:, None], 0.0, table[row])
        a = np.tanh(e @ w0 + b0)
        s = a.sum(axis=0)
        d = _softmax_ce_grad(s @ w1 + b1, y)
        dz = (w1 @ d)[None, :] * (1 - a ** 2)
        g_table = np.zeros_like(table)
        for pos, i in enumerate(row):
            if i != 0:
                g_table[i] += dz[pos] @ w0.T
        out.append({"embedding_0.w_0": g_table, "fc_0.w_0": e.T @ dz, "fc_0.b_0": dz.sum(axis=0),
                    "fc_1.w_0": np.outer(s, d), "fc_1.b_0": d})
    return out


def test_embedding_classifier_sums_repeated_ids():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, (7, L))  # a vocabulary of 6 over 5 positions: ids repeat, 0 is padding
    ids[0] = [2, 2, 2, 0, 0]
    feed = {"ids": ids, "y": rng.integers(0, 2, (7, 1))}
    norms, _, _, _, _ = _run_private(_embedding_net, feed, 1.0, "float64")
    clip_norm = float(np.median(norms))
    norms, grads, params, _, _ = _run_private(_embedding_net, feed, clip_norm, "float64")
    _check(norms, grads, _embedding_numpy(params, ids, feed["y"]), clip_norm, 1e-10)


# ---- StaticRNN: a vanilla RNN whose weights every step shares --------------------------------------

T, D, R = 4, 3, 5


def _rnn(dtype):
    x = layers.data("x", [T, -1, D], dtype=dtype, append_batch_size=False)
    y = layers.data("y", [1], dtype="int64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, R], batch_ref=x_t)
        h = layers.fc([x_t, h_prev], R, act="tanh")
        rnn.update_memory(h_prev, h)
    return layers.softmax_with_cross_entropy(layers.fc(rnn.step_var(h), 2), y)


def _rnn_numpy(p, xs, ys):
    wx, wh, b, wo, bo = (p[n] for n in ("fc_0.w_0", "fc_0.w_1", "fc_0.b_0", "fc_1.w_0", "fc_1.b_0"))
    out = []
    for i, y in enumerate(ys[:, 0]):
        hs = [np.zeros(R)]
        for t in range(T):
            hs.append(np.tanh(xs[t, i] @ wx + hs[-1] @ wh + b))
        d = _softmax_ce_grad(hs[-1] @ wo + bo, y)
        g = {"fc_1.w_0": np.outer(hs[-1], d), "fc_1.b_0": d, "fc_0.w_0": 0, "fc_0.w_1": 0, "fc_0.b_0": 0}
        dh = wo @ d
        for t in range(T - 1, -1, -1):
            dz = dh * (1 - hs[t + 1] ** 2)
            g["fc_0.w_0"] = g["fc_0.w_0"] + np.outer(xs[t, i], dz)
            g["fc_0.w_1"] = g["fc_0.w_1"] + np.outer(hs[t], dz)
            g["fc_0.b_0"] = g["fc_0.b_0"] + dz
            dh = wh @ dz
        out.append(g)
    return out


def test_static_rnn_shared_weights_match_numpy_bptt():
    rng = np.random.default_rng(4)
    feed = {"x": (2 * rng.standard_normal((T, 6, D))), "y": rng.integers(0, 2, (6, 1))}
    norms, _, _, main, _ = _run_private(_rnn, feed, 1.0, "float64")
    # the input projection is hoisted over the sequence (one [T, B, D] product); the recurrent one runs per step
    ops = main.global_block().ops
    norm_ops = [op for op in ops if op.type == "dp_linear_norm"]
    assert sorted(len(op.input("A")) for op in norm_ops) == [1, 1, T]
    assert any(len(main.global_block().var(op.input("A")[0]).shape) == 3 for op in norm_ops)
    clip_norm = float(np.median(norms))
    norms, grads, params, _, _ = _run_private(_rnn, feed, clip_norm, "float64")
    _check(norms, grads, _rnn_numpy(params, feed["x"], feed["y"]), clip_norm, 1e-10)


def test_the_checks_can_fail():
    """A wrong clip norm in the reference (or a wrong norm) is caught."""
    feed = _mlp_data(8, "float64")
    norms, grads, params, _, _ = _run_private(_mlp, feed, 0.8, "float64")
    ref = _mlp_numpy(params, feed["x"], feed["y"])
    with pytest.raises(AssertionError):
        _check(norms, grads, ref, 0.7, 1e-6)
    with pytest.raises(AssertionError):
        _check(norms * 1.01, grads, ref, 0.8, 1e-6)
    with pytest.raises(AssertionError):
        _check(norms.astype(np.float64), grads, ref, 0.8, 1e-6)
