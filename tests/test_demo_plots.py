"""The demo's pictures and its "which layer exploded first" summary, on made-up histories."""
import math

import numpy as np

from fluidlite import demo_plots
from fluidlite.demo_plots import first_nonfinite, layer_events, layer_summary

NAN, INF = float("nan"), float("inf")


def test_first_nonfinite():
    assert first_nonfinite([1.0, 2.0]) is None
    assert first_nonfinite([1.0, INF, NAN]) == 1 and first_nonfinite([NAN]) == 0


def test_layer_events_by_hand():
    norms = [1.0] * 20 + [5.0, 11.0, 300.0, 0.0, 0.0, NAN]
    e = layer_events(norms)
    assert e["baseline"] == 1.0
    assert e["explodes"] == 21  # first value above 10 x the median of steps 0-19
    assert e["peak"] == (300.0, 22) and e["zero_from"] == 23 and e["nonfinite"] == 25
    calm = layer_events([2.0, 3.0] * 30)
    assert calm["explodes"] is None and calm["zero_from"] is None and calm["nonfinite"] is None
    assert layer_events([1.0] * 20 + [INF])["explodes"] == 20  # Inf counts as exploded
    assert layer_events([100.0] + [1.0] * 29)["explodes"] is None  # a large first step is no explosion
    assert layer_events([1.0, NAN] + [1.0] * 28)["explodes"] == 1
    assert layer_events([1.0] * 5 + [50.0] * 5)["explodes"] == 5  # short runs: the first half is the baseline


def test_layer_summary_names_the_first():
    layers = {"rnn w": [1.0] * 20 + [50.0, 1e9, NAN], "readout w": [1.0] * 20 + [2.0, 1e3, NAN]}
    text = layer_summary(layers, [0.1] * 21 + [INF, NAN])
    assert "first to explode: rnn w (step 20)" in text
    assert "the loss became nan/inf at step 21" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("readout w"))
    assert row.split()[2:4] == ["21", "1e+03"]
    assert "no gradient exploded" in layer_summary({"w": [1.0] * 30}, [0.5] * 30)


def _runs(steps=300, blowup=40):
    rng = np.random.default_rng(0)
    wild_norm = [1.0 + rng.random() for _ in range(blowup)] + [10.0 ** (k + 1) for k in range(39)]
    wild_norm = (wild_norm + [NAN] * steps)[:steps]
    tame = [{"mode": m, "loss": list(0.1 + 0.01 * rng.random(steps)), "grad_norm": list(1 + rng.random(steps)),
             "clipped": [False] * steps} for m in ("global-norm clip", "error clip")]
    wild = {"mode": "no clipping", "loss": wild_norm, "grad_norm": wild_norm, "clipped": [False] * steps}
    return [wild] + tame


def test_the_unclipped_spike_does_not_flatten_the_clipped_runs():
    import matplotlib.pyplot as plt

    runs = _runs()
    fig = demo_plots.runs_figure(runs)
    try:
        (loss_wild, loss_tame), (norm_wild, norm_tame) = np.array(fig.axes).reshape(2, 2)
        assert norm_wild.get_ylim()[1] > 1e30  # the spike is on its own axes ...
        assert norm_tame.get_ylim()[1] < 10  # ... and the clipped runs (norms 1-2) fill theirs
        assert loss_tame.get_ylim()[1] < 1
        bad = first_nonfinite(runs[0]["grad_norm"])
        for ax in (loss_wild, norm_wild):  # a vertical marker where the run turned NaN, with its step
            marks = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [bad, bad]]
            assert len(marks) == 1
            assert any(f"step {bad}" in t.get_text() for t in ax.texts)
        assert not any(list(ln.get_xdata()) == [bad, bad] for ln in norm_tame.get_lines())
    finally:
        plt.close(fig)


def test_plots_are_written(tmp_path):
    runs = _runs()
    runs[0]["layers"] = {"rnn w": runs[0]["grad_norm"], "readout w": [1.0] * 300}
    assert demo_plots.plot_runs(runs, tmp_path / "a.png")
    assert demo_plots.plot_layers(runs[0], tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not demo_plots.plot_layers({"layers": {}}, tmp_path / "c.png")
    assert math.isnan(layer_events([NAN] * 3)["baseline"])
