"""conv2d and pool2d: forward against NumPy written here, float64 finite-difference gradients, shapes, errors."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.ops import common, conv_ops
from op_test import check_forward, check_grad, check_op

rng = np.random.default_rng(0)


def np_conv(Input, Filter, strides, paddings, dilations, groups):
    """Direct cross-correlation: every output pixel is a dot product of a (dilated) window and a filter."""
    x = Input.astype(np.float64)
    n, c, h, w = x.shape
    f, cg, kh, kw = Filter.shape
    (sh, sw), (ph, pw), (dh, dw) = strides, paddings, dilations
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, f, ho, wo))
    fg = f // groups
    for o in range(f):
        g = o // fg
        for i in range(ho):
            for j in range(wo):
                win = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, o, i, j] = (win * Filter[o]).sum(axis=(1, 2, 3))
    return out.astype(Input.dtype)


CONV_CASES = [  # x shape, filter shape, strides, paddings, dilations, groups
    ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((2, 4, 7, 6), (4, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2),
    ((1, 2, 5, 5), (2, 1, 2, 2), (1, 2), (1, 0), (2, 1), 2),  # depthwise
]


@pytest.mark.parametrize("xs,ws,s,p,d,g", CONV_CASES)
def test_conv2d_forward_and_gradient(xs, ws, s, p, d, g):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    attrs = {"strides": s, "paddings": p, "dilations": d, "groups": g}
    check_op("conv2d", lambda dt: {"Input": x.astype(dt), "Filter": w.astype(dt)},
             lambda Input, Filter: np_conv(Input, Filter, s, p, d, g), attrs=attrs, wrt=("Input", "Filter"),
             outputs=("Output",))


def test_conv2d_parallel_blocks_match_serial(monkeypatch):
    """Many batch blocks on threads (and several images per block) give the same values and gradients."""
    x, w = rng.standard_normal((5, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    attrs = {"strides": (1, 1), "paddings": (1, 1), "dilations": (1, 1), "groups": 2}
    ref = lambda Input, Filter: np_conv(Input, Filter, (1, 1), (1, 1), (1, 1), 2)  # noqa: E731
    monkeypatch.setattr(conv_ops, "_PARALLEL_FLOPS", 0)
    monkeypatch.setattr(conv_ops, "_PARALLEL_BLOCK_COLS", 2 * 36 * 18)  # two images per block
    check_forward("conv2d", {"Input": x, "Filter": w}, ref, attrs, ("Output",))  # float64: each compile costs seconds
    check_grad("conv2d", {"Input": x[:2], "Filter": w}, ("Input", "Filter"), attrs, ("Output",))


def np_pool(X, k, s, p, is_max, exclusive, ceil_mode):
    n, c, h, w = X.shape

    def size(L, kk, ss, pp):
        o = (L + 2 * pp - kk + (ss - 1 if ceil_mode else 0)) // ss + 1
        return o - 1 if ceil_mode and (o - 1) * ss >= L + pp else o

    ho, wo = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    out = np.zeros((n, c, ho, wo), X.dtype)
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
            win = X[:, :, max(h0, 0):min(h0 + k[0], h), max(w0, 0):min(w0 + k[1], w)]
            if is_max:
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                count = win.shape[2] * win.shape[3] if exclusive else k[0] * k[1]
                out[:, :, i, j] = win.sum(axis=(2, 3), dtype=np.float64) / count
    return out


POOL_CASES = [  # x shape, ksize, strides, paddings, type, exclusive, ceil_mode
    ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0), "max", True, False),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1), "max", True, True),
    ((2, 2, 5, 6), (3, 3), (2, 2), (1, 1), "avg", True, False),
    ((1, 2, 5, 5), (3, 3), (2, 2), (1, 1), "avg", False, True),
    ((1, 1, 5, 5), (2, 2), (3, 3), (1, 1), "avg", True, True),  # ceil_mode drops a window starting in padding
]


@pytest.mark.parametrize("xs,k,s,p,kind,excl,ceil", POOL_CASES)
def test_pool2d_forward_and_gradient(xs, k, s, p, kind, excl, ceil):
    x = rng.permutation(np.prod(xs)).reshape(xs) / 7.0  # distinct values: no ties for the max
    attrs = {"ksize": k, "strides": s, "paddings": p, "pooling_type": kind, "exclusive": excl, "ceil_mode": ceil}
    check_op("pool2d", lambda dt: {"X": x.astype(dt)}, lambda X: np_pool(X, k, s, p, kind == "max", excl, ceil),
             attrs=attrs)


@pytest.mark.parametrize("parallel_min", [0, 1 << 40])
def test_max_pool_gradient_goes_to_the_first_maximum_of_overlapping_windows(monkeypatch, parallel_min):
    """Ties (ReLU zeros) in 3x3 windows with stride 2: each window's gradient lands on its first maximum in
    row-major order, summed where windows overlap; reference written here."""
    monkeypatch.setattr(common, "PARALLEL_MIN", parallel_min)
    x = np.maximum(rng.standard_normal((2, 3, 7, 8)), 0.0)
    x[0, 0, :3, :3] = 1.5  # a whole window tied
    dout = rng.standard_normal((2, 3, 3, 3))
    want = np.zeros_like(x)
    for n, c, oh, ow in np.ndindex(dout.shape):
        win = x[n, c, 2 * oh:2 * oh + 3, 2 * ow:2 * ow + 3]
        i, j = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
        want[n, c, 2 * oh + i, 2 * ow + j] += dout[n, c, oh, ow]
    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        xv = layers.data("x", [3, 7, 8], dtype="float64")
        xv.stop_gradient = False
        out = layers.pool2d(xv, 3, pool_stride=2)
        g = layers.data("g", [3, 3, 3], dtype="float64")
        fl.append_backward(layers.reduce_sum(out * g), parameter_list=[xv])
    got, = fl.Executor().run(main, feed={"x": x, "g": dout}, fetch_list=[fl.grad_var_name("x")])
    np.testing.assert_array_equal(got, want)


def test_global_pooling_and_parallel_planes(monkeypatch):
    x = rng.standard_normal((3, 4, 5, 6))
    monkeypatch.setattr(common, "PARALLEL_MIN", 0)
    for kind in ("max", "avg"):
        attrs = {"pooling_type": kind, "global_pooling": True, "ksize": (2, 2)}  # ksize ignored
        ref = (lambda X: X.max(axis=(2, 3), keepdims=True)) if kind == "max" else (
            lambda X: X.mean(axis=(2, 3), keepdims=True))
        check_forward("pool2d", {"X": x}, ref, attrs)
        check_grad("pool2d", {"X": x[:1, :2]}, attrs=attrs)
    check_grad("pool2d", {"X": x[:2]}, attrs={"ksize": (2, 3), "strides": (1, 2), "pooling_type": "max"})


def test_layers_infer_shapes_with_batch_dim():
    x = layers.data("x", [3, 28, 27], dtype="float64")
    y = layers.conv2d(x, 8, (5, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), act="relu")
    assert y.shape == (-1, 8, 13, 23) and y.dtype == np.float64
    w = fl.default_main_program().global_block().var("conv2d_0.w_0")
    assert w.shape == (8, 3, 5, 3) and fl.default_main_program().global_block().var("conv2d_0.b_0").shape == (8,)
    assert layers.conv2d(x, 6, 3, groups=3, bias_attr=False).shape == (-1, 6, 26, 25)
    assert layers.pool2d(y, 2, pool_stride=2).shape == (-1, 8, 6, 11)
    assert layers.pool2d(y, 2, pool_stride=2, ceil_mode=True).shape == (-1, 8, 7, 12)
    assert layers.pool2d(y, pool_type="avg", global_pooling=True).shape == (-1, 8, 1, 1)


def test_conv_net_trains_and_feed_channel_count_is_checked():
    x = layers.data("img", [2, 8, 8])
    label = layers.data("label", [1], dtype="int64")
    h = layers.pool2d(layers.conv2d(x, 4, 3, padding=1, act="relu"), 2, pool_stride=2)
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 3), label))
    fl.optimizer.SGD(0.5).minimize(loss)
    fl.verify(fl.default_main_program())
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((6, 2, 8, 8)).astype(np.float32)
    ys = np.arange(6).reshape(6, 1) % 3
    losses = [exe.run(feed={"img": xs, "label": ys}, fetch_list=[loss])[0][0] for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match=r"feed 'img': shape \[6, 3, 8, 8\]"):
        exe.run(feed={"img": np.zeros((6, 3, 8, 8), np.float32), "label": ys}, fetch_list=[loss])


def _data(shape, name="x"):
    return layers.data(name, shape, append_batch_size=False)


@pytest.mark.parametrize("build,match", [
    (lambda: layers.conv2d(_data([4, 3, 8]), 2, 3), r"op 'conv2d': Input must be a 4-D.*'x' shape=\[4, 3, 8\]"),
    (lambda: layers.conv2d(_data([-1, 3, 8, 8]), 4, 3, groups=2), r"3 channels.*divisible by groups=2"),
    (lambda: layers.conv2d(_data([-1, 3, 8, 8]), 4, 3, stride=0), "stride must be"),
    (lambda: layers.conv2d(_data([-1, 3, 4, 4]), 4, 5), r"filter spans 5x5.*larger than the padded input 4x4"
                                                       r".*Input='x' shape=\[-1, 3, 4, 4\].*Filter="),
    (lambda: layers.pool2d(_data([3, 8, 8]), 2), r"op 'pool2d': X must be a 4-D.*'x' shape=\[3, 8, 8\]"),
    (lambda: layers.pool2d(_data([-1, 3, 4, 4]), 5), r"pool size \[5, 5\] is larger than the padded input \[4, 4\]"
                                                   r".*X='x' shape=\[-1, 3, 4, 4\]"),
    (lambda: layers.pool2d(_data([-1, 3, 4, 4]), 2, pool_stride=(1, 0)), "pool_stride must be"),
    (lambda: layers.pool2d(_data([-1, 3, 4, 4]), 2, pool_padding=2), r"paddings \[2, 2\] must be smaller"),
    (lambda: layers.pool2d(_data([-1, 3, 4, 4])), "give pool_size"),
])
def test_bad_input_is_a_build_time_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_op_level_checks_name_both_slots():
    block = fl.default_main_program().global_block()
    x, w = _data([2, 4, 6, 6]), _data([3, 3, 3, 3], "w")
    with pytest.raises(ValueError, match=r"Filter reads 3 channels per group.*Input='x'.*Filter='w'"):
        block.append_op("conv2d", {"Input": x, "Filter": w}, {"Output": "o"})
    with pytest.raises(ValueError, match=r"attribute 'strides'=\(0, 1\): must be >= 1"):
        block.append_op("conv2d", {"Input": x, "Filter": w}, {"Output": "o"}, {"strides": (0, 1)})
