"""The examples in examples/ train to a useful accuracy on a small, fast setting."""
import importlib.util
import subprocess
import sys
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sentiment_lstm_learns_with_error_clipping_and_exports(tmp_path):
    ex = _load("sentiment_lstm")
    ids, lengths, labels = ex.make_reviews(200, 12, seed=0)
    assert ids.shape == (12, 200, 1) and lengths.shape == (200,) and labels.shape == (200, 1)
    assert lengths.min() >= ex.MIN_LEN and lengths.max() <= 12 and len(set(lengths.tolist())) > 3
    valid = np.arange(12)[:, None] < lengths[None, :]
    assert np.all(ids[..., 0][~valid] == ex.PAD)
    polar = ((ids[..., 0] < ex.POLAR) & valid).sum(0) - ((ids[..., 0] >= ex.POLAR) & (ids[..., 0] < 2 * ex.POLAR)
                                                         & valid).sum(0)
    assert (polar != 0).all() and np.array_equal(labels[:, 0], polar > 0)  # no ties; label = the valid majority
    main, *_ = ex.build(12, 16, 1.0)
    assert sum(op.role == "error_clip" for op in main.global_block().ops) >= 12  # every step's dL/dh is clipped
    result = ex.train(steps=120, seq_len=12, hidden=16, batch=32, verbose=False, export=str(tmp_path / "model"))
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["accuracy"] > 0.85
    test_ids, test_lengths, _ = ex.make_reviews(1024, 12, seed=1)
    np.save(tmp_path / "ids.npy", test_ids)
    np.save(tmp_path / "lengths.npy", test_lengths)
    script = ("import sys, numpy as np, fluidlite as fl\n"
              "p, feeds, fetches = fl.io.load_inference_model(sys.argv[1], fl.Executor())\n"
              "feed = {'ids': np.load(sys.argv[2]), 'lengths': np.load(sys.argv[3])}\n"
              "out, = fl.Executor().run(p, feed={n: feed[n] for n in feeds}, fetch_list=fetches)\n"
              "np.save(sys.argv[4], out)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "ids.npy"),
                    str(tmp_path / "lengths.npy"), str(tmp_path / "out.npy")], check=True, timeout=600)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), result["test_prob"], rtol=1e-6, atol=1e-7)


def test_recognize_digits_cnn_learns_with_gradient_clipping():
    ex = _load("recognize_digits")
    main, test, *_ = ex.build(clip=1.0)
    types = [op.type for op in main.global_block().ops]
    assert types.count("conv2d") == 2 and types.count("batch_norm") == 2 and types.count("pool2d") == 2
    assert any(op.role == "grad_clip" for op in main.global_block().ops)
    assert all(op.attrs["is_test"] for op in test.global_block().ops if op.type == "batch_norm")
    result = ex.train(epochs=2, batch=64, verbose=False)
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["accuracy"] > 0.9
