"""RMSProp, Adagrad and AdamW: their update ops and whole training runs against NumPy written here."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.ops import common
from op_test import check_forward, run_op

rng = np.random.default_rng(3)


def np_rmsprop(p, g, ms, mom, lr, rho, eps, mu):
    ms = rho * ms + (1 - rho) * g * g
    mom = mu * mom + lr * g / np.sqrt(ms + eps)
    return p - mom, ms, mom


def np_adagrad(p, g, m, lr, eps):
    m = m + g * g
    return p - lr * g / (np.sqrt(m) + eps), m


def np_adamw(p, g, lr, m1, m2, b1p, b2p, beta1, beta2, eps, coeff):
    p = p - lr * coeff * p
    lr_t = lr * np.sqrt(1 - b2p) / (1 - b1p)
    m1 = beta1 * m1 + (1 - beta1) * g
    m2 = beta2 * m2 + (1 - beta2) * g * g
    return p - lr_t * m1 / (np.sqrt(m2) + eps), m1, m2, b1p * beta1, b2p * beta2


def _cast(dt, *arrays):
    return tuple(np.asarray(a).astype(dt) for a in arrays)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rmsprop_op(dtype):
    p, g, mom = (rng.standard_normal((3, 4)) for _ in range(3))
    ms = rng.random((3, 4))
    inputs = dict(zip(("Param", "Grad", "MeanSquare", "Moment", "LearningRate"), _cast(dtype, p, g, ms, mom, [0.05])))
    outs = ("ParamOut", "MeanSquareOut", "MomentOut")

    def ref(Param, Grad, MeanSquare, Moment, LearningRate):
        got = np_rmsprop(Param, Grad, MeanSquare, Moment, LearningRate[0], 0.9, 1e-6, 0.5)
        return {k: v.astype(dtype) for k, v in zip(outs, got)}

    check_forward("rmsprop", inputs, ref, {"rho": 0.9, "epsilon": 1e-6, "momentum": 0.5}, outputs=outs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adagrad_op(dtype):
    p, g = rng.standard_normal((5,)), rng.standard_normal((5,))
    m = rng.random(5)
    inputs = dict(zip(("Param", "Grad", "Moment", "LearningRate"), _cast(dtype, p, g, m, [0.1])))

    def ref(Param, Grad, Moment, LearningRate):
        po, mo = np_adagrad(Param, Grad, Moment, LearningRate[0], 1e-6)
        return {"ParamOut": po.astype(dtype), "MomentOut": mo.astype(dtype)}

    check_forward("adagrad", inputs, ref, {"epsilon": 1e-6}, outputs=("ParamOut", "MomentOut"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_op(dtype):
    p, g, m1 = (rng.standard_normal((2, 3)) for _ in range(3))
    m2 = rng.random((2, 3))
    slots = ("Param", "Grad", "LearningRate", "Moment1", "Moment2", "Beta1Pow", "Beta2Pow")
    inputs = dict(zip(slots, _cast(dtype, p, g, [0.01], m1, m2, [0.9 ** 2], [0.999 ** 2])))
    outs = ("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut")

    def ref(Param, Grad, LearningRate, Moment1, Moment2, Beta1Pow, Beta2Pow):
        got = np_adamw(Param, Grad, LearningRate[0], Moment1, Moment2, Beta1Pow, Beta2Pow, 0.9, 0.999, 1e-8, 0.3)
        return {k: v.astype(dtype) for k, v in zip(outs, got)}

    check_forward("adamw", inputs, ref, {"coeff": 0.3}, outputs=outs)


def test_large_params_use_the_parallel_kernels_and_agree(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    n = 4099
    p, g, mom = (rng.standard_normal(n) for _ in range(3))
    ms = rng.random(n)
    got = run_op("rmsprop", {"Param": p, "Grad": g, "MeanSquare": ms, "Moment": mom, "LearningRate": np.array([0.1])},
                 {"momentum": 0.9}, outputs=("ParamOut", "MeanSquareOut", "MomentOut"))
    for have, want in zip(got.values(), np_rmsprop(p, g, ms, mom, 0.1, 0.95, 1e-6, 0.9)):
        np.testing.assert_allclose(have, want, rtol=1e-12)
    got = run_op("adagrad", {"Param": p, "Grad": g, "Moment": ms, "LearningRate": np.array([0.1])},
                 outputs=("ParamOut", "MomentOut"))
    for have, want in zip(got.values(), np_adagrad(p, g, ms, 0.1, 1e-6)):
        np.testing.assert_allclose(have, want, rtol=1e-12)
    ins = {"Param": p, "Grad": g, "LearningRate": np.array([0.1]), "Moment1": mom, "Moment2": ms,
           "Beta1Pow": np.array([0.9]), "Beta2Pow": np.array([0.999])}
    got = run_op("adamw", ins, {"coeff": 0.05},
                 outputs=("ParamOut", "Moment1Out", "Moment2Out", "Beta1PowOut", "Beta2PowOut"))
    for have, want in zip(got.values(), np_adamw(p, g, 0.1, mom, ms, 0.9, 0.999, 0.9, 0.999, 1e-8, 0.05)):
        np.testing.assert_allclose(have, want, rtol=1e-12)


def _train(opt, steps=4):
    """fc(4 -> 3) regression trained by `opt`; returns the NumPy twin's inputs and the final weights."""
    x = layers.data("x", [4], dtype="float64")
    y = layers.data("y", [3], dtype="float64")
    pred = layers.fc(x, 3, bias_attr=False)
    loss = layers.mean(layers.square_error_cost(pred, y))
    opt.minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    w0 = fl.fetch_var("fc_0.w_0").copy()
    xs, ys = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    for _ in range(steps):
        exe.run(feed={"x": xs, "y": ys}, fetch_list=[loss])
    return w0, xs, ys, fl.fetch_var("fc_0.w_0")


def _np_grad(w, xs, ys):
    return xs.T @ (2 * (xs @ w - ys) / ys.size)


@pytest.mark.parametrize("name", ["rmsprop", "adagrad", "adamw"])
def test_training_matches_numpy(name):
    make = {"rmsprop": lambda: fl.optimizer.RMSProp(0.01, rho=0.9, epsilon=1e-6, momentum=0.5),
            "adagrad": lambda: fl.optimizer.Adagrad(0.1, epsilon=1e-6),
            "adamw": lambda: fl.optimizer.AdamW(0.01, weight_decay=0.2)}[name]
    w, xs, ys, got = _train(make())
    a, b = np.zeros_like(w), np.zeros_like(w)
    pows = [0.9, 0.999]
    for _ in range(4):
        g = _np_grad(w, xs, ys)
        if name == "rmsprop":
            w, a, b = np_rmsprop(w, g, a, b, 0.01, 0.9, 1e-6, 0.5)
        elif name == "adagrad":
            w, a = np_adagrad(w, g, a, 0.1, 1e-6)
        else:
            w, a, b, *pows = np_adamw(w, g, 0.01, a, b, *pows, 0.9, 0.999, 1e-8, 0.2)
    np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)


def test_adamw_decay_is_decoupled_from_the_gradient_clip():
    """With a zero gradient, AdamW still shrinks the weight by lr * weight_decay; Adam leaves it."""
    x = layers.data("x", [2], dtype="float64")
    loss = layers.mean(layers.scale(layers.fc(x, 1, bias_attr=False), scale=0.0))
    fl.optimizer.AdamW(0.1, weight_decay=0.5).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    w0 = fl.fetch_var("fc_0.w_0").copy()
    exe.run(feed={"x": np.ones((3, 2))}, fetch_list=[loss])
    np.testing.assert_allclose(fl.fetch_var("fc_0.w_0"), w0 * (1 - 0.1 * 0.5), rtol=1e-12)


@pytest.mark.parametrize("make, match", [
    (lambda: fl.optimizer.RMSProp(0.1, rho=1.5), "rho"),
    (lambda: fl.optimizer.RMSProp(0.1, momentum=-1), "momentum"),
    (lambda: fl.optimizer.Adagrad(0.1, epsilon=float("nan")), "epsilon"),
    (lambda: fl.optimizer.AdamW(0.1, weight_decay=-0.1), "weight_decay"),
    (lambda: fl.optimizer.AdamW(0.1, beta1=1.0), "beta1"),
])
def test_bad_arguments_raise_when_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_update_op_rejects_a_state_of_another_shape():
    block = fl.default_main_program().global_block()
    p = block.create_var(name="p", shape=[4, 3], dtype="float32")
    m = block.create_var(name="m", shape=[3, 4], dtype="float32")
    lr = block.create_var(name="lr", shape=[1], dtype="float32")
    with pytest.raises(ValueError, match=r"adagrad.*Moment.*'m'.*\[3, 4\]"):
        block.append_op("adagrad", {"Param": p, "Grad": p, "Moment": m, "LearningRate": lr},
                        {"ParamOut": "o", "MomentOut": "mo"})
    assert "o" not in block.vars
