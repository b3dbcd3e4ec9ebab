"""batch_norm and layer_norm: forward against NumPy written here, float64 finite-difference gradients,
moving statistics (training, is_test, clone(for_test=True), checkpoints), shapes and errors."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.ops import common
from op_test import check_forward, check_grad, check_op

rng = np.random.default_rng(0)
BN_OUTS = ("Y", "MeanOut", "VarianceOut", "SavedMean", "SavedVariance")


def np_batch_norm(is_test, momentum=0.9, eps=1e-5):
    def ref(X, Scale, Bias, Mean, Variance):
        axes = (0,) + tuple(range(2, X.ndim))
        shape = (1, -1) + (1,) * (X.ndim - 2)
        x = X.astype(np.float64)
        mean, var = (Mean, Variance) if is_test else (x.mean(axis=axes), x.var(axis=axes))
        inv = 1 / np.sqrt(var.astype(np.float64) + eps)
        y = (x - mean.reshape(shape)) * inv.reshape(shape) * Scale.reshape(shape) + Bias.reshape(shape)
        mean_out = Mean if is_test else momentum * Mean + (1 - momentum) * mean
        var_out = Variance if is_test else momentum * Variance + (1 - momentum) * var
        dt = X.dtype
        return {"Y": y.astype(dt), "MeanOut": mean_out.astype(dt), "VarianceOut": var_out.astype(dt),
                "SavedMean": mean.astype(dt), "SavedVariance": inv.astype(dt)}
    return ref


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4, 3)])
@pytest.mark.parametrize("is_test", [False, True])
def test_batch_norm_forward_and_gradient(shape, is_test):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    stats = {"Scale": rng.standard_normal(c), "Bias": rng.standard_normal(c), "Mean": rng.standard_normal(c),
             "Variance": rng.uniform(0.5, 2, c)}
    check_op("batch_norm", lambda dt: {"X": x.astype(dt), **{k: v.astype(dt) for k, v in stats.items()}},
             np_batch_norm(is_test, momentum=0.8, eps=1e-3), attrs={"is_test": is_test, "momentum": 0.8, "epsilon": 1e-3},
             wrt=("X", "Scale", "Bias"), outputs=BN_OUTS, grad_outputs=("Y",))


def test_batch_norm_parallel_channels(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 1)
    x = rng.standard_normal((4, 3, 2, 2))
    stats = {"Scale": rng.standard_normal(3), "Bias": rng.standard_normal(3), "Mean": np.zeros(3), "Variance": np.ones(3)}
    check_forward("batch_norm", {"X": x, **stats}, np_batch_norm(False), outputs=BN_OUTS)  # float64 only: compile time
    check_grad("batch_norm", {"X": x, **stats}, ("X", "Scale"), outputs=BN_OUTS, grad_outputs=("Y",))
    ln_x, ln_s = rng.standard_normal((6, 4)), rng.standard_normal(4)
    check_forward("layer_norm", {"X": ln_x, "Scale": ln_s}, lambda X, Scale: np_layer_norm(X, Scale, None, 1),
                  outputs=LN_OUTS)
    check_grad("layer_norm", {"X": ln_x, "Scale": ln_s}, ("X", "Scale"), outputs=LN_OUTS, grad_outputs=("Y",))


def _bn_program(is_test=False):
    x = layers.data("x", [3, 4, 4], dtype="float64")
    y = layers.batch_norm(x, momentum=0.75, is_test=is_test, moving_mean_name="mm", moving_variance_name="mv")
    return x, y


def test_training_updates_persistable_moving_statistics_and_inference_uses_them(tmp_path):
    x, y = _bn_program()
    main = fl.default_main_program()
    test = main.clone(for_test=True)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    assert np.array_equal(fl.fetch_var("mm"), np.zeros(3)) and np.array_equal(fl.fetch_var("mv"), np.ones(3))
    xs = [rng.standard_normal((5, 3, 4, 4)) * 3 + 2 for _ in range(2)]
    mm, mv = np.zeros(3), np.ones(3)
    for batch in xs:
        out, = exe.run(main, feed={"x": batch}, fetch_list=[y])
        mm = 0.75 * mm + 0.25 * batch.mean(axis=(0, 2, 3))
        mv = 0.75 * mv + 0.25 * batch.var(axis=(0, 2, 3))
    np.testing.assert_allclose(fl.fetch_var("mm"), mm, rtol=1e-12)
    np.testing.assert_allclose(fl.fetch_var("mv"), mv, rtol=1e-12)
    fl.io.save_persistables(str(tmp_path), main)
    mm, mv = fl.fetch_var("mm"), fl.fetch_var("mv")
    # the inference clone normalises with the moving statistics and leaves them alone
    out, = exe.run(test, feed={"x": xs[0]}, fetch_list=[y.name])
    want = (xs[0] - mm.reshape(1, 3, 1, 1)) / np.sqrt(mv.reshape(1, 3, 1, 1) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-10)
    np.testing.assert_array_equal(fl.fetch_var("mm"), mm)
    np.testing.assert_array_equal(fl.fetch_var("mv"), mv)
    scope = fl.Scope()
    fl.io.load_persistables(str(tmp_path), main, scope=scope)
    np.testing.assert_array_equal(fl.fetch_var("mv", scope), mv)
    op = [o for o in test.global_block().ops if o.type == "batch_norm"][0]
    assert op.attrs["is_test"] and op.output("MeanOut") == ["mm"]


def test_is_test_layer_updates_nothing():
    x, y = _bn_program(is_test=True)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    exe.run(feed={"x": rng.standard_normal((2, 3, 4, 4))}, fetch_list=[y])
    assert np.array_equal(fl.fetch_var("mm"), np.zeros(3)) and np.array_equal(fl.fetch_var("mv"), np.ones(3))


def test_batch_norm_layer_trains_only_scale_and_shift():
    x = layers.data("x", [4])
    h = layers.batch_norm(layers.fc(x, 3), act="relu")
    assert h.shape == (-1, 3) and h.dtype == np.float32
    loss = layers.mean(h)
    _, params_grads = fl.optimizer.SGD(0.1).minimize(loss)
    assert sorted(p.name for p, _ in params_grads) == ["batch_norm_0.b_0", "batch_norm_0.w_0", "fc_0.b_0", "fc_0.w_0"]
    fl.verify(fl.default_main_program())


LN_OUTS = ("Y", "Mean", "Variance")


def np_layer_norm(X, Scale, Bias, axis, eps=1e-5):
    rows = int(np.prod(X.shape[:axis]))
    x = X.astype(np.float64).reshape(rows, -1)
    mean, var = x.mean(axis=1), x.var(axis=1)
    y = (x - mean[:, None]) / np.sqrt(var[:, None] + eps)
    if Scale is not None:
        y = y * Scale
    if Bias is not None:
        y = y + Bias
    dt = X.dtype
    return {"Y": y.reshape(X.shape).astype(dt), "Mean": mean.astype(dt), "Variance": var.astype(dt)}


@pytest.mark.parametrize("shape,axis,scale,shift", [((4, 5), 1, True, True), ((2, 3, 2, 2), 2, True, False),
                                                    ((2, 3, 4), 1, False, True)])
def test_layer_norm_forward_and_gradient(shape, axis, scale, shift):
    d = int(np.prod(shape[axis:]))
    x, s, b = rng.standard_normal(shape) * 2 + 0.5, rng.standard_normal(d), rng.standard_normal(d)

    def make(dt):
        ins = {"X": x.astype(dt)}
        if scale:
            ins["Scale"] = s.astype(dt)
        if shift:
            ins["Bias"] = b.astype(dt)
        return ins

    check_op("layer_norm", make, lambda X, Scale=None, Bias=None: np_layer_norm(X, Scale, Bias, axis),
             attrs={"begin_norm_axis": axis}, wrt=tuple(make(np.float64)), outputs=LN_OUTS, grad_outputs=("Y",))



def test_float32_layer_norm_of_rows_far_from_zero_is_within_the_datas_own_rounding():
    """float32 rows sum in float32. Around 1e4 a float32 is only known to within 1e-3, so the mean can
    be no closer; a plain float32 running sum of the 128 values drifts 5x further (5.3e-3 in NumPy)."""
    x = (1e4 + rng.standard_normal((64, 128))).astype(np.float32)
    want = {k: v.astype(np.float32) for k, v in np_layer_norm(x.astype(np.float64), None, None, 1).items()}
    check_forward("layer_norm", {"X": x}, lambda X: want, attrs={"begin_norm_axis": 1}, outputs=LN_OUTS,
                  atol=float(np.spacing(np.float32(1e4))), rtol=1e-6)


def test_layer_norm_layer_shapes():
    x = layers.data("x", [6, 4, 5], dtype="float64")
    y = layers.layer_norm(x, begin_norm_axis=2, act="relu")
    assert y.shape == (-1, 6, 4, 5) and y.dtype == np.float64
    block = fl.default_main_program().global_block()
    assert block.var("layer_norm_0.w_0").shape == (20,) and block.var("layer_norm_0.b_0").shape == (20,)
    op = [o for o in block.ops if o.type == "layer_norm"][0]
    assert block.var(op.output("Mean")[0]).shape == (-1,)
    layers.layer_norm(x, scale=False, shift=False)
    assert not block.has_var("layer_norm_1.w_0")


def test_norm_errors():
    x = layers.data("x", [3, 4, 5, 6])  # rank 5 with the batch
    with pytest.raises(ValueError, match=r"op 'batch_norm': X must be 2-D.*X='x' shape=\[-1, 3, 4, 5, 6\]"):
        layers.batch_norm(x)
    for axis in (0, 5):
        with pytest.raises(ValueError, match=rf"op 'layer_norm': begin_norm_axis={axis} is out of range \[1, 5\).*'x'"):
            layers.layer_norm(x, begin_norm_axis=axis)
    block = fl.default_main_program().global_block()
    x2 = layers.data("x2", [4], append_batch_size=True)
    s = layers.data("s", [3], append_batch_size=False)
    with pytest.raises(ValueError, match=r"Scale must have shape \[4\].*X='x2'.*Scale='s' shape=\[3\]"):
        block.append_op("layer_norm", {"X": x2, "Scale": s}, {"Y": "y", "Mean": "m", "Variance": "v"})
    with pytest.raises(ValueError, match=r"op 'batch_norm': Scale must have shape \[4\].*Scale='s'"):
        block.append_op("batch_norm", {"X": x2, "Scale": s, "Bias": s, "Mean": s, "Variance": s},
                        {k: k.lower() for k in BN_OUTS})
    with pytest.raises(ValueError, match=r"momentum.*must be in \[0, 1\]"):
        layers.batch_norm(x2, momentum=1.5)
