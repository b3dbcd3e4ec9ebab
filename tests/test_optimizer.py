"""Update ops, optimizers and weight decay against NumPy forward/backward/updates written here."""
import math

import numpy as np
import pytest

import fluidlite as fl
from fluidlite.ops import common
from fluidlite import layers
from fluidlite.framework import ROLE_OPTIMIZE
from op_test import check_forward, run_op

rng = np.random.default_rng(0)


# ---- NumPy references of the updates -----------------------------------------------------------
def np_sgd(p, g, lr):
    return p - lr * g


def np_momentum(p, g, v, lr, mu, nesterov):
    v = mu * v + g
    return (p - lr * (g + mu * v) if nesterov else p - lr * v), v


def np_adam(p, g, lr, m1, m2, b1p, b2p, beta1, beta2, eps):
    lr_t = lr * np.sqrt(1 - b2p) / (1 - b1p)
    m1 = beta1 * m1 + (1 - beta1) * g
    m2 = beta2 * m2 + (1 - beta2) * g * g
    return p - lr_t * m1 / (np.sqrt(m2) + eps), m1, m2, b1p * beta1, b2p * beta2


def _cast(dt, *arrays):
    return tuple(np.asarray(a).astype(dt) for a in arrays)


# ---- the ops ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_op(dtype):
    p, g, lr = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), np.array([0.1])
    check_forward("sgd", dict(zip(("Param", "Grad", "LearningRate"), _cast(dtype, p, g, lr))),
                  lambda Param, Grad, LearningRate: np_sgd(Param, Grad, LearningRate[0]).astype(dtype),
                  outputs=("ParamOut",))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_op(dtype, nesterov):
    p, g, v = (rng.standard_normal((5,)) for _ in range(3))
    inputs = dict(zip(("Param", "Grad", "Velocity", "LearningRate"), _cast(dtype, p, g, v, [0.2])))

    def ref(Param, Grad, Velocity, LearningRate):
        po, vo = np_momentum(Param, Grad, Velocity, LearningRate[0], 0.7, nesterov)
        return {"ParamOut": po.astype(dtype), "VelocityOut": vo.astype(dtype)}

    check_forward("momentum", inputs, ref, {"mu": 0.7, "use_nesterov": nesterov}, outputs=("ParamOut", "VelocityOut"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_op(dtype):
    p, g, m1 = (rng.standard_normal((2, 3)) for _ in range(3))
    m2 = rng.random((2, 3))
    slots = ("Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow")
    inputs = dict(zip(slots, _cast(dtype, p, g, [0.01], m1, m2, [0.9 ** 3], [0.999 ** 3])))
    outs = ("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut")

    def ref(Param, Grad, LearningRate, Moment1, Moment2, Beta1Pow, Beta2Pow):
        got = np_adam(Param, Grad, LearningRate[0], Moment1, Moment2, Beta1Pow, Beta2Pow, 0.9, 0.999, 1e-8)
        return {k: v.astype(dtype) for k, v in zip(outs, got)}

    check_forward("adam", inputs, ref, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}, outputs=outs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sign_op(dtype):
    x = np.array([[-2.0, 0.0, 3.5], [0.1, -0.1, 0.0]], dtype)
    check_forward("sign", {"X": x}, lambda X: np.sign(X).astype(dtype))


def test_large_param_uses_parallel_kernels_and_agrees(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    n = 4099
    p, g, v = (rng.standard_normal(n) for _ in range(3))
    got = run_op("momentum", {"Param": p, "Grad": g, "Velocity": v, "LearningRate": np.array([0.1])},
                 {"mu": 0.9}, outputs=("ParamOut", "VelocityOut"))
    want_p, want_v = np_momentum(p, g, v, 0.1, 0.9, False)
    np.testing.assert_allclose(got["ParamOut"], want_p, rtol=1e-12)
    np.testing.assert_allclose(got["VelocityOut"], want_v, rtol=1e-12)
    got = run_op("sgd", {"Param": p, "Grad": g, "LearningRate": np.array([0.1])}, outputs=("ParamOut",))
    np.testing.assert_allclose(got["ParamOut"], np_sgd(p, g, 0.1), rtol=1e-12)
    m2 = rng.random(n)
    ins = {"Param": p, "Grad": g, "LearningRate": np.array([0.1]), "Moment1": v, "Moment2": m2,
           "Beta1Pow": np.array([0.9]), "Beta2Pow": np.array([0.999])}
    got = run_op("adam", ins, outputs=("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"))
    want = np_adam(p, g, 0.1, v, m2, 0.9, 0.999, 0.9, 0.999, 1e-8)
    for have, w in zip(got.values(), want):
        np.testing.assert_allclose(have, w, rtol=1e-12)


def test_update_op_shape_and_dtype_inference_with_batch_dim():
    block = fl.default_main_program().global_block()
    p = block.create_var(name="p", shape=[-1, 3], dtype="float64")
    g = block.create_var(name="g", shape=[-1, 3], dtype="float64")
    v = block.create_var(name="v", shape=[-1, 3], dtype="float64")
    lr = block.create_var(name="lr", shape=[1], dtype="float32")
    block.append_op("momentum", {"Param": p, "Grad": g, "Velocity": v, "LearningRate": lr},
                    {"ParamOut": "po", "VelocityOut": "vo"})
    assert block.var("po").shape == (-1, 3) and block.var("po").dtype == np.float64
    assert block.var("vo").shape == (-1, 3)


def test_update_op_errors_name_op_slot_and_shapes():
    block = fl.default_main_program().global_block()
    p = block.create_var(name="p", shape=[4, 3], dtype="float32")
    g = block.create_var(name="g", shape=[3, 4], dtype="float32")
    g64 = block.create_var(name="g64", shape=[4, 3], dtype="float64")
    lr = block.create_var(name="lr", shape=[1], dtype="float32")
    lr2 = block.create_var(name="lr2", shape=[2], dtype="float32")
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"sgd.*Grad.*'g'.*\[3, 4\]"):
        block.append_op("sgd", {"Param": p, "Grad": g, "LearningRate": lr}, {"ParamOut": "o"})
    with pytest.raises(ValueError, match=r"sgd.*LearningRate.*'lr2'"):
        block.append_op("sgd", {"Param": p, "Grad": p, "LearningRate": lr2}, {"ParamOut": "o"})
    with pytest.raises(ValueError, match=r"sgd.*dtypes differ"):
        block.append_op("sgd", {"Param": p, "Grad": g64, "LearningRate": lr}, {"ParamOut": "o"})
    with pytest.raises(ValueError, match=r"adam.*beta1"):
        block.append_op("adam", {"Param": p, "Grad": p, "LearningRate": lr, "Moment1": p, "Moment2": p,
                                 "Beta1Pow": lr, "Beta2Pow": lr}, {"ParamOut": "o", "Moment1Out": "a",
                                 "Moment2Out": "b", "Beta1PowOut": "c", "Beta2PowOut": "d"}, {"beta1": 1.5})
    assert len(block.ops) == n_ops and "o" not in block.vars


def test_update_is_in_place_on_the_scope_arrays():
    x = layers.data("x", [3], dtype="float64")
    loss = layers.mean(layers.fc(x, 2, bias_attr=False))
    fl.optimizer.Momentum(0.1, 0.9).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    arrays = fl.global_scope().arrays
    before = {n: arrays[n] for n in ("fc_0.w_0", "fc_0.w_0_velocity_0")}
    exe.run(feed={"x": np.ones((2, 3))}, fetch_list=[loss])
    for n, a in before.items():
        assert arrays[n] is a, f"{n} was replaced instead of updated in place"
    assert np.any(before["fc_0.w_0_velocity_0"] != 0)


# ---- the nets and their NumPy twins -----------------------------------------------------------------
def build_net(kind, opt, param_attr=None, minimize_kw=None):
    """regression: fc(4->5, tanh) -> fc(5->1) -> square error -> mean; classifier: fc(4->3) -> softmax xent -> mean."""
    x = layers.data("x", [4], dtype="float64")
    if kind == "regression":
        y = layers.data("y", [1], dtype="float64")
        h = layers.fc(x, 5, act="tanh", param_attr=param_attr)
        pred = layers.fc(h, 1)
        loss = layers.mean(layers.square_error_cost(pred, y))
    else:
        y = layers.data("y", [1], dtype="int64")
        logits = layers.fc(x, 3, param_attr=param_attr)
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, y))
    result = opt.minimize(loss, **(minimize_kw or {})) if opt is not None else None
    return loss, result


def make_data(kind, n=6):
    x = rng.standard_normal((n, 4))
    if kind == "regression":
        return x, np.sin(x.sum(1, keepdims=True))
    return x, rng.integers(0, 3, (n, 1)).astype(np.int64)


def np_loss_grads(kind, P, x, y):
    """Loss and parameter gradients of the net, by hand."""
    if kind == "regression":
        w1, b1, w2, b2 = P["fc_0.w_0"], P["fc_0.b_0"], P["fc_1.w_0"], P["fc_1.b_0"]
        h = np.tanh(x @ w1 + b1)
        pred = h @ w2 + b2
        d = pred - y
        loss = np.mean(d * d)
        dpred = 2 * d / d.size
        dh = dpred @ w2.T * (1 - h * h)
        grads = {"fc_0.w_0": x.T @ dh, "fc_0.b_0": dh.sum(0), "fc_1.w_0": h.T @ dpred, "fc_1.b_0": dpred.sum(0)}
        return loss, grads
    w, b = P["fc_0.w_0"], P["fc_0.b_0"]
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(3)[y[:, 0]]
    loss = np.mean(-np.log((prob * onehot).sum(1)))
    dz = (prob - onehot) / len(x)
    return loss, {"fc_0.w_0": x.T @ dz, "fc_0.b_0": dz.sum(0)}


class NpOptimizer:
    """The same update rules on a dict of parameters."""

    def __init__(self, kind, lr, **kw):
        self.kind, self.lr, self.kw, self.state = kind, lr, kw, {}

    def step(self, P, G, lr_mult=None):
        for n, g in G.items():
            lr = self.lr * (lr_mult or {}).get(n, 1.0)
            if self.kind == "sgd":
                P[n] = np_sgd(P[n], g, lr)
            elif self.kind == "momentum":
                v = self.state.get(n, np.zeros_like(g))
                P[n], self.state[n] = np_momentum(P[n], g, v, lr, self.kw["mu"], self.kw.get("nesterov", False))
            else:
                b1, b2, eps = self.kw["beta1"], self.kw["beta2"], self.kw["eps"]
                m1, m2, p1, p2 = self.state.get(n, (np.zeros_like(g), np.zeros_like(g), b1, b2))
                P[n], m1, m2, p1, p2 = np_adam(P[n], g, lr, m1, m2, p1, p2, b1, b2, eps)
                self.state[n] = (m1, m2, p1, p2)


OPTIMIZERS = {
    "sgd": (lambda: fl.optimizer.SGD(0.1), lambda: NpOptimizer("sgd", 0.1)),
    "momentum": (lambda: fl.optimizer.Momentum(0.05, 0.9), lambda: NpOptimizer("momentum", 0.05, mu=0.9)),
    "nesterov": (lambda: fl.optimizer.Momentum(0.05, 0.9, use_nesterov=True),
                 lambda: NpOptimizer("momentum", 0.05, mu=0.9, nesterov=True)),
    "adam": (lambda: fl.optimizer.Adam(0.05, beta1=0.8, beta2=0.95, epsilon=1e-6),
             lambda: NpOptimizer("adam", 0.05, beta1=0.8, beta2=0.95, eps=1e-6)),
}


def _params():
    return {p.name: fl.fetch_var(p.name).copy() for p in fl.default_main_program().all_parameters()}


def assert_close(have, want, what):
    np.testing.assert_allclose(have, want, rtol=1e-10, atol=1e-13, err_msg=what)


def train_and_compare(kind, fl_opt, np_opt, steps=5, regularize=None, lr_mult=None, update=None):
    """Runs `steps` steps of fluidlite and NumPy side by side; returns the losses."""
    loss, _ = build_net(kind, fl_opt)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    P = _params()
    x, y = make_data(kind)
    losses = []
    for step in range(steps):
        have, = exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
        want, G = np_loss_grads(kind, P, x, y)
        assert_close(have[0], want, f"loss at step {step}")
        if regularize:
            G = {n: g + regularize(n, P[n]) for n, g in G.items()}
        G = {n: g for n, g in G.items() if update is None or n in update}
        np_opt.step(P, G, lr_mult)
        for n, p in _params().items():
            assert_close(p, P[n], f"{n} after step {step}")
        losses.append(want)
    return losses


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["regression", "classifier"])
def test_training_matches_numpy_and_decreases_loss(kind, opt):
    fl_opt, np_opt = OPTIMIZERS[opt]
    losses = train_and_compare(kind, fl_opt(), np_opt())
    assert losses[-1] < losses[0]


def test_learning_rate_changed_through_the_scope_takes_effect():
    opt = fl.optimizer.SGD(0.1)
    loss, _ = build_net("regression", opt)
    assert opt.learning_rate_var.persistable and opt.learning_rate_var.shape == (1,)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    x, y = make_data("regression")
    tensor = fl.global_scope().var(opt.learning_rate_name).get_tensor()
    np.testing.assert_array_equal(np.array(tensor), [0.1])
    for lr in (0.0, 0.3):
        tensor.set(np.array([lr]))
        P = _params()
        _, G = np_loss_grads("regression", P, x, y)
        exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
        for n, p in _params().items():
            assert_close(p, P[n] - lr * G[n], f"{n} with lr {lr}")


def test_learning_rate_given_as_a_variable():
    block = fl.default_main_program().global_block()
    lr = block.create_var(name="my_lr", shape=[1], dtype="float64", persistable=True)
    fl.optimizer.Optimizer._fill(fl.default_startup_program(), lr, 0.2)
    opt = fl.optimizer.SGD(lr)
    assert opt.learning_rate_name == "my_lr"
    train_and_compare("regression", opt, NpOptimizer("sgd", 0.2), steps=2)


def test_per_parameter_learning_rate_multiplies_the_global_rate():
    opt = fl.optimizer.Momentum(0.05, 0.9)
    train_and_compare_attr = fl.ParamAttr(learning_rate=0.25)
    loss, _ = build_net("regression", opt, param_attr=train_and_compare_attr)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    P, np_opt = _params(), NpOptimizer("momentum", 0.05, mu=0.9)
    x, y = make_data("regression")
    for step in range(3):
        exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
        np_opt.step(P, np_loss_grads("regression", P, x, y)[1], {"fc_0.w_0": 0.25})
        for n, p in _params().items():
            assert_close(p, P[n], f"{n} after step {step}")


@pytest.mark.parametrize("decay", ["l2", "l1"])
def test_weight_decay_matches_numpy_and_keeps_the_raw_gradient(decay):
    coeff = 0.03
    reg = fl.regularizer.L2Decay(coeff) if decay == "l2" else fl.regularizer.L1Decay(coeff)
    own = fl.regularizer.L2DecayRegularizer(0.5)  # fc_0.w_0's own regularizer wins over the optimizer's
    loss, (ops, params_grads) = build_net("regression", fl.optimizer.SGD(0.1, regularization=reg),
                                          param_attr=fl.ParamAttr(regularizer=own))
    assert all(op.role == ROLE_OPTIMIZE for op in ops)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    x, y = make_data("regression")
    P = _params()
    _, G = np_loss_grads("regression", P, x, y)
    names = [g.name for _, g in params_grads]
    raw = [fl.grad_var_name(p.name) for p, _ in params_grads]
    assert not set(names) & set(raw)
    got = exe.run(feed={"x": x, "y": y}, fetch_list=[loss] + names + raw)[1:]
    for (p, _), final, g in zip(params_grads, got[:len(names)], got[len(names):]):
        assert_close(g, G[p.name], f"raw gradient of {p.name}")
        penalty = 0.5 * P[p.name] if p.name == "fc_0.w_0" else (
            coeff * P[p.name] if decay == "l2" else coeff * np.sign(P[p.name]))
        assert_close(final, G[p.name] + penalty, f"regularized gradient of {p.name}")
        assert_close(fl.fetch_var(p.name), P[p.name] - 0.1 * (G[p.name] + penalty), f"{p.name} after the step")


def test_parameter_list_restricts_what_is_updated():
    x, y = make_data("regression")
    loss, (_, pg) = build_net("regression", fl.optimizer.SGD(0.1),
                              minimize_kw={"parameter_list": ["fc_1.w_0", "fc_0.b_0"]})
    assert [p.name for p, _ in pg] == ["fc_1.w_0", "fc_0.b_0"]
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    P = _params()
    _, G = np_loss_grads("regression", P, x, y)
    exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
    for n, p in _params().items():
        want = P[n] - 0.1 * G[n] if n in ("fc_1.w_0", "fc_0.b_0") else P[n]
        assert_close(p, want, n)


def test_no_grad_set_and_non_trainable_parameters_are_not_updated():
    x, y = make_data("regression")
    frozen = fl.ParamAttr(trainable=False)
    loss, (_, pg) = build_net("regression", fl.optimizer.SGD(0.1), param_attr=frozen,
                              minimize_kw={"no_grad_set": {"fc_1.b_0"}})
    assert sorted(p.name for p, _ in pg) == ["fc_0.b_0", "fc_1.w_0"]
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    P = _params()
    _, G = np_loss_grads("regression", P, x, y)
    exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
    for n, p in _params().items():
        assert_close(p, P[n] - 0.1 * G[n] if n in ("fc_0.b_0", "fc_1.w_0") else P[n], n)


def test_non_trainable_parameter_listed_explicitly_is_still_not_updated():
    loss, (ops, pg) = build_net("regression", fl.optimizer.SGD(0.1), param_attr=fl.ParamAttr(trainable=False),
                                minimize_kw={"parameter_list": ["fc_0.w_0", "fc_1.w_0"]})
    assert [p.name for p, _ in pg] == ["fc_1.w_0"]
    assert [op.input("Param") for op in ops if op.type == "sgd"] == [["fc_1.w_0"]]


def test_apply_gradients_appends_update_ops_only():
    opt = fl.optimizer.Adam(0.01)
    loss, _ = build_net("regression", None)
    block = loss.block
    params_grads = opt.backward(loss)
    n_ops = len(block.ops)
    ops = opt.apply_gradients(params_grads)
    assert block.ops[n_ops:] == ops and [op.type for op in ops] == ["adam"] * 4
    assert all(op.output("ParamOut") == op.input("Param") for op in ops)


def test_grad_clip_goes_through_fluidlite_clip():
    x, y = make_data("regression")
    clip = fl.clip
    loss, (_, pg) = build_net("regression", fl.optimizer.SGD(0.1),
                              minimize_kw={"grad_clip": clip.GradientClipByValue(0.01)})
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    P = _params()
    _, G = np_loss_grads("regression", P, x, y)
    exe.run(feed={"x": x, "y": y}, fetch_list=[loss])
    for n, p in _params().items():
        assert_close(p, P[n] - 0.1 * np.clip(G[n], -0.01, 0.01), n)
    with fl.program_guard(fl.Program(), fl.Program()), pytest.raises(TypeError, match="grad_clip must be a GradientClip"):
        build_net("regression", fl.optimizer.SGD(0.1), minimize_kw={"grad_clip": object()})


@pytest.mark.parametrize("make", [fl.regularizer.L2Decay, fl.regularizer.L1Decay])
def test_regularizer_arguments_are_checked(make):
    for bad in (-0.1, math.nan, math.inf, "0.1", True, None):
        with pytest.raises(ValueError, match="coeff"):
            make(bad)
    assert make(0.0).coeff == 0.0 and make(1).coeff == 1.0


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="learning_rate"):
        fl.optimizer.SGD(-0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        fl.optimizer.SGD(math.nan)
    with pytest.raises(ValueError, match="momentum"):
        fl.optimizer.Momentum(0.1, momentum=-1)
    with pytest.raises(ValueError, match="beta1"):
        fl.optimizer.Adam(beta1=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        fl.optimizer.Adam(epsilon=-1e-8)
    with pytest.raises(TypeError, match="regularization"):
        fl.optimizer.SGD(0.1, regularization=0.01)
    block = fl.default_main_program().global_block()
    with pytest.raises(ValueError, match="shape"):
        fl.optimizer.SGD(block.create_var(name="lr", shape=[3], dtype="float32"))


@pytest.mark.parametrize("skip", [False, True])
def test_skip_update_input_leaves_parameter_and_state_unchanged(skip):
    p, g, m1 = (rng.standard_normal((2, 3)) for _ in range(3))
    m2 = rng.random((2, 3))
    ins = {"Param": p, "Grad": g, "LearningRate": np.array([0.1]), "Moment1": m1, "Moment2": m2,
           "Beta1Pow": np.array([0.9]), "Beta2Pow": np.array([0.999]), "SkipUpdate": np.array([skip])}
    outs = ("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut")
    got = run_op("adam", ins, outputs=outs)
    want = (p, m1, m2, [0.9], [0.999]) if skip else np_adam(p, g, 0.1, m1, m2, 0.9, 0.999, 0.9, 0.999, 1e-8)
    for slot, w in zip(outs, want):
        np.testing.assert_allclose(got[slot], w, rtol=1e-12, err_msg=slot)
    got = run_op("momentum", {"Param": p, "Grad": g, "Velocity": m1, "LearningRate": np.array([0.1]),
                              "SkipUpdate": np.array([skip])}, {"mu": 0.9}, outputs=("ParamOut", "VelocityOut"))
    want = (p, m1) if skip else np_momentum(p, g, m1, 0.1, 0.9, False)
    np.testing.assert_allclose(got["ParamOut"], want[0], rtol=1e-12)
    np.testing.assert_allclose(got["VelocityOut"], want[1], rtol=1e-12)
    got = run_op("sgd", {"Param": p, "Grad": g, "LearningRate": np.array([0.1]), "SkipUpdate": np.array([skip])},
                 outputs=("ParamOut",))
    np.testing.assert_allclose(got["ParamOut"], p if skip else np_sgd(p, g, 0.1), rtol=1e-12)


def test_skip_update_must_be_one_bool():
    block = fl.default_main_program().global_block()
    p = block.create_var(name="p", shape=[3], dtype="float32")
    lr = block.create_var(name="lr", shape=[1], dtype="float32")
    with pytest.raises(ValueError, match=r"sgd.*SkipUpdate.*'lr'"):
        block.append_op("sgd", {"Param": p, "Grad": p, "LearningRate": lr, "SkipUpdate": lr}, {"ParamOut": "o"})


def test_clip_comes_before_weight_decay():
    """final grad = clip(g) + c * w: the decay term is not clipped (Paddle Fluid's and PyTorch's order)."""
    x = fl.layers.data(name="x", shape=[3], dtype="float64")
    w_attr = fl.ParamAttr(name="w", initializer=fl.initializer.Constant(2.0))
    loss = fl.layers.mean(fl.layers.fc(x, size=1, param_attr=w_attr, bias_attr=False) * 100.0)
    opt = fl.optimizer.SGD(learning_rate=0.1, regularization=fl.regularizer.L2Decay(0.5))
    _, params_grads = opt.minimize(loss, grad_clip=fl.clip.GradientClipByValue(max=0.01))
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, 0.5]])
    (grad,) = exe.run(feed={"x": xs}, fetch_list=[params_grads[0][1]])
    raw = 100.0 * xs.mean(axis=0).reshape(3, 1)  # d loss / d w
    expected = np.clip(raw, -0.01, 0.01) + 0.5 * 2.0
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    np.testing.assert_allclose(fl.fetch_var("w"), 2.0 - 0.1 * expected, rtol=1e-12)


@pytest.mark.parametrize("dtype,n", [("float32", 7), ("float64", 7), ("float64", 4099)])
def test_adam_in_place_kernels_update_the_scopes_arrays_like_numpy(dtype, n, monkeypatch):
    """Outputs named like the inputs take the in-place loops (serial, and parallel for large Param)."""
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    main = fl.Program()
    block = main.global_block()
    names = ("p", "g", "lr", "m1", "m2", "b1p", "b2p")
    shapes = (n, n, 1, n, n, 1, 1)
    vs = {k: block.create_var(name=k, shape=[s], dtype=dtype, persistable=True) for k, s in zip(names, shapes)}
    slots = ("Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow")
    block.append_op("adam", dict(zip(slots, (vs[k] for k in names))),
                    {"ParamOut": vs["p"], "Moment1Out": vs["m1"], "Moment2Out": vs["m2"],
                     "Beta1PowOut": vs["b1p"], "Beta2PowOut": vs["b2p"]}, {"beta1": 0.9, "beta2": 0.999})
    vals = [rng.standard_normal(n), rng.standard_normal(n), [0.01], rng.standard_normal(n), rng.random(n),
            [0.9 ** 2], [0.999 ** 2]]
    vals = [np.asarray(v, dtype) for v in vals]
    scope = fl.Scope()
    for k, v in zip(names, vals):
        scope.set_array(k, v.copy())
    held = scope.get_array("p")
    fl.Executor().run(main, scope=scope)
    want = np_adam(*(v.astype(np.float64) for v in vals), 0.9, 0.999, 1e-8)
    tol = 1e-6 if dtype == "float32" else 1e-12
    for k, w in zip(("p", "m1", "m2", "b1p", "b2p"), want):
        np.testing.assert_allclose(scope.get_array(k), w, rtol=tol, atol=tol, err_msg=k)
    assert scope.get_array("p") is held  # updated in place
