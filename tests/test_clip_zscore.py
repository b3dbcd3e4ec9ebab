"""ZClip (GradientClipZScore) against a NumPy re-implementation of SPEC §9, skip_spikes, checkpoints."""
import math

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import clip as C
from fluidlite import layers


def zclip_reference(norms, alpha, z_thresh, warmup):
    """SPEC §9 written again: the norm each step's gradients are scaled to (g itself when unchanged)."""
    mu = var = 0.0
    seen, out = [], []
    for g in norms:
        if not math.isfinite(g):
            out.append(math.nan)
            continue
        if len(seen) < warmup:
            seen.append(g)
            out.append(g)
            if len(seen) == warmup:
                mu = float(np.mean(seen))
                var = float(np.mean((np.array(seen) - mu) ** 2))
            continue
        sigma = math.sqrt(var)
        g_c = g
        if sigma > 0 and (g - mu) / sigma > z_thresh:
            z = (g - mu) / sigma
            g_c = mu + (z_thresh ** 2 / z) * sigma
        mu = alpha * mu + (1 - alpha) * g_c
        var = alpha * var + (1 - alpha) * (g_c - mu) ** 2
        out.append(g_c)
    return out


def norm_sequence(rng, n=30, spikes=(9, 15, 16, 24)):
    norms = list(rng.uniform(1.0, 1.6, n))
    for k in spikes:
        norms[k] *= 12.0  # injected spikes, two in a row among them
    norms[20] = math.nan  # a non-finite step: state untouched
    return norms


def clip_program(clip, dtype="float64", size=3):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        block = main.global_block()
        p = block.create_parameter([size], dtype, name="p")
        g = block.create_var(name="p@GRAD", shape=[size], dtype=dtype, is_data=True)
        result = C.build_gradient_clip([(p, g)], clip)
    return main, startup, result


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zclip_matches_the_numpy_algorithm_over_steps_with_spikes(dtype):
    rng = np.random.default_rng(4)
    clip = C.GradientClipZScore(alpha=0.9, z_thresh=2.0, warmup_steps=6, group_name="z")
    main, startup, result = clip_program(clip, dtype)
    (_, out), = result.params_grads
    norm_var = C.global_norm_var("z", main)
    spike_var = main.global_block().var("z@ZCLIP_SPIKE")
    exe = fl.Executor()
    exe.run(startup)
    norms = norm_sequence(rng)
    fetched, clipped, spikes = [], [], []
    for g in norms:
        direction = rng.standard_normal(3)
        grad = (direction / np.linalg.norm(direction) * g).astype(dtype)
        got, n, s = exe.run(main, feed={"p@GRAD": grad}, fetch_list=[out, norm_var, spike_var])
        fetched.append(float(n[0]))
        clipped.append((grad, got))
        spikes.append(bool(s[0]))
    want = zclip_reference(fetched, 0.9, 2.0, 6)  # from the norms the op saw (float32 rounding included)
    rtol = 1e-12 if dtype == "float64" else 2e-6
    for step, ((grad, got), n, w) in enumerate(zip(clipped, fetched, want)):
        if math.isnan(w):
            assert np.isnan(got).all(), step
        else:
            np.testing.assert_allclose(got, grad * (w / n), rtol=rtol, err_msg=f"step {step}")
    assert [k for k, s in enumerate(spikes) if s] == [9, 15, 16, 24]  # the test can see a miss
    assert fl.fetch_var("z@ZCLIP_STEP").tolist() == [29]  # finite norms seen


def test_zclip_skip_spikes_skips_the_update_and_counts_it():
    clip = C.GradientClipZScore(alpha=0.8, z_thresh=2.0, warmup_steps=4, skip_spikes=True)
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype="float64")
        y = layers.data(name="y", shape=[1], dtype="float64")
        loss = layers.mean(layers.square_error_cost(layers.fc(x, 1), y))
        _, pg = fl.optimizer.Momentum(0.05, 0.9).minimize(loss, grad_clip=clip)
    exe = fl.Executor()
    exe.run(startup)
    rng = np.random.default_rng(0)
    norm = C.global_norm_var(program=main)
    state = [v.name for v in main.list_vars() if v.persistable and v.name.startswith(("fc_", "fc"))]
    seen, skipped = [], 0
    for step in range(14):
        xs, ys = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
        if step in (7, 11):
            ys = ys * 200.0  # a spike
        before = {k: fl.fetch_var(k).copy() for k in state}
        n, = exe.run(main, feed={"x": xs, "y": ys}, fetch_list=[norm])
        seen.append(float(n[0]))
        unchanged = all(np.array_equal(fl.fetch_var(k), v) for k, v in before.items())
        want = zclip_reference(seen, 0.8, 2.0, 4)[-1] < seen[-1]  # the reference calls it a spike
        assert unchanged == want, step
        assert want or step not in (7, 11), step
        skipped += want
    assert fl.fetch_var(C.skipped_steps_var(main).name).tolist() == [skipped]


def test_zclip_skip_spikes_also_skips_a_nonfinite_norm_and_keeps_its_state():
    main, startup, result = clip_program(C.GradientClipZScore(warmup_steps=2, skip_spikes=True))
    exe = fl.Executor()
    exe.run(startup)
    state = ["default_group@ZCLIP_MU", "default_group@ZCLIP_VAR", "default_group@ZCLIP_STEP"]
    for g in ([1.0, 0, 0], [2.0, 0, 0], [1.5, 0, 0]):
        exe.run(main, feed={"p@GRAD": np.array(g)})
    before = [fl.fetch_var(n).copy() for n in state]
    (_, out), = result.params_grads
    got, found = exe.run(main, feed={"p@GRAD": np.array([np.nan, 1.0, 0.0])}, fetch_list=[out, result.skip])
    assert found.tolist() == [True] and not got.any()  # zeros, and the update is skipped
    assert all(np.array_equal(fl.fetch_var(n), b) for n, b in zip(state, before))
    assert fl.fetch_var(C.skipped_steps_var(main).name).tolist() == [1]


def build_training(seed=7):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = seed
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4], dtype="float32")
        y = layers.data(name="y", shape=[1], dtype="float32")
        h = layers.fc(x, 8, act="tanh")
        loss = layers.mean(layers.square_error_cost(layers.fc(h, 1), y))
        fl.optimizer.Adam(0.01).minimize(loss, grad_clip=C.GradientClipZScore(warmup_steps=3, z_thresh=1.5))
    return main, startup, loss


def batches(n):
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        xs = rng.standard_normal((16, 4)).astype("float32")
        out.append((xs, (xs[:, :1] * (30.0 if k % 5 == 4 else 1.0)).astype("float32")))
    return out


def test_checkpoint_resumes_zclip_bit_for_bit(tmp_path):
    data = batches(12)
    main, startup, loss = build_training()
    exe = fl.Executor()
    straight = fl.Scope()
    exe.run(startup, scope=straight)
    for xs, ys in data:
        exe.run(main, feed={"x": xs, "y": ys}, scope=straight)
    resumed = fl.Scope()
    exe.run(startup, scope=resumed)
    for xs, ys in data[:6]:
        exe.run(main, feed={"x": xs, "y": ys}, scope=resumed)
    fl.io.save_persistables(str(tmp_path / "ck"), main, resumed)
    main2, _, _ = build_training()  # a fresh process would rebuild the program, then load
    fresh = fl.Scope()
    fl.io.load_persistables(str(tmp_path / "ck"), main2, fresh)
    for xs, ys in data[6:]:
        exe.run(main2, feed={"x": xs, "y": ys}, scope=fresh)
    names = [v.name for v in main.list_vars() if v.persistable]
    assert any("ZCLIP_MU" in n for n in names) and any("ZCLIP_WARMUP" in n for n in names)
    for n in names:
        assert np.array_equal(np.array(fresh.find_var(n).get_tensor()), np.array(straight.find_var(n).get_tensor())), n
    assert float(np.array(straight.find_var("default_group@ZCLIP_VAR").get_tensor())[0]) > 0


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"alpha": -0.5}, {"alpha": float("nan")},
                                    {"z_thresh": 0.0}, {"z_thresh": -1.0}, {"z_thresh": float("inf")},
                                    {"warmup_steps": 0}, {"warmup_steps": -3}, {"warmup_steps": 2.5}])
def test_bad_zclip_arguments_raise_when_made(kwargs):
    with pytest.raises(ValueError):
        C.GradientClipZScore(**kwargs)


def test_the_zclip_example_runs_and_zclip_beats_no_clipping(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "zclip_spikes.py"
    spec = importlib.util.spec_from_file_location("example_zclip_spikes", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    pytest.importorskip("matplotlib")
    results = ex.main(["--steps", "50", "--spike-every", "5", "--out", str(tmp_path / "z.png")])
    assert (tmp_path / "z.png").stat().st_size > 10_000
    final = {run: np.mean(r["held_out"][-8:]) for run, r in results.items()}
    assert final["ZClip"] < 0.1 * final["no clipping"]
    assert final["ZClip skip_spikes"] < 0.1 * final["no clipping"]
