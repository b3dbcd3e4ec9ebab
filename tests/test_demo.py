"""`fluidlite demo` end to end on a tiny configuration, its determinism and its pieces."""
import csv
import math

import numpy as np

from fluidlite import demo

TINY = ["--steps", "6", "--seq-len", "5", "--hidden", "8", "--batch", "4", "--quiet"]


def _history(path):
    with open(path / "history.csv") as f:
        return list(csv.reader(f))


def test_demo_runs_end_to_end_and_is_deterministic(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert demo.main(TINY + ["--out", str(a)]) == 0
    out = capsys.readouterr().out
    for mode in demo.MODES:
        assert mode in out
    assert "clipped steps" in out
    assert (a / "program.dot").read_text().lstrip().startswith("digraph")
    assert (a / "demo.png").exists() or "pip install" in out
    rows = _history(a)
    assert len(rows) == 1 + 6 and len(rows[0]) == 1 + 2 * len(demo.MODES)
    assert demo.main(TINY + ["--out", str(b)]) == 0
    assert _history(b) == rows  # same seed, same numbers


def test_the_three_runs_differ_only_by_clipping(tmp_path):
    """Unclipped and clipped runs start identically; the first step with a clip changes the loss path."""
    args = demo.parse_args(TINY + ["--steps", "3", "--clip-norm", "1e-3", "--out", str(tmp_path)])
    rng = np.random.default_rng(0)
    batches = [demo.adding_problem(5, 4, rng) for _ in range(3)]
    held = demo.adding_problem(5, 16, rng)
    runs = {m: demo.train(m, args, batches, held, progress=False) for m in demo.MODES}
    first = {m: r["loss"][0] for m, r in runs.items()}
    assert len(set(first.values())) == 1  # same initialisation, same first batch
    assert runs["global-norm clip"]["clipped"] == [True] * 3  # a tiny clip_norm always clips
    assert runs["global-norm clip"]["loss"][1] != runs["no clipping"]["loss"][1]
    assert all(math.isfinite(r["mse"]) for r in runs.values())


def test_sparkline_and_table():
    line = demo.sparkline([1, 10, 100, float("inf")], width=4)
    assert len(line) == 4 and line[-1] == "!" and line[0] < line[2]
    run = {"mode": "no clipping", "loss": [1.0, 0.5], "grad_norm": [2.0, 3.0], "clipped": [False, True],
           "mse": 0.25, "seconds": 1.0}
    text = demo.table([run])
    assert "no clipping" in text and "1 / 2" in text and "3" in text


def test_bad_arguments_exit(capsys):
    import pytest
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
