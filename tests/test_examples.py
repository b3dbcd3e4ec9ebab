"""The examples in examples/ train to a useful accuracy on a small, fast setting."""
import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sentiment_lstm_learns_with_error_clipping():
    ex = _load("sentiment_lstm")
    ids, labels = ex.make_reviews(200, 12, seed=0)
    assert ids.shape == (12, 200, 1) and labels.shape == (200, 1)
    polar = (ids[..., 0] < ex.POLAR).sum(0) - ((ids[..., 0] >= ex.POLAR) & (ids[..., 0] < 2 * ex.POLAR)).sum(0)
    assert (polar != 0).all() and np.array_equal(labels[:, 0], polar > 0)  # no ties; label = the majority
    main, *_ = ex.build(12, 16, 1.0)
    types = [op.type for op in main.global_block().ops]
    assert types.count("clip") >= 12  # one error clip per unrolled step
    result = ex.train(steps=120, seq_len=12, hidden=16, batch=32, verbose=False)
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["accuracy"] > 0.85
