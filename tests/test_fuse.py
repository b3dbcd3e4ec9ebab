"""The fuse pass (compiler/fuse.py) and its generated kernels (compiler/fused_kernel.py): fused plans
compute bit for bit what unfused plans compute, and what NumPy computes; intermediates are not
stored; kernels are shared across batch sizes and chains, and loaded from disk by a new process."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.compiler import CompileOptions, FusedStep
from fluidlite.compiler.fuse import MAX_OPS, classify

ON, OFF = CompileOptions(debug=True), CompileOptions(disabled={"fuse"}, debug=True)


def _run(options, fetch, feed, steps=1, startup=True):
    """Fetched values over `steps` runs in a fresh scope, and the plan."""
    scope, exe = fl.Scope(), fl.Executor(compile_options=options)
    if startup:
        exe.run(fl.default_startup_program(), scope=scope)
    outs = [exe.run(feed=feed, fetch_list=fetch, scope=scope) for _ in range(steps)]
    return outs, exe.compile(feed=feed, fetch_list=fetch)


def _fused(plan):
    return [s for s in plan.steps if isinstance(s, FusedStep)]


def _same_on_and_off(fetch, feed, steps=1):
    (on, plan), (off, _) = _run(ON, fetch, feed, steps), _run(OFF, fetch, feed, steps)
    for a, b in zip(on, off):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)  # bit for bit: same operations, same order, same roundings
    return on[-1], plan


def test_classify_broadcast_patterns():
    assert classify((4, 5), (4, 5)) == ("full", None)
    assert classify((1, 5), (4, 5)) == ("row", 5)
    assert classify((1, 5, 6), (4, 5, 6)) == ("row", 30)
    assert classify((4, 1), (4, 5)) == ("col", 5)
    assert classify((1, 1), (4, 5)) == ("scalar", None)
    assert classify((1, 5, 1), (4, 5, 6)) is None  # a middle axis: not fused
    assert classify((2, 5), (4, 5)) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scale_add_chain_is_one_kernel_bit_identical_and_matches_numpy(dtype):
    x = layers.data(name="x", shape=[7], dtype=dtype)
    h = x
    for k in range(4):
        h = layers.elementwise_add(layers.scale(h, scale=0.5 + k, bias=0.1), x)
    xs = np.random.default_rng(0).standard_normal((3, 7)).astype(dtype)
    (out,), plan = _same_on_and_off([h], {"x": xs})
    ref = xs.copy()
    for k in range(4):
        ref = (ref * (0.5 + k) + 0.1).astype(dtype) + xs
    np.testing.assert_allclose(out, ref, rtol=1e-6 if dtype == "float32" else 1e-14)
    assert len(plan.steps) == 1 and len(plan.ops) == 8
    assert plan.source.count(" = K") == 1 and "# fused: scale, elementwise_add, scale" in plan.source
    assert out.dtype == np.dtype(dtype) and out.shape == (3, 7)


def test_bias_row_column_and_scalar_broadcasts():
    x = layers.data(name="x", shape=[6], dtype="float32")
    col = layers.data(name="col", shape=[1], dtype="float32")
    s = layers.data(name="s", shape=[1], dtype="float32", append_batch_size=False)
    b = layers.create_parameter([6], "float32", name="b", default_initializer=fl.initializer.Uniform(-1, 1, seed=3))
    h = layers.relu(layers.elementwise_add(x, b))  # bias row
    h = layers.elementwise_mul(h, col)  # [B, 1]: one value per row
    h = layers.elementwise_sub(layers.sigmoid(h), s)  # a scalar
    h = layers.clip(h, -0.3, 0.3)
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((5, 6)).astype(np.float32), "col": rng.standard_normal((5, 1)).astype(np.float32),
            "s": np.array([0.25], np.float32)}
    (out,), plan = _same_on_and_off([h], feed)
    assert [op.type for op in _fused(plan)[0].ops] == ["elementwise_add", "relu", "elementwise_mul", "sigmoid",
                                                       "elementwise_sub", "clip"]
    scope, exe = fl.Scope(), fl.Executor(compile_options=OFF)
    exe.run(fl.default_startup_program(), scope=scope)
    bias = scope.get_array("b").astype(np.float64)
    ref = np.maximum(feed["x"] + bias, 0) * feed["col"]
    ref = np.clip(1 / (1 + np.exp(-ref)) - 0.25, -0.3, 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_only_values_read_later_fetched_or_persistable_are_materialised():
    x = layers.data(name="x", shape=[4], dtype="float32")
    a = layers.scale(x, scale=2.0)
    b = layers.tanh(a)  # read only inside the group: never stored
    c = layers.scale(b, scale=3.0)  # fetched
    d = layers.relu(c)
    e = layers.matmul(d, layers.create_parameter([4, 2], "float32", name="w"))  # reads d after the group
    feed = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
    _, plan = _same_on_and_off([c, e], feed)
    fused, = _fused(plan)
    assert fused.out_names == [c.name, d.name] and fused.in_names == ["x"]
    assert a.name not in plan.source and b.name not in plan.source


def test_fuse_is_off_under_check_nan_inf_and_from_the_environment(monkeypatch):
    x = layers.data(name="x", shape=[4], dtype="float32")
    y = layers.relu(layers.scale(x, scale=2.0))
    feed = {"x": np.ones((2, 4), np.float32)}
    assert _fused(fl.Executor().compile(feed=feed, fetch_list=[y]))
    assert not _fused(fl.Executor(check_nan_inf=True).compile(feed=feed, fetch_list=[y]))
    monkeypatch.setenv("FLUIDLITE_PASSES_OFF", "fuse")
    assert not _fused(fl.Executor().compile(feed=feed, fetch_list=[y]))


def _mlp(dtype, dropout=False):
    x = layers.data(name="x", shape=[6], dtype=dtype)
    label = layers.data(name="label", shape=[1], dtype="int64")
    h = layers.fc(x, size=8, act="relu")
    if dropout:
        h = layers.dropout(h, 0.3, seed=5, dropout_implementation="upscale_in_train")
    h = layers.fc(h, size=8, act="tanh")
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, size=3), label))
    fl.optimizer.Momentum(0.1, 0.9).minimize(loss, grad_clip=fl.clip.GradientClipByValue(0.05))
    return loss


@pytest.mark.parametrize("dtype,dropout", [("float32", True), ("float64", False)])
def test_mlp_train_steps_are_bit_identical(dtype, dropout):
    loss = _mlp(dtype, dropout)
    rng = np.random.default_rng(2)
    feed = {"x": rng.standard_normal((5, 6)).astype(dtype), "label": rng.integers(0, 3, (5, 1))}
    params = [p.name for p in fl.default_main_program().all_parameters()]
    out, plan = _same_on_and_off([loss] + params, feed, steps=3)
    fused_ops = [op.type for s in _fused(plan) for op in s.ops]
    assert "relu" in fused_ops and "tanh" in fused_ops and ("dropout_grad" in fused_ops) == dropout


def _encoder_block(d=8, heads=2, ffn=16):
    x = layers.data("x", [4, d])
    label = layers.data("label", [4, 1], dtype="int64")
    dh = d // heads

    def split(t):
        return layers.transpose(layers.reshape(t, [0, 0, heads, dh]), [0, 2, 1, 3])

    q, k, v = (split(layers.fc(x, d, num_flatten_dims=2)) for _ in range(3))
    attn = layers.dropout(layers.softmax(layers.matmul(q, k, transpose_y=True, alpha=dh ** -0.5)), 0.1, seed=1,
                          dropout_implementation="upscale_in_train")
    merged = layers.reshape(layers.transpose(layers.matmul(attn, v), [0, 2, 1, 3]), [0, 0, d])
    h = layers.layer_norm(x + layers.fc(merged, d, num_flatten_dims=2), begin_norm_axis=2)
    h = layers.layer_norm(h + layers.fc(layers.gelu(layers.fc(h, ffn, num_flatten_dims=2)), d, num_flatten_dims=2),
                          begin_norm_axis=2)
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 3, num_flatten_dims=2), label))
    fl.optimizer.SGD(0.05).minimize(loss)
    return loss


def test_transformer_encoder_block_train_steps_are_bit_identical():
    loss = _encoder_block()
    rng = np.random.default_rng(3)
    feed = {"x": rng.standard_normal((3, 4, 8)).astype(np.float32), "label": rng.integers(0, 3, (3, 4, 1))}
    params = [p.name for p in fl.default_main_program().all_parameters()]
    _, plan = _same_on_and_off([loss] + params, feed, steps=2)
    groups = [[op.type for op in s.ops] for s in _fused(plan)]
    assert ["elementwise_add", "elementwise_add"] in groups  # the projection's bias add + the residual add
    assert ["elementwise_add", "gelu"] in groups


def test_gradient_chain_is_fused_and_matches_numpy():
    init = fl.initializer.Uniform(-1, 1, seed=4)
    x, w = (layers.create_parameter([2, 5], "float64", name=n, default_initializer=init) for n in ("px", "pw"))
    loss = layers.mean(layers.scale(layers.relu(layers.elementwise_mul(x, w)), scale=3.0))
    fl.append_backward(loss)
    (dx, dw, xs, ws), plan = _same_on_and_off(["px@GRAD", "pw@GRAD", "px", "pw"], {})
    assert any([op.type for op in s.ops][-2:] == ["relu_grad", "elementwise_mul_grad"] for s in _fused(plan))
    g = 3.0 / 10 * (xs * ws > 0)
    np.testing.assert_allclose(dx, g * ws, rtol=1e-15)
    np.testing.assert_allclose(dw, g * xs, rtol=1e-15)


def test_long_chain_is_cut_and_identical_pieces_share_one_kernel():
    x = layers.data(name="x", shape=[16], dtype="float32", append_batch_size=False)
    h = x
    for _ in range(2 * MAX_OPS):  # the executor-overhead benchmark's chain, four pieces of MAX_OPS ops
        h = layers.elementwise_add(layers.scale(h, scale=0.5, bias=0.1), x)
    xs = np.linspace(-1, 1, 16).astype(np.float32)
    (out,), plan = _same_on_and_off([h], {"x": xs})
    pieces = _fused(plan)
    assert [len(s.ops) for s in pieces] == [MAX_OPS] * 4
    assert len({s.kernel.serial for s in pieces}) == 2  # the first reads x only; the others (h, x) share one
    ref = xs.astype(np.float32)
    for _ in range(2 * MAX_OPS):
        ref = (ref * 0.5 + 0.1).astype(np.float32) + xs
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_one_plan_and_kernel_serve_every_batch_size():
    x = layers.data(name="x", shape=[3], dtype="float32")
    h = layers.fc(x, size=4, act="sigmoid")  # the sigmoid output is stored: the next fc's product reads it
    y = layers.fc(h, size=2, act="tanh")
    exe, ref = fl.Executor(), fl.Executor(compile_options=OFF)
    exe.run(fl.default_startup_program())
    kernels, plans = [], []
    for batch in (2, 5, 9):
        xs = np.random.default_rng(batch).standard_normal((batch, 3)).astype(np.float32)
        plan = exe.compile(feed={"x": xs}, fetch_list=[y, h])
        out, hid = exe.run(feed={"x": xs}, fetch_list=[y, h])
        want = ref.run(feed={"x": xs}, fetch_list=[y, h])
        np.testing.assert_array_equal(out, want[0])
        np.testing.assert_array_equal(hid, want[1])
        assert out.shape == (batch, 2)
        plans.append(plan)
        kernels.append(_fused(plan)[0].kernel.serial)
    assert plans[1] is plans[2]  # one plan bound to another batch size (symbolic batch)
    assert kernels[0] is kernels[1] is kernels[2] and len(kernels[0].signatures) == 1


def test_large_chain_uses_the_parallel_kernel(monkeypatch):
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 14)
    PARALLEL_MIN = common.PARALLEL_MIN
    x = layers.data(name="x", shape=[PARALLEL_MIN], dtype="float32", append_batch_size=False)
    b = layers.data(name="b", shape=[PARALLEL_MIN // 4], dtype="float32", append_batch_size=False)
    y = layers.tanh(layers.elementwise_add(layers.reshape(x, [4, PARALLEL_MIN // 4]), b))
    rng = np.random.default_rng(5)
    feed = {"x": rng.standard_normal(PARALLEL_MIN).astype(np.float32),
            "b": rng.standard_normal(PARALLEL_MIN // 4).astype(np.float32)}
    (out,), plan = _same_on_and_off([y], feed)
    kernel = _fused(plan)[0].kernel
    assert kernel.parallel.signatures  # chosen by the size at run time (and compiled when first needed)
    np.testing.assert_allclose(out, np.tanh(feed["x"].reshape(4, -1) + feed["b"]), rtol=2e-6, atol=1e-6)


_CHILD = textwrap.dedent("""
    import numpy as np, fluidlite as fl
    from fluidlite import layers
    from fluidlite.compiler import FusedStep
    x = layers.data(name="x", shape=[3], dtype="float32")
    y = layers.leaky_relu(layers.scale(layers.exp(x), scale=-1.5), alpha=0.2)
    exe = fl.Executor()
    feed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out, = exe.run(feed=feed, fetch_list=[y])
    k, = [s.kernel.serial for s in exe.compile(feed=feed, fetch_list=[y]).steps if isinstance(s, FusedStep)]
    print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()), out.sum())
""")


def test_a_new_process_loads_the_fused_kernel_from_the_disk_cache(tmp_path):
    env = dict(os.environ, FLUIDLITE_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    (h1, m1, s1), (h2, m2, s2) = (r.stdout.split() for r in runs)
    assert (h1, m1) == ("0", "1") and (h2, m2) == ("1", "0") and s1 == s2  # compiled once, then loaded
    assert len(list((tmp_path / "fused").glob("fused_*.py"))) == 1


def test_every_fusable_op_and_its_gradient_agree_with_unfused_and_numpy():
    init = fl.initializer.Uniform(0.5, 1.5, seed=6)
    p, q = (layers.create_parameter([3, 4], "float64", name=n, default_initializer=init) for n in ("fp", "fq"))
    h = layers.sqrt(layers.scale(layers.abs(p), scale=2.0, bias=0.5))
    h = layers.square(layers.log(h))
    h = layers.sigmoid(layers.exp(layers.scale(h, scale=0.1)))
    h = layers.elementwise_sub(layers.leaky_relu(h, alpha=0.3), q)
    h = layers.elementwise_div(layers.elementwise_max(h, layers.scale(q, scale=-0.5)), q)
    h = layers.gelu(layers.tanh(layers.clip(h, -0.8, 0.8)), approximate=True)
    loss = layers.mean(layers.gelu(layers.relu(h)))
    fl.append_backward(loss)
    fetch = [h.name, "fp@GRAD", "fq@GRAD", "fp", "fq"]
    (out, dp, dq, ps, qs), plan = _same_on_and_off(fetch, {})
    fused_ops = {op.type for s in _fused(plan) for op in s.ops}
    for t in ("abs", "sqrt", "log", "square", "exp", "sigmoid", "leaky_relu", "elementwise_sub", "elementwise_max",
              "elementwise_div", "clip", "tanh", "gelu", "relu"):
        assert t in fused_ops and t + "_grad" in fused_ops, t
    r = np.square(np.log(np.sqrt(np.abs(ps) * 2 + 0.5)))
    r = 1 / (1 + np.exp(-np.exp(0.1 * r)))
    r = np.where(r > 0, r, 0.3 * r) - qs
    r = np.tanh(np.clip(np.maximum(r, -0.5 * qs) / qs, -0.8, 0.8))
    r = 0.5 * r * (1 + np.tanh(np.sqrt(2 / np.pi) * (r + 0.044715 * r ** 3)))
    np.testing.assert_allclose(out, r, rtol=1e-13, atol=1e-15)
    assert np.all(np.isfinite(dp)) and np.all(np.isfinite(dq)) and np.any(dp != 0)
