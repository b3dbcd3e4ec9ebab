"""Per-example norms and clipped sums for recurrent and convolutional nets (a GRU and an LSTM whose weights
every unrolled step shares, a CNN with grouped convolutions) against per-example gradients by central
finite differences of a NumPy forward pass written here, in float64."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from test_per_example import _check, _run_private

T, D, H, B = 4, 3, 4, 5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ce(z, y):
    """Per-example softmax cross entropy of logits z [B, K] and labels y [B, 1]."""
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), y[:, 0]]


def _fd_per_example(losses, params, h=1e-6):
    """[{name: d l_i / d param}] for every example i, where losses(params) -> [B] per-example losses."""
    n = len(losses(params))
    out = [{k: np.zeros_like(v) for k, v in params.items()} for _ in range(n)]
    for name, p in params.items():
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            plus = losses(params)
            p[idx] = old - h
            minus = losses(params)
            p[idx] = old
            for i in range(n):
                out[i][name][idx] = (plus[i] - minus[i]) / (2 * h)
    return out


def _clip_at_median(build, feed):
    """Runs once to learn the norms, then again clipping at their median: some examples clipped, some not."""
    norms, *_ = _run_private(build, feed, 1.0, "float64")
    clip = float(np.median(norms))
    return clip, _run_private(build, feed, clip, "float64")


# ---- GRU: StaticRNN over gru_unit (input projection outside the cell, the cell's weight shared) ---------

def _gru(dtype):
    x = layers.data("x", [T, -1, D], dtype=dtype, append_batch_size=False)
    y = layers.data("y", [1], dtype="int64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        h, _, _ = layers.gru_unit(layers.fc(x_t, 3 * H), h_prev, 3 * H)
        rnn.update_memory(h_prev, h)
    return layers.softmax_with_cross_entropy(layers.fc(rnn.step_var(h), 2), y)


def _gru_losses(xs, ys):
    def losses(p):
        win, bin_, w, b, wo, bo = (p[n] for n in ("fc_0.w_0", "fc_0.b_0", "gru_unit_0.w_0", "gru_unit_0.b_0",
                                                  "fc_1.w_0", "fc_1.b_0"))
        h = np.zeros((xs.shape[1], H))
        for t in range(T):
            pre = xs[t] @ win + bin_ + b.reshape(-1)
            ur = _sigmoid(pre[:, :2 * H] + h @ w[:, :2 * H])
            u, r = ur[:, :H], ur[:, H:]
            c = np.tanh(pre[:, 2 * H:] + (r * h) @ w[:, 2 * H:])
            h = (1 - u) * h + u * c
        return _ce(h @ wo + bo, ys)
    return losses


def test_gru_shared_weights_match_numpy_per_example_gradients():
    rng = np.random.default_rng(11)
    feed = {"x": 1.5 * rng.standard_normal((T, B, D)), "y": rng.integers(0, 2, (B, 1))}
    clip, (norms, grads, params, main, _) = _clip_at_median(_gru, feed)
    ops = [op for op in main.global_block().ops if op.type == "dp_gru_weight_norm"]
    assert len(ops) == 1 and len(ops[0].input("HiddenPrev")) == T  # one norm over the T steps sharing it
    assert not any(op.type == "gru_unit_grad" and op.output("Weight@GRAD") for op in main.global_block().ops)
    _check(norms, grads, _fd_per_example(_gru_losses(feed["x"], feed["y"]), params), clip, 1e-6)



# ---- LSTM: StaticRNN over lstm_unit (its gates come from one fc over [x_t, h_prev]) ---------------------

def _lstm(dtype):
    x = layers.data("x", [T, -1, D], dtype=dtype, append_batch_size=False)
    y = layers.data("y", [1], dtype="int64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, H], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev, forget_bias=1.0)
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
    return layers.softmax_with_cross_entropy(layers.fc(rnn.step_var(h), 2), y)


def _lstm_losses(xs, ys):
    def losses(p):
        wx, wh, b, wo, bo = (p[n] for n in ("lstm_unit_0.fc.w_0", "lstm_unit_0.fc.w_1", "lstm_unit_0.fc.b_0",
                                            "fc_0.w_0", "fc_0.b_0"))
        h = c = np.zeros((xs.shape[1], H))
        for t in range(T):
            g = xs[t] @ wx + h @ wh + b  # gate order i, f, o, j
            i, f, o = _sigmoid(g[:, :H]), _sigmoid(g[:, H:2 * H] + 1.0), _sigmoid(g[:, 2 * H:3 * H])
            c = f * c + i * np.tanh(g[:, 3 * H:])
            h = o * np.tanh(c)
        return _ce(h @ wo + bo, ys)
    return losses


def test_lstm_shared_weights_match_numpy_per_example_gradients():
    rng = np.random.default_rng(12)
    feed = {"x": 1.5 * rng.standard_normal((T, B, D)), "y": rng.integers(0, 2, (B, 1))}
    clip, (norms, grads, params, _, _) = _clip_at_median(_lstm, feed)
    _check(norms, grads, _fd_per_example(_lstm_losses(feed["x"], feed["y"]), params), clip, 1e-6)


# ---- CNN with grouped convolutions ---------------------------------------------------------------------

def _cnn(dtype):
    x = layers.data("img", [4, 6, 6], dtype=dtype)
    y = layers.data("y", [1], dtype="int64")
    h = layers.conv2d(x, num_filters=6, filter_size=3, padding=1, groups=2, act="tanh")
    h = layers.conv2d(h, num_filters=3, filter_size=2, stride=2, dilation=2, groups=3, act="tanh")
    return layers.softmax_with_cross_entropy(layers.fc(h, 3), y)


def _conv(x, w, b, stride, pad, dil, groups):
    """NCHW cross-correlation with zero padding and channel groups, by loops over the filter taps."""
    n, c, hh, ww = x.shape
    f, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (hh + 2 * pad - dil * (kh - 1) - 1) // stride + 1, (ww + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, f, ho, wo)) + b[None, :, None, None]
    fg = f // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dil:i * dil + stride * ho:stride, j * dil:j * dil + stride * wo:stride]
                out[:, g * fg:(g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch, w[g * fg:(g + 1) * fg, :, i, j])
    return out


def _cnn_losses(xs, ys):
    def losses(p):
        h = np.tanh(_conv(xs, p["conv2d_0.w_0"], p["conv2d_0.b_0"], 1, 1, 1, 2))
        h = np.tanh(_conv(h, p["conv2d_1.w_0"], p["conv2d_1.b_0"], 2, 0, 2, 3))
        return _ce(h.reshape(len(h), -1) @ p["fc_0.w_0"] + p["fc_0.b_0"], ys)
    return losses


def test_grouped_conv2d_matches_numpy_per_example_gradients():
    rng = np.random.default_rng(13)
    feed = {"img": rng.standard_normal((B, 4, 6, 6)), "y": rng.integers(0, 3, (B, 1))}
    clip, (norms, grads, params, main, _) = _clip_at_median(_cnn, feed)
    assert [op.attrs["groups"] for op in main.global_block().ops if op.type == "dp_conv2d_norm"] == [2, 3]
    _check(norms, grads, _fd_per_example(_cnn_losses(feed["img"], feed["y"]), params), clip, 1e-6)


def test_gru_with_a_batch_of_one_and_noise_off():
    rng = np.random.default_rng(14)
    feed = {"x": 1.5 * rng.standard_normal((T, 1, D)), "y": np.array([[1]])}
    norms, grads, params, _, _ = _run_private(_gru, feed, 0.05, "float64")
    ref = _fd_per_example(_gru_losses(feed["x"], feed["y"]), params)[0]
    ref_norm = np.sqrt(sum(float((g ** 2).sum()) for g in ref.values()))
    np.testing.assert_allclose(norms, [ref_norm], rtol=1e-6)
    assert ref_norm > 0.05  # clipped: the update is the gradient scaled to norm 0.05
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref[name] * 0.05 / ref_norm, rtol=1e-6, atol=1e-9)


# ---- a CNN with pooling and an ungrouped, strided, dilated conv2d ---------------------------------------

def _cnn_pool(dtype):
    x = layers.data("img", [2, 7, 7], dtype=dtype)
    y = layers.data("y", [1], dtype="int64")
    h = layers.conv2d(x, num_filters=3, filter_size=3, padding=1, act="tanh")
    h = layers.conv2d(h, num_filters=4, filter_size=3, stride=2, padding=2, dilation=2, act="tanh")
    h = layers.pool2d(h, pool_size=2, pool_type="max", pool_stride=1)
    return layers.softmax_with_cross_entropy(layers.fc(h, 3), y)


def _cnn_pool_losses(xs, ys):
    def losses(p):
        h = np.tanh(_conv(xs, p["conv2d_0.w_0"], p["conv2d_0.b_0"], 1, 1, 1, 1))
        h = np.tanh(_conv(h, p["conv2d_1.w_0"], p["conv2d_1.b_0"], 2, 2, 2, 1))
        h = np.maximum.reduce([h[:, :, i:i + h.shape[2] - 1, j:j + h.shape[3] - 1] for i in (0, 1) for j in (0, 1)])
        return _ce(h.reshape(len(h), -1) @ p["fc_0.w_0"] + p["fc_0.b_0"], ys)
    return losses


def test_cnn_with_pooling_matches_numpy_per_example_gradients():
    rng = np.random.default_rng(15)
    feed = {"img": rng.standard_normal((B, 2, 7, 7)), "y": rng.integers(0, 3, (B, 1))}
    clip, (norms, grads, params, main, _) = _clip_at_median(_cnn_pool, feed)
    assert [op.type for op in main.global_block().ops].count("dp_conv2d_norm") == 2
    _check(norms, grads, _fd_per_example(_cnn_pool_losses(feed["img"], feed["y"]), params), clip, 1e-6)


# ---- matmul with a parameter (transposed, scaled, on a 3-D input) and layer_norm ------------------------

def _matmul_net(dtype):
    x = layers.data("x3", [3, 4], dtype=dtype)  # [-1, 3, 4]: the weight is read at 3 positions
    y = layers.data("y", [1], dtype="int64")
    w = layers.create_parameter([5, 4], dtype)
    h = layers.tanh(layers.matmul(x, w, transpose_y=True, alpha=0.5))  # [-1, 3, 5]
    return layers.softmax_with_cross_entropy(layers.fc(layers.reduce_sum(h, dim=1), 2), y)


def _matmul_losses(xs, ys):
    def losses(p):
        h = np.tanh(0.5 * xs @ p["create_parameter_0.w_0"].T).sum(axis=1)
        return _ce(h @ p["fc_0.w_0"] + p["fc_0.b_0"], ys)
    return losses


def _ln_net(dtype):
    x = layers.data("x3", [3, 4], dtype=dtype)
    y = layers.data("y", [1], dtype="int64")
    h = layers.fc(x, 5, num_flatten_dims=2)  # [-1, 3, 5]
    h = layers.layer_norm(h, begin_norm_axis=2, act="tanh")
    return layers.softmax_with_cross_entropy(layers.fc(h, 2), y)


def _ln_losses(xs, ys):
    def losses(p):
        z = xs @ p["fc_0.w_0"] + p["fc_0.b_0"]
        zhat = (z - z.mean(axis=2, keepdims=True)) / np.sqrt(z.var(axis=2, keepdims=True) + 1e-5)
        h = np.tanh(zhat * p["layer_norm_0.w_0"] + p["layer_norm_0.b_0"])
        return _ce(h.reshape(len(h), -1) @ p["fc_1.w_0"] + p["fc_1.b_0"], ys)
    return losses


@pytest.mark.parametrize("build,reference", [(_matmul_net, _matmul_losses), (_ln_net, _ln_losses)])
def test_matmul_weight_and_layer_norm_match_numpy_per_example_gradients(build, reference):
    rng = np.random.default_rng(16)
    feed = {"x3": rng.standard_normal((6, 3, 4)), "y": rng.integers(0, 2, (6, 1))}
    clip, (norms, grads, params, main, _) = _clip_at_median(build, feed)
    if build is _ln_net:
        assert "dp_layer_norm_scale_norm" in str(main)
    _check(norms, grads, _fd_per_example(reference(feed["x3"], feed["y"]), params), clip, 1e-6)
