"""One plan for every batch size (compiler/rebatch.py): results equal, bit for bit, those of a plan compiled
for that batch size alone; the op audit of docs/reliability.md matches the registry."""
import re
from pathlib import Path

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import executor as executor_module
from fluidlite import layers
from fluidlite.registry import OPS

SIZES = (2, 3, 7, 64)
ROOT = Path(__file__).resolve().parents[1]


def _mlp():
    x = layers.data("x", [8])
    label = layers.data("label", [1], dtype="int64")
    h = layers.fc(x, 16, act="relu")
    h = layers.elementwise_mul(h, layers.sigmoid(layers.fc(x, 16)))  # same-shape product
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 5), label))
    fl.optimizer.Adam(0.01).minimize(loss)

    def feed(rng, b):
        return {"x": rng.standard_normal((b, 8)).astype("float32"),
                "label": rng.integers(0, 5, (b, 1)).astype("int64")}
    return loss, feed


def _cnn():
    img = layers.data("img", [1, 8, 8])
    label = layers.data("label", [1], dtype="int64")
    h = layers.pool2d(layers.conv2d(img, 3, 3, act="relu", padding=1), 2, pool_stride=2)
    h = layers.batch_norm(h, act="relu")
    h = layers.pool2d(h, 2, pool_type="avg", pool_stride=2)
    loss = layers.mean(layers.cross_entropy(layers.softmax(layers.fc(h, 4)), label))
    fl.optimizer.Momentum(0.05, 0.9).minimize(loss)

    def feed(rng, b):
        return {"img": rng.standard_normal((b, 1, 8, 8)).astype("float32"),
                "label": rng.integers(0, 4, (b, 1)).astype("int64")}
    return loss, feed


def _static_rnn():
    t, d, hidden = 4, 3, 5
    x = layers.data("x", [t, -1, d], append_batch_size=False)  # time-major: the batch is dimension 1
    label = layers.data("label", [1], dtype="int64")
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev)
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
    logits = layers.fc(rnn.step_var(h), size=3)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
    fl.optimizer.SGD(0.5).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(0.25))

    def feed(rng, b):
        return {"x": rng.standard_normal((t, b, d)).astype("float32"),
                "label": rng.integers(0, 3, (b, 1)).astype("int64")}
    return loss, feed


def _lstm_layer():
    t, d, hidden = 3, 4, 3
    x = layers.data("x", [t, -1, d], append_batch_size=False)
    h0 = layers.data("h0", [1, -1, hidden], append_batch_size=False)
    c0 = layers.data("c0", [1, -1, hidden], append_batch_size=False)
    lengths = layers.data("len", [-1], dtype="int64", append_batch_size=False)
    out, last_h, _ = layers.lstm(x, h0, c0, t, hidden, sequence_length=lengths)
    gru_out, _ = layers.gru(x, h0, t, hidden)
    loss = layers.mean(layers.elementwise_add(layers.reduce_sum(out, dim=2), layers.reduce_mean(gru_out, dim=2)))
    fl.optimizer.SGD(0.1).minimize(loss)

    def feed(rng, b):
        return {"x": rng.standard_normal((t, b, d)).astype("float32"),
                "h0": rng.standard_normal((1, b, hidden)).astype("float32"),
                "c0": rng.standard_normal((1, b, hidden)).astype("float32"),
                "len": rng.integers(1, t + 1, b).astype("int64")}
    return loss, feed


def _transformer():
    seq, dm, heads, ffn = 4, 8, 2, 16
    dh = dm // heads
    x = layers.data("x", [seq, dm])
    label = layers.data("label", [seq, 1], dtype="int64")

    def split(v):
        return layers.transpose(layers.reshape(v, [0, 0, heads, dh]), [0, 2, 1, 3])

    q, k, v = (split(layers.fc(x, dm, num_flatten_dims=2)) for _ in range(3))
    attn = layers.dropout(layers.softmax(layers.matmul(q, k, transpose_y=True, alpha=dh ** -0.5)), 0.1, seed=3)
    merged = layers.reshape(layers.transpose(layers.matmul(attn, v), [0, 2, 1, 3]), [-1, seq, dm])
    h = layers.layer_norm(x + layers.fc(merged, dm, num_flatten_dims=2), begin_norm_axis=2)
    h = layers.layer_norm(h + layers.fc(layers.gelu(layers.fc(h, ffn, num_flatten_dims=2)), dm, num_flatten_dims=2),
                          begin_norm_axis=2)
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 3, num_flatten_dims=2), label))
    fl.optimizer.Adam(0.01).minimize(loss)

    def feed(rng, b):
        return {"x": rng.standard_normal((b, seq, dm)).astype("float32"),
                "label": rng.integers(0, 3, (b, seq, 1)).astype("int64")}
    return loss, feed


def _misc():
    """Ops the models above do not use: broadcasting with Paddle's axis, reshapes, indexing, reductions."""
    x = layers.data("x", [6])
    ids = layers.data("ids", [1], dtype="int64")
    x.stop_gradient = False
    emb = layers.embedding(ids, size=[10, 6])
    h = layers.elementwise_add(x, layers.reshape(emb, [-1, 6]))
    bias = layers.create_parameter([6], "float32")
    h = layers.elementwise_sub(h, bias)
    h = layers.elementwise_div(h, layers.scale(layers.abs(h), bias=1.0))
    h = layers.elementwise_max(h, layers.leaky_relu(h))
    a, b = layers.split(h, 2, dim=1)
    h = layers.concat([layers.exp(a), layers.tanh(b), layers.square(a)], axis=1)
    col = layers.reduce_max(h, dim=1, keep_dim=True)
    h = layers.elementwise_mul(h, col, axis=0)
    h = layers.reshape(h, [0, 3, 3])
    h = layers.unsqueeze(layers.reduce_min(h, dim=2), [1])
    h = layers.squeeze(h, [1])
    h2 = layers.expand(layers.slice(h, axes=[1], starts=[0], ends=[2]), [1, 3])
    h = layers.elementwise_add(layers.concat([h, h2], axis=1), layers.gaussian_random_batch_size_like(h2, [-1, 9], seed=4))
    prob = layers.softmax(h)
    top, idx = layers.topk(prob, 2)
    acc = layers.accuracy(prob, ids, k=2)
    hot = layers.cast(layers.one_hot(ids, 9), "float32")
    loss = layers.reduce_mean(layers.elementwise_mul(layers.log(layers.sqrt(prob) + 1.0), hot))
    loss = loss + layers.mean(layers.gather(layers.transpose(top, [1, 0]), layers.argmax(idx, axis=1)))
    loss = loss + layers.mean(layers.sigmoid_cross_entropy_with_logits(h, layers.sigmoid(h)))
    fl.optimizer.SGD(0.1).minimize(loss)

    def feed(rng, b):
        return {"x": rng.standard_normal((b, 6)).astype("float32"),
                "ids": rng.integers(0, 9, (b, 1)).astype("int64")}
    return loss, feed, acc


MODELS = {"mlp": _mlp, "cnn": _cnn, "static_rnn": _static_rnn, "lstm_gru_layers": _lstm_layer,
          "transformer": _transformer, "misc": _misc}


def _build(name):
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 5
    with fl.program_guard(main, startup), fl.unique_name.guard():
        loss, feed, *extra = MODELS[name]()
    return main, startup, [loss] + extra, feed


def _train(exe, main, startup, fetches, feed, steps=2):
    """Fetches of `steps` training steps from a fresh scope, then every persistable."""
    scope = fl.Scope()
    exe.run(startup, scope=scope)
    out = [exe.run(main, feed=feed, fetch_list=fetches, scope=scope) for feed in feed]
    return out, {n: np.array(v) for n, v in scope.arrays.items()}


def _same(a, b):
    (fa, pa), (fb, pb) = a, b
    def value(k, v):  # a seeded stream's key is never read: compare its counter
        return v[1:] if k.endswith("@RANDOM_STATE") else v
    return (all(np.array_equal(x, y) for s, t in zip(fa, fb) for x, y in zip(s, t))
            and pa.keys() == pb.keys() and all(np.array_equal(value(k, pa[k]), value(k, pb[k])) for k in pa))


def _diff(a, b):
    (fa, pa), (fb, pb) = a, b
    steps = [(i, k) for i, (s, t) in enumerate(zip(fa, fb)) for k, (x, y) in enumerate(zip(s, t))
             if not np.array_equal(x, y)]
    return steps, sorted(k for k in pa if not np.array_equal(pa[k], pb[k]) and not k.endswith("@RANDOM_STATE"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_plan_serves_every_batch_size_with_the_results_of_its_own_plan(name, monkeypatch):
    main, startup, fetches, make_feed = _build(name)
    built = []
    real = executor_module.Plan

    class Counting(real):
        def __init__(self, program, *a, **k):
            if program is main:
                built.append(a[0])
            super().__init__(program, *a, **k)
    monkeypatch.setattr(executor_module, "Plan", Counting)
    shared = fl.Executor()
    rng = np.random.default_rng(0)
    feeds = {b: [make_feed(rng, b) for _ in range(2)] for b in SIZES + (1,)}
    order = SIZES + (1,) + SIZES  # each size again after the others: bindings are cached
    for b in order:
        got = _train(shared, main, startup, fetches, feeds[b])
        alone = _train(fl.Executor(), main, startup, fetches, feeds[b])
        assert _same(got, alone), f"{name}: batch {b} differs from a plan of its own: {_diff(got, alone)}"
    assert len(built) == len(order) + 2  # a fresh plan per run alone; the shared executor's two
    plans = {id(shared.compile(main, feeds[b][0], fetches)) for b in SIZES}
    assert len(plans) == 1  # B=2, 3, 7, 64: one plan object; B=1 has its own (broadcasting changes)


def test_feeds_disagreeing_on_the_batch_size_are_refused_naming_them():
    main, startup, fetches, make_feed = _build("mlp")
    exe = fl.Executor()
    exe.run(startup, scope=fl.Scope())
    feed = make_feed(np.random.default_rng(0), 4)
    feed["label"] = feed["label"][:3]
    with pytest.raises(ValueError, match=r"disagree on the batch size.*'x' \[4, 8\].*'label' \[3, 1\]"):
        exe.run(main, feed=feed, fetch_list=fetches, scope=fl.Scope())


def test_a_time_major_feed_and_a_batch_major_feed_must_agree():
    main, startup, fetches, make_feed = _build("static_rnn")
    feed = make_feed(np.random.default_rng(0), 3)
    feed["label"] = np.zeros((2, 1), "int64")
    with pytest.raises(ValueError, match=r"'x' \[4, 3, 3\] \(batch dimension 1\).*'label' \[2, 1\]"):
        fl.Executor().run(main, feed=feed, fetch_list=fetches, scope=fl.Scope())


def test_a_reshape_to_an_explicit_batch_fails_at_other_batch_sizes_as_its_own_plan_would():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data("x", [4])
        y = layers.reshape(x, [6, -1])  # only batch sizes that are multiples of 3 fit
    exe = fl.Executor()
    assert exe.run(main, feed={"x": np.ones((3, 4), "float32")}, fetch_list=[y])[0].shape == (6, 2)
    assert exe.run(main, feed={"x": np.ones((6, 4), "float32")}, fetch_list=[y])[0].shape == (6, 4)
    with pytest.raises(ValueError, match="reshape"):
        exe.run(main, feed={"x": np.ones((4, 4), "float32")}, fetch_list=[y])


def test_a_persistable_shaped_by_the_batch_gets_a_plan_per_batch_size():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data("x", [2])
        keep = main.global_block().create_var(name="last_batch", shape=[-1, 2], dtype="float32", persistable=True)
        layers.assign(layers.scale(x, 2.0), keep)
    exe, scope = fl.Executor(), fl.Scope()
    for b in (2, 3, 2):
        exe.run(main, feed={"x": np.full((b, 2), b, "float32")}, scope=scope)
        np.testing.assert_array_equal(scope.get_array("last_batch"), np.full((b, 2), 2.0 * b))
    plans = {id(exe.compile(main, {"x": np.ones((b, 2), "float32")})) for b in (2, 3)}
    assert len(plans) == 2


def _audit():
    """op type -> 'poly' | 'rebind', as docs/reliability.md's op audit lists them."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text[text.index("### Op audit"):]
    found = {}
    for kind, label in (("poly", "Batch-polymorphic"), ("rebind", "Lowered again")):
        m = re.search(rf"^\*\*{label}[^*]*\*\*[^\n]*\n((?:.+\n)+?)\n", section, re.M)
        for op in re.findall(r"`([a-z0-9_]+)`", m.group(1)):
            found[op] = kind
    return found


def _builtin_ops():
    """The registry without the ops other tests register (their functions live in test modules)."""
    def home(opdef):
        fwd = OPS.get(opdef.type.removesuffix("_grad"), opdef)
        fn = fwd.lower or fwd.kernel
        return getattr(getattr(fn, "py_func", fn), "__module__", "")
    return {t: o for t, o in OPS.items() if home(o).startswith("fluidlite")}


def test_the_op_audit_in_the_docs_lists_every_registered_op_as_the_registry_declares_it():
    audit, ops = _audit(), _builtin_ops()
    assert len(ops) > 100
    assert set(audit) == set(ops), f"not in the audit: {sorted(set(ops) - set(audit))}; " \
                                   f"not ops: {sorted(set(audit) - set(ops))}"
    for t, opdef in ops.items():
        declared = opdef.batch_poly
        poly = (opdef.lower is None) if declared is None else (declared if not callable(declared) else None)
        if poly is not None:
            assert audit[t] == ("poly" if poly else "rebind"), t
        else:  # decided per use: listed as polymorphic when it usually is
            assert audit[t] in ("poly", "rebind"), t


def test_every_op_declared_batch_polymorphic_is_run_at_several_batch_sizes_above():
    covered = set()
    for name in MODELS:
        main = _build(name)[0]
        covered |= {op.type for b in main.blocks for op in b.ops}
    declared = {t for t, o in _builtin_ops().items() if o.lower is not None and o.batch_poly not in (None, False)}
    missing = sorted(declared - covered)
    assert not missing, f"ops declared batch_poly but run by no model of this test: {missing}"


def test_the_memory_plan_of_a_shared_plan_at_another_batch_size_is_that_of_a_plan_of_its_own():
    main, startup, fetches, make_feed = _build("mlp")
    rng = np.random.default_rng(0)
    exe = fl.Executor()
    shared = exe.compile(main, make_feed(rng, 2), fetches)
    feed = make_feed(rng, 5)
    assert exe.compile(main, feed, fetches) is shared
    own = fl.Executor().compile(main, feed, fetches).memory()
    at5 = shared.memory(feed)
    assert (at5.peak_bytes, at5.peak_step, at5.feed_bytes, at5.timeline) == \
        (own.peak_bytes, own.peak_step, own.feed_bytes, own.timeline)
    assert shared.memory().feed_bytes == 2 * (8 * 4 + 8)  # its own batch size: x float32 [2, 8], label int64


def test_a_fused_group_formed_by_a_coincidence_of_shapes_is_not_reused_at_other_batch_sizes():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data("x", [4])
        w = layers.create_parameter([4, 4], "float32")
        a = layers.relu(x)  # [B, 4] next to [4, 4]: one shape at batch size 4 only, so fused there
        c = layers.sigmoid(layers.scale(w, 2.0))
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    assert "fused" in exe.compile(main, {"x": np.ones((4, 4), "float32")}, [a, c]).source
    for b in (4, 5, 3):
        xs = np.random.default_rng(b).standard_normal((b, 4)).astype("float32")
        got = exe.run(main, feed={"x": xs}, fetch_list=[a, c], scope=scope)
        alone = fl.Executor().run(main, feed={"x": xs}, fetch_list=[a, c], scope=scope)
        assert all(np.array_equal(g, o) for g, o in zip(got, alone)), b
