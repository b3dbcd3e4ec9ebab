"""save/load_inference_model, save/load_params and Paddle's argument order, against NumPy forward passes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _train_classifier():
    x = layers.data("x", [4])
    y = layers.data("y", [1], dtype="int64")
    h = layers.dropout(layers.fc(x, 8, act="tanh"), dropout_prob=0.5)
    logits = layers.fc(h, 3)
    prob = layers.softmax(logits)
    loss = layers.mean(layers.softmax_with_cross_entropy(logits, y))
    fl.optimizer.Adam(layers.exponential_decay(0.05, 1, 0.9)).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((16, 4)).astype(np.float32)
    for _ in range(3):
        exe.run(feed={"x": xs, "y": rng.integers(0, 3, (16, 1))}, fetch_list=[loss])
    return exe, prob, xs


def _np_prob(xs, scope_get):
    h = np.tanh(xs @ scope_get("fc_0.w_0") + scope_get("fc_0.b_0")) * 0.5  # downgrade_in_infer: scale by 1 - p
    z = h @ scope_get("fc_1.w_0") + scope_get("fc_1.b_0")
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_inference_model_is_pruned_switched_and_predicts_like_numpy(tmp_path):
    exe, prob, xs = _train_classifier()
    fl.io.save_inference_model(str(tmp_path / "m"), ["x"], [prob], exe)
    want = _np_prob(xs, fl.fetch_var)
    with fl.scope_guard(fl.Scope()):
        program, feeds, fetches = fl.io.load_inference_model(str(tmp_path / "m"), fl.Executor())
        assert feeds == ["x"] and [v.name for v in fetches] == [prob.name]
        types = [op.type for op in program.global_block().ops]
        assert "y" not in program.global_block().vars
        assert not any(t.endswith("_grad") or t in ("adam", "increment", "exponential_decay") for t in types)
        assert all(op.attrs["is_test"] for op in program.global_block().ops if op.type == "dropout")
        names = set(program.global_block().vars)
        assert not any("moment" in n or "LR_DECAY" in n for n in names)
        (got,) = fl.Executor().run(program, feed={"x": xs}, fetch_list=fetches)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_fresh_process_loads_the_model(tmp_path):
    exe, prob, xs = _train_classifier()
    fl.io.save_inference_model(str(tmp_path / "m"), ["x"], [prob], exe)
    np.save(tmp_path / "xs.npy", xs)
    script = (
        "import sys, numpy as np, fluidlite as fl\n"
        "p, feeds, fetches = fl.io.load_inference_model(sys.argv[1], fl.Executor())\n"
        "out, = fl.Executor().run(p, feed={feeds[0]: np.load(sys.argv[2])}, fetch_list=fetches)\n"
        "np.save(sys.argv[3], out)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "nc")))
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m"), str(tmp_path / "xs.npy"),
                    str(tmp_path / "out.npy")], check=True, env=env, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _np_prob(xs, fl.fetch_var), rtol=1e-5, atol=1e-6)


def test_save_inference_model_refuses_targets_it_cannot_compute(tmp_path):
    exe, prob, _ = _train_classifier()
    with pytest.raises(ValueError, match="'x'.*neither fed"):
        fl.io.save_inference_model(str(tmp_path / "m"), [], [prob], exe)
    with pytest.raises(ValueError, match="'nope' is not a variable"):
        fl.io.save_inference_model(str(tmp_path / "m"), ["nope"], [prob], exe)
    with pytest.raises(TypeError, match="'executor' must be an Executor"):
        fl.io.save_inference_model(str(tmp_path / "m"), ["x"], [prob], "exe")


def test_a_tampered_model_file_is_refused(tmp_path):
    exe, prob, _ = _train_classifier()
    fl.io.save_inference_model(str(tmp_path / "m"), ["x"], [prob], exe)
    path = tmp_path / "m" / "__model__"
    doc = json.loads(path.read_text())
    doc["fetch"] = ["not_a_var"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="'fetch' must list variables"):
        fl.io.load_inference_model(str(tmp_path / "m"), fl.Executor())
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a fluidlite inference model"):
        fl.io.load_inference_model(str(tmp_path / "m"), fl.Executor())


def test_save_params_holds_parameters_only(tmp_path):
    exe, prob, _ = _train_classifier()
    fl.io.save_params(exe, str(tmp_path / "p"))
    saved = {e["name"] for e in json.loads((tmp_path / "p" / "manifest.json").read_text())["variables"]}
    assert saved == {"fc_0.w_0", "fc_0.b_0", "fc_1.w_0", "fc_1.b_0"}
    w = fl.fetch_var("fc_1.w_0").copy()
    fl.global_scope().var("fc_1.w_0").get_tensor().set(np.zeros_like(w))
    moment = fl.fetch_var("fc_1.w_0_moment1_0").copy()
    assert fl.io.load_params(exe, str(tmp_path / "p")) is not None
    np.testing.assert_array_equal(fl.fetch_var("fc_1.w_0"), w)
    np.testing.assert_array_equal(fl.fetch_var("fc_1.w_0_moment1_0"), moment)


def test_persistables_accept_paddles_argument_order(tmp_path):
    exe, _, _ = _train_classifier()
    main = fl.default_main_program()
    fl.io.save_persistables(exe, str(tmp_path / "a"), main)
    fl.io.save_persistables(exe, dirname=str(tmp_path / "b"), main_program=main)
    before = fl.fetch_var("fc_0.w_0").copy()
    fl.global_scope().var("fc_0.w_0").get_tensor().set(np.zeros_like(before))
    fl.io.load_persistables(exe, str(tmp_path / "a"), main)
    np.testing.assert_array_equal(fl.fetch_var("fc_0.w_0"), before)
    with pytest.raises(TypeError, match=r"save_persistables: argument 'program' must be a Program, got str"):
        fl.io.save_persistables(str(tmp_path / "c"), "main")
