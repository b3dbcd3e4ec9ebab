"""Training steps with each clip through minimize(), against a NumPy (float64) re-implementation."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import clip as C
from fluidlite import layers

LR = 0.1


def np_clip(kind, grads, params):
    """The clip formulas, written again in NumPy; grads/params: name -> array."""
    if kind == "value":
        return {k: np.clip(g, -0.05, 0.05) for k, g in grads.items()}
    if kind == "norm":
        return {k: g * 0.1 / max(np.linalg.norm(g), 0.1) for k, g in grads.items()}
    if kind in ("global", "global_inf"):
        gs = list(grads.values())
        n = (max(np.abs(g).max() for g in gs) if kind == "global_inf"
             else np.sqrt(sum(np.sum(g ** 2) for g in gs)))
        return {k: g * 0.1 / max(n, 0.1) for k, g in grads.items()}
    if kind == "agc":
        out = {}
        for k, g in grads.items():
            p = params[k]
            p2, g2 = (p.reshape(1, -1), g.reshape(1, -1)) if g.ndim < 2 else (p, g)
            pn = np.maximum(np.sqrt((p2 ** 2).sum(0)), 1e-3) * 0.05
            gn = np.sqrt((g2 ** 2).sum(0))
            out[k] = (g2 * np.where(gn > pn, pn / np.maximum(gn, 1e-300), 1.0)).reshape(g.shape)
        return out
    return grads


CLIPS = {
    "value": lambda: C.GradientClipByValue(0.05), "norm": lambda: C.GradientClipByNorm(0.1),
    "global": lambda: C.GradientClipByGlobalNorm(0.1),
    "global_inf": lambda: C.GradientClipByGlobalNorm(0.1, norm_type=float("inf")),
    "agc": lambda: C.GradientClipAdaptive(clipping=0.05), "none": lambda: None,
}


def net(error_clip=None, optimizer=None, grad_clip=None):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype="float64")
        y = layers.data(name="y", shape=[1], dtype="float64")
        h = layers.fc(x, size=4, act="tanh")
        if error_clip is not None:
            h.error_clip = C.ErrorClipByValue(error_clip)
        pred = layers.fc(h, size=1)
        loss = layers.mean(layers.square_error_cost(pred, y))
        opt = optimizer or fl.optimizer.SGD(learning_rate=LR)
        _, pg = opt.minimize(loss, grad_clip=grad_clip, callback=C.error_clip_callback)
    return main, startup, loss, pg


def np_grads(P, x, y, error_clip):
    z = x @ P["fc_0.w_0"] + P["fc_0.b_0"]
    h = np.tanh(z)
    pred = h @ P["fc_1.w_0"] + P["fc_1.b_0"]
    dp = 2 * (pred - y) / pred.size
    dh = dp @ P["fc_1.w_0"].T
    if error_clip is not None:
        dh = np.clip(dh, -error_clip, error_clip)
    dz = dh * (1 - h ** 2)
    return {"fc_0.w_0": x.T @ dz, "fc_0.b_0": dz.sum(0), "fc_1.w_0": h.T @ dp, "fc_1.b_0": dp.sum(0)}


@pytest.mark.parametrize("kind,error_clip", [(k, None) for k in CLIPS] + [("global", 0.01), ("none", 0.01)])
def test_sgd_steps_match_numpy(kind, error_clip):
    main, startup, loss, pg = net(error_clip, grad_clip=CLIPS[kind]())
    exe = fl.Executor()
    exe.run(startup)
    P = {p.name: fl.fetch_var(p.name).copy() for p in main.all_parameters()}
    rng = np.random.default_rng(5)
    for step in range(3):
        x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 1)) * 4
        exe.run(main, feed={"x": x, "y": y})
        g = np_clip(kind, np_grads(P, x, y, error_clip), P)
        P = {k: P[k] - LR * g[k] for k in P}
        for k in P:
            np.testing.assert_allclose(fl.fetch_var(k), P[k], rtol=1e-10, atol=1e-13, err_msg=f"{k} step {step}")


def test_spec_example_with_global_norm_and_error_clip_trains():
    main, startup, loss, pg = net(0.5, grad_clip=C.GradientClipByGlobalNorm(clip_norm=1.0))
    exe = fl.Executor()
    exe.run(startup)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]])
    norm = C.global_norm_var(program=main)
    losses = [exe.run(main, feed={"x": x, "y": y}, fetch_list=[loss, norm])[0][0] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    fl.verify(main)


def nan_batch(rng):
    x = rng.standard_normal((6, 3))
    x[0, 0] = np.nan
    return x, rng.standard_normal((6, 1))


def test_default_policy_nan_gradient_poisons_the_parameters():
    main, startup, _, _ = net(grad_clip=C.GradientClipByGlobalNorm(1.0))
    exe = fl.Executor()
    exe.run(startup)
    x, y = nan_batch(np.random.default_rng(0))
    exe.run(main, feed={"x": x, "y": y})
    assert np.isnan(fl.fetch_var("fc_0.w_0")).all()  # as TensorFlow: NaN, never a silently finite step


def test_skip_policy_with_sgd_skips_the_bad_step_and_counts_it():
    clip = C.GradientClipByGlobalNorm(1.0, skip_nonfinite=True)
    main, startup, _, pg = net(grad_clip=clip)
    exe = fl.Executor()
    exe.run(startup)
    rng = np.random.default_rng(0)
    before = {p.name: fl.fetch_var(p.name).copy() for p in main.all_parameters()}
    x, y = nan_batch(rng)
    exe.run(main, feed={"x": x, "y": y})
    for k, v in before.items():
        np.testing.assert_array_equal(fl.fetch_var(k), v)
    assert fl.fetch_var(C.skipped_steps_var(main).name).tolist() == [1]
    exe.run(main, feed={"x": rng.standard_normal((6, 3)), "y": rng.standard_normal((6, 1))})
    assert not np.array_equal(fl.fetch_var("fc_0.w_0"), before["fc_0.w_0"])
    assert fl.fetch_var(C.skipped_steps_var(main).name).tolist() == [1]
    assert C.update_gate(pg) is not None


def test_skip_policy_gates_momentum_state():
    if "SkipUpdate" not in fl.registry.OPS["momentum"].inputs:
        pytest.skip("the optimizer does not wire clip.update_gate yet (update ops need a SkipUpdate input)")
    main, startup, _, _ = net(optimizer=fl.optimizer.Momentum(0.1, 0.9),
                              grad_clip=C.GradientClipByGlobalNorm(1.0, skip_nonfinite=True))
    exe = fl.Executor()
    exe.run(startup)
    rng = np.random.default_rng(0)
    exe.run(main, feed={"x": rng.standard_normal((6, 3)), "y": rng.standard_normal((6, 1))})
    before = {v.name: fl.fetch_var(v.name).copy() for v in main.list_vars() if v.persistable and v.dtype.kind == "f"}
    x, y = nan_batch(rng)
    exe.run(main, feed={"x": x, "y": y})
    for k, v in before.items():
        np.testing.assert_array_equal(fl.fetch_var(k), v, err_msg=k)
