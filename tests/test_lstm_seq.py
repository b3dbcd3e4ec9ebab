"""The lstm_seq pass (an unrolled LSTM's steps as one op forward and one backward), its ops and kernels."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import _threads, layers
from fluidlite.compiler import CompileOptions
from fluidlite.kernels import basic as KB
from fluidlite.kernels import lstm_seq as K
from fluidlite.kernels import rnn as KR
from fluidlite.kernels import skinny
from fluidlite.ops.lstm_seq_ops import _consecutive
from fluidlite.registry import InferContext, Meta, get_op_def

TOL = {"float32": 3e-5, "float64": 1e-12}


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _reference(pre, h0, c0, w, fb=0.0):
    """The LSTM's steps in float64 NumPy: (hs, cs, activated gates [i, f, o, j])."""
    hid = h0.shape[1]
    h, c, w = h0.astype(np.float64), c0.astype(np.float64), w.astype(np.float64)
    hs, cs, gates = [], [], []
    for x in pre.astype(np.float64):
        x = x + h @ w
        i, f = _sigmoid(x[:, :hid]), _sigmoid(x[:, hid:2 * hid] + fb)
        o, j = _sigmoid(x[:, 2 * hid:3 * hid]), np.tanh(x[:, 3 * hid:])
        c = f * c + i * j
        h = o * np.tanh(c)
        hs.append(h), cs.append(c), gates.append(np.concatenate([i, f, o, j], axis=1))
    return np.array(hs), np.array(cs), np.array(gates)


def _reference_grad(gates, c0, cs, w, dh, dc, dh_steps=None):
    """Back through the steps in float64 NumPy from the last h's and c's gradients, and dh_steps[t] added to
    h_t's (t < T - 1): (dxs, dc0, dh0)."""
    hid = c0.shape[1]
    gates, cs, w, dh, dc = (a.astype(np.float64) for a in (gates, cs, w, dh, dc))
    dxs = np.empty_like(gates)
    for t in reversed(range(len(gates))):
        if dh_steps is not None and t < len(gates) - 1:
            dh = dh + dh_steps[t]
        i, f, o, j = (gates[t][:, k * hid:(k + 1) * hid] for k in range(4))
        c_prev, tc = cs[t - 1] if t else c0.astype(np.float64), np.tanh(cs[t])
        g = dc + dh * o * (1 - tc * tc)
        dxs[t] = np.concatenate([g * j * i * (1 - i), g * c_prev * f * (1 - f), dh * tc * o * (1 - o),
                                 g * i * (1 - j * j)], axis=1)
        dc, dh = g * f, dxs[t] @ w.T
    return dxs, dc, dh


def _inputs(dtype, steps, rows, hid, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((steps, rows, 4 * hid)).astype(dtype), rng.standard_normal((rows, hid)).astype(dtype),
            rng.standard_normal((rows, hid)).astype(dtype), (rng.standard_normal((hid, 4 * hid)) / np.sqrt(hid)).astype(dtype))


def _forward(pre, h0, c0, w, fb=0.0, parts=2):
    pre = pre.copy()  # it receives the pre-activations
    steps, (rows, hid) = pre.shape[0], h0.shape
    hs, cs, gates = np.empty((steps, rows, hid), pre.dtype), np.empty((steps, rows, hid), pre.dtype), np.empty_like(pre)
    K.lstm_sequence(pre, h0, c0, w, fb, hs, cs, gates, parts)
    return hs, cs, gates


def _backward(gates, c0, cs, w, dh, dc, parts=2, want_h0=True, dh_steps=None):
    dxs, dc0 = np.empty_like(gates), np.empty_like(c0)
    dh0 = np.empty_like(c0) if want_h0 else np.empty((0, 0), c0.dtype)
    dh_steps = np.empty((0,) + c0.shape, c0.dtype) if dh_steps is None else dh_steps
    K.lstm_sequence_backward(gates, c0, cs, w, dh, dc, dh_steps, dxs, dc0, dh0, parts)
    return dxs, dc0, dh0


# whole tiles and panels; 4 rows past two tiles (BLAS) and 4H = 160 (5 panels), H = 40 (one panel and 8
# columns) in the backward's product; no whole tile at all
SHAPES = [(4, 16, 32), (3, 20, 40), (3, 5, 8)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps, rows, hid", SHAPES)
def test_the_forward_kernel_matches_numpy_on_any_thread_count(dtype, steps, rows, hid):
    pre, h0, c0, w = _inputs(dtype, steps, rows, hid)
    want = _reference(pre, h0, c0, w, fb=0.5)
    runs = [_forward(pre, h0, c0, w, 0.5, parts) for parts in (1, 2, 3)]
    assert all(got.dtype == np.dtype(dtype) for got in runs[1])
    for run in runs:
        for got, ref in zip(run, want):
            np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype])
        for got, first in zip(run, runs[0]):  # whole tiles per band: the bits do not follow the thread count
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps, rows, hid", SHAPES)
def test_the_backward_kernel_matches_numpy_on_any_thread_count(dtype, steps, rows, hid):
    pre, h0, c0, w = _inputs(dtype, steps, rows, hid, seed=1)
    hs, cs, gates = _forward(pre, h0, c0, w)
    rng = np.random.default_rng(2)
    dh, dc = rng.standard_normal((2, rows, hid)).astype(dtype)
    want = _reference_grad(gates, c0, cs, w, dh, dc)
    runs = [_backward(gates, c0, cs, w, dh, dc, parts) for parts in (1, 2, 3)]
    for run in runs:
        for got, ref in zip(run, want):
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype])
        for got, first in zip(run, runs[0]):
            np.testing.assert_array_equal(got, first)
    without_h0 = _backward(gates, c0, cs, w, dh, dc, want_h0=False)
    np.testing.assert_array_equal(without_h0[0], runs[1][0])
    assert without_h0[2].size == 0
    dh_steps = rng.standard_normal((steps - 1, rows, hid)).astype(dtype)  # h_0..h_{T-2} read elsewhere too
    want = _reference_grad(gates, c0, cs, w, dh, dc, dh_steps)
    for got, ref in zip(_backward(gates, c0, cs, w, dh, dc, dh_steps=dh_steps), want):
        np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("steps, rows, hid", SHAPES)
def test_the_backward_kernel_is_the_gradient_by_finite_differences(steps, rows, hid):
    pre, h0, c0, w = _inputs("float64", steps, rows, hid, seed=3)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, rows, hid))

    def loss(pre, h0, c0):  # through the NumPy forward: the kernel's gradient against an independent function
        hs, cs, _ = _reference(pre, h0, c0, w)
        return np.sum(hs[-1] * a) + np.sum(cs[-1] * b)

    hs, cs, gates = _forward(pre, h0, c0, w)
    grads = _backward(gates, c0, cs, w, a, b)
    for k, (value, grad) in enumerate(zip((pre, c0, h0), grads)):
        for flat in rng.choice(value.size, 8, replace=False):
            idx = np.unravel_index(flat, value.shape)
            args = [pre, h0, c0]
            plus, minus = (v.copy() for v in (value, value))
            plus[idx] += 1e-6
            minus[idx] -= 1e-6
            slot = (0, 2, 1)[k]
            numeric = (loss(*[plus if s == slot else x for s, x in enumerate(args)])
                       - loss(*[minus if s == slot else x for s, x in enumerate(args)])) / 2e-6
            assert abs(numeric - grad[idx]) <= 1e-7 + 1e-6 * abs(numeric), (k, idx, numeric, grad[idx])


@pytest.mark.skipif(not skinny.AVAILABLE, reason="the tiles (and their bits) need an AVX-512 CPU")
def test_float32_steps_have_the_bits_of_the_step_by_step_kernels(split):
    split(2)  # as in a plan: these products run in skinny's tiles, step by step too
    pre, h0, c0, w = _inputs("float32", 3, 32, 128)
    hs, cs, gates = _forward(pre, h0, c0, w)
    h, c = h0, c0
    for t in range(3):
        x = pre[t].copy()
        KB.matmul_acc(h, w, x)
        c, h, gate = KR.lstm_unit_into(x, c, 0.0, np.empty_like(c0), np.empty_like(h0), np.empty_like(x))
        for got, step in zip((hs[t], cs[t], gates[t]), (h, c, gate)):
            np.testing.assert_array_equal(got, step)
    dh, dc = np.random.default_rng(5).standard_normal((2, 32, 128)).astype(np.float32)
    dxs, dc0, dh0 = _backward(gates, c0, cs, w, dh, dc)
    w_t = np.ascontiguousarray(w.T)
    for t in reversed(range(3)):
        dx, dc = KR.lstm_unit_grad_into(gates[t], cs[t - 1] if t else c0, cs[t], dh, dc, np.empty_like(pre[0]),
                                        np.empty_like(c0))
        dh = KB.matmul2d(dx, w_t)
        np.testing.assert_array_equal(dxs[t], dx)
    np.testing.assert_array_equal(dc0, dc)
    np.testing.assert_array_equal(dh0, dh)


def test_consecutive_finds_the_buffer_of_slices_in_order_only():
    buf = np.zeros((5, 3, 4), np.float32)
    whole = _consecutive([buf[t] for t in range(1, 4)])
    assert whole is not None and whole.shape == (3, 3, 4) and np.shares_memory(whole, buf)
    whole[0, 0, 0] = 7
    assert buf[1, 0, 0] == 7
    assert _consecutive([buf[t] for t in (1, 3, 2)]) is None
    assert _consecutive([buf[0], np.zeros((3, 4), np.float32)]) is None
    assert _consecutive([buf[0].copy(), buf[1].copy()]) is None
    assert _consecutive([buf[t, :, :2] for t in range(2)]) is None


# ---- the ops ----------------------------------------------------------------------------------------

def _seq_op(block, dtype, steps, rows, hid, first=0, extra=0):
    names = {s: [f"{s.lower()}_{t}" for t in range(steps)] for s in ("C", "H", "Gate")}
    make = lambda n, shape: block.create_var(name=n, shape=shape, dtype=dtype)  # noqa: E731
    ins = {"Pre": make("pre", (steps + extra, rows, 4 * hid)), "H0": make("h0", (rows, hid)),
           "C0": make("c0", (rows, hid)), "W": make("w", (hid, 4 * hid))}
    block.append_op("lstm_sequence", ins, names, {"steps": steps, "first": first, "forget_bias": 0.25})
    return names


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_sequence_op_against_numpy(dtype):
    block = fl.default_main_program().global_block()
    names = _seq_op(block, dtype, 3, 20, 40, first=1, extra=2)
    assert all(block.var(n).shape == (20, 40) for n in names["C"] + names["H"])
    assert all(block.var(n).shape == (20, 160) and block.var(n).dtype == np.dtype(dtype) for n in names["Gate"])
    pre, h0, c0, w = _inputs(dtype, 5, 20, 40)
    fed = pre.copy()
    fetch = names["C"] + names["H"] + names["Gate"]
    got = fl.Executor().run(feed={"pre": fed, "h0": h0, "c0": c0, "w": w}, fetch_list=fetch)
    hs, cs, gates = _reference(pre[1:4], h0, c0, w, fb=0.25)
    for k, want in enumerate((cs, hs, gates)):
        for t in range(3):
            np.testing.assert_allclose(got[3 * k + t], want[t], rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(fed, pre)  # a fed value is never overwritten


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lstm_sequence_backward_op_against_numpy(dtype):
    steps, rows, hid = 3, 20, 40
    pre, h0, c0, w = _inputs(dtype, steps, rows, hid, seed=6)
    hs, cs, gates = (a.astype(dtype) for a in _reference(pre, h0, c0, w))
    dh, dc = np.random.default_rng(7).standard_normal((2, rows, hid)).astype(dtype)
    block = fl.default_main_program().global_block()
    make = lambda n, a: block.create_var(name=n, shape=a.shape, dtype=dtype)  # noqa: E731
    feed = {f"g{t}": gates[t] for t in range(steps)} | {f"cs{t}": cs[t] for t in range(steps)}
    feed |= {"c0": c0, "w": w, "dh": dh, "dc": dc}
    v = {n: make(n, a) for n, a in feed.items()}
    ins = {"Gate": [v[f"g{t}"] for t in range(steps)], "C": [v[f"cs{t}"] for t in range(steps)], "C0": v["c0"],
           "W": v["w"], "LastH@GRAD": v["dh"], "LastC@GRAD": v["dc"]}
    dh_steps = np.random.default_rng(8).standard_normal((steps - 1, rows, hid)).astype(dtype)
    feed |= {f"e{t}": dh_steps[t] for t in range(steps - 1)}
    ins["StepH@GRAD"] = [make(f"e{t}", dh_steps[t]) for t in range(steps - 1)]
    outs = {"X@GRAD": [f"dx{t}" for t in range(steps)], "C0@GRAD": ["dc0"], "H0@GRAD": ["dh0"]}
    block.append_op("lstm_sequence_backward", ins, outs, {})
    assert block.var("dx0").shape == (rows, 4 * hid) and block.var("dh0").shape == (rows, hid)
    got = fl.Executor().run(feed=feed, fetch_list=outs["X@GRAD"] + ["dc0", "dh0"])
    dxs, dc0, dh0 = _reference_grad(gates, c0, cs, w, dh, dc, dh_steps)
    for have, want in zip(got, list(dxs) + [dc0, dh0]):
        assert have.dtype == np.dtype(dtype)
        np.testing.assert_allclose(have, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_the_ops_refuse_bad_shapes_and_dtypes_and_add_nothing():
    block = fl.default_main_program().global_block()
    with pytest.raises(ValueError, match=r"lstm_sequence.*steps first=2 to first\+steps=5.*Pre='pre' shape=\[4, 8, 16\]"):
        _seq_op(block, "float32", 3, 8, 4, first=2, extra=1)
    assert "c_0" not in block.vars
    make = lambda n, shape, dtype="float32": block.create_var(name=n, shape=shape, dtype=dtype)  # noqa: E731
    ins = {"Pre": make("p2", (3, 8, 16)), "H0": make("h2", (8, 4)), "C0": make("c2", (8, 4)), "W": make("w2", (4, 12))}
    outs = {s: [f"{s}{t}" for t in range(3)] for s in ("C", "H", "Gate")}
    with pytest.raises(ValueError, match=r"lstm_sequence.*W='w2' shape=\[4, 12\]"):
        block.append_op("lstm_sequence", ins, outs, {"steps": 3})
    with pytest.raises(ValueError, match=r"lstm_sequence.*float"):
        block.append_op("lstm_sequence", dict(ins, W=make("wi", (4, 16), "int32")), outs, {"steps": 3})
    g = [make(f"gg{t}", (8, 16)) for t in range(2)]
    c = [make(f"cc{t}", (8, 4)) for t in range(2)]
    bad = {"Gate": g, "C": c, "C0": make("c02", (8, 4)), "W": make("w3", (4, 16)),
           "LastH@GRAD": make("dh2", (8, 5)), "LastC@GRAD": make("dc2", (8, 4))}
    with pytest.raises(ValueError, match=r"lstm_sequence_backward.*LastH@GRAD='dh2' shape=\[8, 5\]"):
        block.append_op("lstm_sequence_backward", bad, {"X@GRAD": ["dxa", "dxb"]}, {})
    two = dict(bad, **{"LastH@GRAD": make("dh3", (8, 4)), "StepH@GRAD": [make(f"ee{t}", (8, 4)) for t in range(2)]})
    with pytest.raises(ValueError, match=r"lstm_sequence_backward.*T - 1 of them"):
        block.append_op("lstm_sequence_backward", two, {"X@GRAD": ["dxa", "dxb"]}, {})
    assert not {"C0", "dxa"} & set(block.vars)


def _lowered(op_type, metas, attrs, outputs, overwritable=frozenset()):
    opdef = get_op_def(op_type)
    return opdef.lower(InferContext(opdef, metas, attrs, outputs, overwritable))


def test_lstm_sequence_writes_into_given_arrays_and_overwrites_pre_only_when_allowed():
    pre, h0, c0, w = _inputs("float32", 3, 16, 32)
    metas = {s: [Meta(s.lower(), a.shape, a.dtype)] for s, a in (("Pre", pre), ("H0", h0), ("C0", c0), ("W", w))}
    outputs = {s: [f"{s}{t}" for t in range(3)] for s in ("C", "H", "Gate")}
    attrs = {"steps": 3, "first": 0, "forget_bias": 0.0}
    hs, cs, gates = _forward(pre, h0, c0, w)
    stacked_h = np.empty((3, 16, 32), np.float32)
    reversed_c = np.empty((3, 16, 32), np.float32)
    given = [reversed_c[2 - t] for t in range(3)] + [stacked_h[t] for t in range(3)] + [None, np.empty((16, 128), np.float32), None]
    kept = pre.copy()
    got = _lowered("lstm_sequence", metas, attrs, outputs)(kept, h0, c0, w, out=given)
    np.testing.assert_array_equal(kept, pre)
    for t in range(3):
        np.testing.assert_array_equal(reversed_c[2 - t], cs[t])  # not in order: written, then copied in
        np.testing.assert_array_equal(stacked_h[t], hs[t])  # in order: written in place
        assert got[t] is given[t] and np.shares_memory(got[3 + t], stacked_h)
        np.testing.assert_array_equal(got[6 + t], gates[t])
    assert got[7] is given[7]
    overwrite = _lowered("lstm_sequence", metas, attrs, outputs, frozenset({"Pre"}))
    mine = pre.copy()
    overwrite(mine, h0, c0, w)
    assert not np.array_equal(mine, pre)  # the pre-activations went into its buffer
    np.testing.assert_allclose(mine, pre + np.concatenate([h0[None], hs[:2]]) @ w, rtol=1e-5, atol=1e-5)


def test_lstm_sequence_backward_takes_strided_states_and_stacks_scattered_steps():
    steps, rows, hid = 3, 16, 32
    pre, h0, c0, w = _inputs("float32", steps, rows, hid, seed=9)
    hs, cs, gates = _forward(pre, h0, c0, w)
    dh, dc = np.random.default_rng(10).standard_normal((2, rows, hid)).astype(np.float32)
    metas = {"Gate": [Meta(f"g{t}", gates[t].shape, gates.dtype) for t in range(steps)],
             "C": [Meta(f"c{t}", cs[t].shape, cs.dtype) for t in range(steps)]}
    metas |= {s: [Meta(s, a.shape, a.dtype)] for s, a in (("C0", c0), ("W", w), ("LastH@GRAD", dh), ("LastC@GRAD", dc))}
    outputs = {"X@GRAD": [f"dx{t}" for t in range(steps)], "C0@GRAD": ["dc0"], "H0@GRAD": ["dh0"]}
    run = _lowered("lstm_sequence_backward", metas, {}, outputs)
    scattered = [g.copy() for g in gates]  # not slices of one buffer: stacked by a copy
    got = run(*scattered, *cs, np.asfortranarray(c0), w, dh, np.asfortranarray(dc))
    want = _reference_grad(gates, c0, cs, w, dh, dc)
    for have, ref in zip(got, list(want[0]) + [want[1], want[2]]):
        np.testing.assert_allclose(have, ref, rtol=TOL["float32"], atol=TOL["float32"])


# ---- the pass ----------------------------------------------------------------------------------------

def _net(dtype, steps, hid, every_output=False, learned_h0=False, h0_read_twice=False, error_clip=None):
    x = layers.data("x", [steps, -1, 8], dtype=dtype, append_batch_size=False)
    label = layers.data("label", [1], dtype="int64")
    h0 = layers.fc(layers.reduce_mean(x, dim=0), hid, name="h0") if learned_h0 else None
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(init=h0) if learned_h0 else rnn.memory(shape=[-1, hid], batch_ref=x_t)
        c_prev = rnn.memory(shape=[-1, hid], batch_ref=x_t)
        h, c = layers.lstm_unit(x_t, h_prev, c_prev, param_attr=[fl.ParamAttr(name="w_ih"), fl.ParamAttr(name="w_hh")],
                                bias_attr=fl.ParamAttr(name="b"))
        h.error_clip = error_clip
        rnn.update_memory(h_prev, h)
        rnn.update_memory(c_prev, c)
        if every_output:
            rnn.step_output(h)
    feature = layers.reduce_mean(rnn(), dim=0) if every_output else rnn.step_var(h)
    if h0_read_twice:
        feature = layers.elementwise_add(feature, h0)
    loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(feature, 3), label))
    fl.optimizer.SGD(0.5).minimize(loss, callback=fl.clip.error_clip_callback if error_clip else None)
    return loss


def _train(loss, feeds, batch_grad=True, off=frozenset()):
    """(losses, parameters after the steps, the plan of the first feed, the scope), the pass on or off."""
    exe = fl.Executor(compile_options=CompileOptions(disabled=frozenset(off), debug=True, batch_grad=batch_grad))
    scope = fl.Scope()
    exe.run(fl.default_startup_program(), scope=scope)
    losses = [exe.run(feed=f, fetch_list=[loss], scope=scope)[0] for f in feeds]
    params = {n: np.array(scope.find_var(n).get_tensor()) for n in ("w_ih", "w_hh", "b")}
    return losses, params, exe.compile(feed=feeds[0], fetch_list=[loss]), scope


def _feeds(dtype, steps, batch, n=3):
    rng = np.random.default_rng(8)
    return [{"x": rng.standard_normal((steps, batch, 8)).astype(dtype), "label": rng.integers(0, 3, (batch, 1))}
            for _ in range(n)]


def _same(on, off, bits):
    """Losses and trained parameters bit for bit, or to float32 rounding over a few steps."""
    for a, b in list(zip(on[0], off[0])) + [(on[1][n], off[1][n]) for n in on[1]]:
        if bits:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _types(plan):
    return [s.op.type for s in plan.steps]


_threads.choose_layer()  # as an Executor does first
# float32 on an AVX-512 CPU while the pool runs the products: then step by step, products large enough to
# split run in skinny's tiles too, and the bits agree
APPLIES = skinny.AVAILABLE and _threads.pool_on()
NOT_HERE = "the pass applies to float32 on AVX-512 CPUs with products on fluidlite's pool only"


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_an_lstm_trains_as_one_op_each_way_with_the_bits_of_its_steps():
    loss = _net("float32", 5, 128)
    feeds = _feeds("float32", 5, 32)
    on, off = _train(loss, feeds), _train(loss, feeds, off={"lstm_seq"})
    types = _types(on[2])
    assert types.count("lstm_sequence") == 1 and types.count("lstm_sequence_backward") == 1
    assert not {"lstm_unit", "lstm_unit_grad", "transpose", "unstack"} & set(types)
    assert _types(off[2]).count("lstm_unit") == 5 and _types(off[2]).count("lstm_unit_grad") == 5
    forward, = [s for s in on[2].steps if s.op.type == "lstm_sequence"]
    backward, = [s for s in on[2].steps if s.op.type == "lstm_sequence_backward"]
    assert "Pre" in forward.overwritable  # the input projection's buffer takes the pre-activations
    assert all(backward.into[:5]) and "H0@GRAD" not in backward.op.outputs  # the gate gradients stacked in place
    assert all(op.type != "lstm_sequence" for op in fl.default_main_program().global_block().ops)
    _same(on, off, bits=True)


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_without_batch_grad_each_step_keeps_its_weight_gradient_product():
    loss = _net("float32", 4, 128)
    feeds = _feeds("float32", 4, 32)
    on, off = _train(loss, feeds, batch_grad=False), _train(loss, feeds, batch_grad=False, off={"lstm_seq"})
    types = _types(on[2])
    assert types.count("lstm_sequence") == 1 and types.count("lstm_sequence_backward") == 1
    assert "lstm_unit_grad" not in types
    w_grads = [s for s in on[2].steps if s.op.type == "mul_grad" and s.op.inputs["Y"] == ["w_hh"]]
    assert len(w_grads) == 4 and all(list(s.op.outputs) == ["Y@GRAD"] for s in w_grads)
    _same(on, off, bits=False)  # step by step, dX_t W^T goes to BLAS through W's transposed view


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
@pytest.mark.parametrize("hid, batch", [(64, 16), (128, 32)])
def test_every_step_read_outside_adds_its_gradient_and_the_outputs_are_stacked_in_place(hid, batch):
    loss = _net("float32", 4, hid, every_output=True)
    feeds = _feeds("float32", 4, batch)
    on, off = _train(loss, feeds), _train(loss, feeds, off={"lstm_seq"})
    types = _types(on[2])
    assert types.count("lstm_sequence") == 1 and types.count("lstm_sequence_backward") == 1
    # the products dX_t W^T and their sums with the stack's gradient (one mul_acc each at K = 256) are gone
    assert "lstm_unit_grad" not in types and "transpose" not in types
    assert not [s for s in on[2].steps if s.op.type in ("sum", "mul", "mul_acc") and "w_hh@TRANSPOSED" in s.in_names]
    forward, = [s for s in on[2].steps if s.op.type == "lstm_sequence"]
    backward, = [s for s in on[2].steps if s.op.type == "lstm_sequence_backward"]
    assert [bool(e) for e in forward.into] == [False] * 4 + [True] * 4 + [False] * 4  # H written into the stack
    assert len(backward.op.inputs["StepH@GRAD"]) == 3  # dh_t from the stacked output, for t < T
    _same(on, off, bits=hid == 128)  # [16, 256] x [256, 64] products: BLAS step by step


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_a_plan_run_at_other_batch_sizes_matches_the_steps():
    loss = _net("float32", 4, 64)
    feeds = _feeds("float32", 4, 16, n=1) + _feeds("float32", 4, 21, n=1) + _feeds("float32", 4, 3, n=1)
    on, off = _train(loss, feeds), _train(loss, feeds, off={"lstm_seq"})
    assert "lstm_sequence" in _types(on[2])
    _same(on, off, bits=False)


@pytest.mark.parametrize("dtype, batch, off", [("float64", 16, ()), ("float32", 8, ()), ("float32", 16, ("lstm_seq",))])
def test_the_pass_leaves_other_lstms_step_by_step(dtype, batch, off):
    loss = _net(dtype, 3, 32)
    plan = _train(loss, _feeds(dtype, 3, batch, n=1), off=off)[2]
    assert _types(plan).count("lstm_unit") == 3 and "lstm_sequence" not in _types(plan)


def test_the_pass_leaves_the_steps_to_a_blas_with_its_own_threads(monkeypatch):
    monkeypatch.setattr(_threads, "_pool_parts", 0)  # as with FLUIDLITE_BLAS=onednn or mkl
    loss = _net("float32", 3, 32)
    plan = _train(loss, _feeds("float32", 3, 16, n=1))[2]
    assert _types(plan).count("lstm_unit") == 3 and "lstm_sequence" not in _types(plan)


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_a_fetched_step_input_splits_the_chain_and_stays_fetchable():
    loss = _net("float32", 5, 64)
    feeds = _feeds("float32", 5, 16, n=1)
    plain = fl.Executor(compile_options=CompileOptions(disabled=frozenset({"lstm_seq"}), batch_grad=True))
    steps = plain.compile(feed=feeds[0], fetch_list=[loss]).steps
    unstack, = [s for s in steps if s.op.type == "unstack"]
    units = [s for s in steps if s.op.type == "lstm_unit"]
    fetch = [loss, unstack.out_names[2], units[3].op.outputs["Gate"][0], units[4].op.outputs["H"][0]]
    runs = []
    for off in (frozenset(), frozenset({"lstm_seq"})):
        exe = fl.Executor(compile_options=CompileOptions(disabled=off, debug=True, batch_grad=True))
        scope = fl.Scope()
        exe.run(fl.default_startup_program(), scope=scope)
        runs.append((exe.run(feed=feeds[0], fetch_list=fetch, scope=scope), exe.compile(feed=feeds[0], fetch_list=fetch)))
    (on, plan), (off, _) = runs
    chains = [s for s in plan.steps if s.op.type == "lstm_sequence"]
    assert [(s.op.attrs["first"], s.op.attrs["steps"]) for s in chains] == [(0, 2), (3, 2)]
    assert "unstack" in _types(plan) and not any("Pre" in s.overwritable for s in chains)
    for a, b in zip(on, off):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # these small products: BLAS step by step


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
@pytest.mark.parametrize("hid, batch, twice", [(64, 16, False), (64, 16, True), (128, 32, True)])
def test_a_learned_initial_state_gets_its_gradient(hid, batch, twice):
    loss = _net("float32", 4, hid, every_output=True, learned_h0=True, h0_read_twice=twice)
    feeds = _feeds("float32", 4, batch)
    on, off = _train(loss, feeds), _train(loss, feeds, off={"lstm_seq"})
    backward, = [s for s in on[2].steps if s.op.type == "lstm_sequence_backward"]
    # h_0 read elsewhere too, at K = 4H = 256: the mul_acc pass added dX_1 W^T to its other gradient, and
    # that step stays, after the loop; otherwise the loop makes dX_1 W^T (and a sum, if any, adds the rest)
    mul_acc_last = twice and hid == 64
    assert ("H0@GRAD" in backward.op.outputs) != mul_acc_last
    assert "lstm_unit_grad" not in _types(on[2])
    _same(on, off, bits=hid == 128)
    for name in ("h0.w_0", "h0.b_0"):  # the initial state's own parameters trained alike
        a, b = (np.array(r[3].find_var(name).get_tensor()) for r in (on, off))
        if hid == 128:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not APPLIES, reason=NOT_HERE)
def test_an_error_clip_on_each_hidden_state_keeps_the_backward_step_by_step():
    loss = _net("float32", 4, 128, error_clip=fl.clip.ErrorClipByValue(1e-4))
    feeds = _feeds("float32", 4, 32)
    on, off = _train(loss, feeds), _train(loss, feeds, off={"lstm_seq"})
    types = _types(on[2])
    # each dL/dh_t is clipped between the steps: the forward is one op, the backward stays per step
    assert types.count("lstm_sequence") == 1 and "lstm_sequence_backward" not in types
    assert types.count("lstm_unit_grad") == 4 and types.count("clip") >= 3
    _same(on, off, bits=True)
