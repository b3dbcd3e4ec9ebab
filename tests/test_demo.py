"""`fluidlite demo` end to end on a tiny configuration, its determinism and its pieces."""
import csv
import math

import numpy as np

from fluidlite import demo

TINY = ["--steps", "6", "--seq-len", "5", "--hidden", "8", "--batch", "4", "--quiet"]


def _history(path, name="history.csv"):
    with open(path / name) as f:
        return list(csv.reader(f))


def test_demo_runs_end_to_end_and_is_deterministic(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert demo.main(TINY + ["--out", str(a)]) == 0
    out = capsys.readouterr().out
    for mode in demo.MODES:
        assert mode in out
    assert "clipped steps" in out
    assert (a / "program.dot").read_text().lstrip().startswith("digraph")
    for png in ("demo.png", "layers.png"):  # matplotlib is a core dependency: the PNGs are always drawn
        assert (a / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "which layer exploded first" in out and "first to explode" in out or "no gradient exploded" in out
    layer_rows = _history(a, "layers.csv")
    assert layer_rows[0] == ["step", "rnn w_in", "rnn w_rec", "rnn fc_0.b_0", "readout fc_1.w_0", "readout fc_1.b_0"]
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


def test_a_run_that_turns_nan_stops_early_with_the_same_history(tmp_path, monkeypatch):
    """Once the gradient norm is NaN every later step is NaN: the run stops and pads, changing nothing."""
    args = demo.parse_args(TINY + ["--steps", "12", "--lr", "50", "--out", str(tmp_path)])
    rng = np.random.default_rng(0)
    batches = [demo.adding_problem(5, 4, rng) for _ in range(12)]
    held = demo.adding_problem(5, 16, rng)
    calls = []
    real_run = demo.fl.Executor.run

    def counting_run(self, program, *a, **kw):
        calls.append(program)
        return real_run(self, program, *a, **kw)

    monkeypatch.setattr(demo.fl.Executor, "run", counting_run)
    run = demo.train("no clipping", args, batches, held, progress=False)
    first = next(i for i, v in enumerate(run["grad_norm"]) if math.isnan(v))
    assert first < 11, "lr 50 should blow up within a few steps"
    assert len(run["loss"]) == len(run["grad_norm"]) == 12
    assert all(math.isnan(v) for v in run["loss"][first + 1:] + run["grad_norm"][first:])
    assert all(math.isnan(v) for hist in run["layers"].values() for v in hist[first + 1:])
    assert len(calls) == 1 + (first + 1) + 1  # startup, the steps up to the NaN, the held-out pass
    monkeypatch.setattr(demo.fl.Executor, "run", real_run)
    import fluidlite as fl  # the reference: every step run; the values after the NaN are NaN as well
    main, startup, _, fetches, _ = demo.build("no clipping", 5, 8, 50.0, 0, 1.5, 1.0, 0.05)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    ref = [float(exe.run(main, feed={"x": x, "y": y}, fetch_list=fetches[:2], scope=scope)[1][0]) for x, y in batches]
    assert all(math.isnan(v) for v in ref[first:]) and ref[:first] == run["grad_norm"][:first]
