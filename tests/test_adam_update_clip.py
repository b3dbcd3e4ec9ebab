"""Adam / AdamW with update_clip=True (StableAdamW's per-tensor update clipping) against NumPy."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers

B1, B2, EPS, LR, WD = 0.9, 0.95, 1e-8, 0.05, 0.1


def build(opt, dtype):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 1
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype=dtype)
        y = layers.data(name="y", shape=[1], dtype=dtype)
        h = layers.fc(x, 4, act="tanh")
        loss = layers.mean(layers.square_error_cost(layers.fc(h, 1), y))
        opt.minimize(loss)
    return main, startup


def numpy_grads(P, x, y):
    h = np.tanh(x @ P["fc_0.w_0"] + P["fc_0.b_0"])
    dp = 2 * (h @ P["fc_1.w_0"] + P["fc_1.b_0"] - y) / len(y)
    dz = dp @ P["fc_1.w_0"].T * (1 - h ** 2)
    return {"fc_0.w_0": x.T @ dz, "fc_0.b_0": dz.sum(0), "fc_1.w_0": h.T @ dp, "fc_1.b_0": dp.sum(0)}


def stable_adam_step(P, G, M, V, t, clip, wd):
    """One step of (Stable)Adam(W) written from the papers, float64; returns the per-tensor RMS."""
    rms_of = {}
    for k in P:
        g = G[k]
        M[k] = B1 * M[k] + (1 - B1) * g
        V[k] = B2 * V[k] + (1 - B2) * g * g
        v_hat = V[k] / (1 - B2 ** t)
        rms = np.sqrt(np.mean(g * g / np.maximum(v_hat, EPS ** 2)))
        rms_of[k] = rms
        lr = LR / max(1.0, rms) if clip else LR
        P[k] = P[k] - lr * wd * P[k]
        P[k] = P[k] - lr * np.sqrt(1 - B2 ** t) / (1 - B1 ** t) * M[k] / (np.sqrt(V[k]) + EPS)
    return rms_of


@pytest.mark.parametrize("kind,dtype", [("adam", "float64"), ("adamw", "float64"), ("adam", "float32")])
def test_update_clipping_matches_numpy(kind, dtype):
    opt = (fl.optimizer.Adam(LR, B1, B2, EPS, update_clip=True) if kind == "adam"
           else fl.optimizer.AdamW(LR, B1, B2, EPS, weight_decay=WD, update_clip=True))
    main, startup = build(opt, dtype)
    assert [op.type for op in main.global_block().ops].count("update_clip_rate") == 4
    exe = fl.Executor()
    exe.run(startup)
    P = {p.name: fl.fetch_var(p.name).astype(np.float64) for p in main.all_parameters()}
    M = {k: np.zeros_like(v) for k, v in P.items()}
    V = {k: np.zeros_like(v) for k, v in P.items()}
    rng = np.random.default_rng(3)
    clipped_steps = 0
    for t in range(1, 9):
        x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
        if t in (4, 7):
            y = y * 40.0  # a gradient far above what the second moment has seen
        exe.run(main, feed={"x": x.astype(dtype), "y": y.astype(dtype)})
        rms = stable_adam_step(P, numpy_grads(P, x, y), M, V, t, True, WD if kind == "adamw" else 0.0)
        clipped_steps += any(r > 1 for r in rms.values())
        assert t > 1 or all(r <= 1 + 1e-12 for r in rms.values())  # step 1: v_hat = g^2, never clipped
        for k in P:
            np.testing.assert_allclose(fl.fetch_var(k), P[k], rtol=1e-10 if dtype == "float64" else 2e-4,
                                       atol=1e-12 if dtype == "float64" else 1e-5, err_msg=f"{k} step {t}")
    assert clipped_steps >= 2  # the clipping was active, so a wrong factor would show


def test_update_clip_is_off_by_default_and_changes_the_steps_when_on():
    finals = []
    for clip in (False, True):
        with fl.unique_name.guard(), fl.scope_guard(fl.Scope()):
            main, startup = build(fl.optimizer.Adam(LR, B1, B2, EPS, update_clip=clip), "float64")
            exe = fl.Executor()
            exe.run(startup)
            rng = np.random.default_rng(3)
            for t in range(6):
                x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1)) * (40.0 if t == 3 else 1.0)
                exe.run(main, feed={"x": x, "y": y})
            finals.append(fl.fetch_var("fc_0.w_0").copy())
            assert ("update_clip_rate" in str(main)) == clip
    assert not np.allclose(finals[0], finals[1])


@pytest.mark.parametrize("size", [1000, 600_000])  # serial and parallel kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_update_clip_rate_op_matches_numpy(size, dtype, monkeypatch):
    from fluidlite.ops import common
    from op_test import run_op

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 19)

    rng = np.random.default_rng(size)
    g = rng.standard_normal(size).astype(dtype)
    v = (rng.uniform(0, 0.1, size) * (rng.uniform(size=size) > 0.1)).astype(dtype)  # zeros among them
    g[:5] = 0.0
    v[:5] = 0.0  # 0 / 0 counts as 0
    b2p, lr = np.array([0.95 ** 3], dtype), np.array([0.01], dtype)
    got = run_op("update_clip_rate", {"Grad": g, "Moment2": v, "Beta2Pow": b2p, "LearningRate": lr},
                 {"beta2": 0.95, "epsilon": 1e-8}, outputs=("Out", "Rms"))
    g64, v64 = g.astype(np.float64), v.astype(np.float64)
    v_hat = (0.95 * v64 + 0.05 * g64 ** 2) / (1 - float(b2p[0]))
    d = np.maximum(v_hat, 1e-16)
    rms = np.sqrt(np.mean(np.where(d > 0, g64 ** 2 / d, 0.0)))
    assert rms > 1  # the rate is divided: a wrong RMS would show
    np.testing.assert_allclose(got["Rms"], [rms], rtol=1e-6 if dtype == "float32" else 1e-10)
    np.testing.assert_allclose(got["Out"], [0.01 / rms], rtol=1e-6 if dtype == "float32" else 1e-10)


def test_parallel_update_rms_has_the_same_bits_at_any_thread_count():
    """fluidlite sets Numba's thread count from the machine's load: a reduction whose order followed the
    thread count would make a run's bits follow the load."""
    import numba

    from fluidlite.kernels.optim import update_rms_parallel

    rng = np.random.default_rng(7)
    g, v = rng.standard_normal(600_001), rng.uniform(0, 0.1, 600_001)
    old = numba.get_num_threads()
    try:
        got = []
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            got.append(update_rms_parallel(g, v, 0.95, 1 - 0.95 ** 3, 1e-16))
    finally:
        numba.set_num_threads(old)
    v_hat = (0.95 * v + 0.05 * g * g) / (1 - 0.95 ** 3)
    np.testing.assert_allclose(got[0], np.sqrt(np.mean(g * g / v_hat)), rtol=1e-12)
    assert len(set(got)) == 1
