"""fl.nets: the composite conv/pool helpers against a naive NumPy convolution and pooling written here."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers, nets


def np_conv(x, w, b, pad):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = np.einsum("nckl,fckl->nf", xp[:, :, i:i + kh, j:j + kw], w)
    return out + b.reshape(1, -1, 1, 1)


def np_max_pool(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


def test_simple_img_conv_pool_matches_numpy():
    img = layers.data("img", [2, 8, 8], dtype="float64")
    out = nets.simple_img_conv_pool(img, num_filters=3, filter_size=3, pool_size=2, pool_stride=2, act="relu",
                                    conv_padding=1)
    assert out.shape == (-1, 3, 4, 4)
    types = [op.type for op in fl.default_main_program().global_block().ops]
    assert types.count("conv2d") == 1 and types[-1] == "pool2d"
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    (got,) = exe.run(feed={"img": x}, fetch_list=[out])
    params = fl.default_main_program().global_block().all_parameters()
    w = next(fl.fetch_var(p.name) for p in params if len(p.shape) == 4)
    b = next(fl.fetch_var(p.name) for p in params if len(p.shape) == 1)
    want = np_max_pool(np.maximum(np_conv(x, w, b, 1), 0), 2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_img_conv_group_stacks_convs_with_batch_norm_and_one_pool():
    img = layers.data("img", [3, 8, 8])
    out = nets.img_conv_group(img, conv_num_filter=[4, 6], pool_size=2, pool_stride=2, conv_act="relu",
                              conv_with_batchnorm=[True, False], conv_batchnorm_drop_rate=[0.2, 0.0])
    assert out.shape == (-1, 6, 4, 4)
    types = [op.type for op in fl.default_main_program().global_block().ops]
    assert types.count("conv2d") == 2 and types.count("batch_norm") == 1 and types.count("dropout") == 1
    assert types.count("pool2d") == 1 and types.index("batch_norm") < types.index("dropout") < types.index("pool2d")
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    (got,) = exe.run(feed={"img": np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)},
                     fetch_list=[out])
    assert got.shape == (2, 6, 4, 4) and np.all(got >= 0)
    with pytest.raises(ValueError, match="conv_padding has 3 entries for 2 convolutions"):
        nets.img_conv_group(img, [4, 6], 2, conv_padding=[1, 1, 1])
