"""The demo's pictures and its "which layer exploded first" summary.

`plot_runs` draws loss and gradient norm per step, the unclipped run in its own panels (its norm
reaches 1e20 and more, which would flatten the clipped runs into one band) with a marker where it
turned NaN/Inf. `layer_summary` and `plot_layers` show each parameter's gradient norm in the
unclipped run: a parameter "explodes" at the first step its norm exceeds `EXPLODE_FACTOR` times its
median over the first `BASELINE_STEPS` steps (a step inside that window explodes only by turning NaN/Inf).
"""
from __future__ import annotations

import numpy as np

EXPLODE_FACTOR = 10.0
BASELINE_STEPS = 20
SMOOTH = 50  # at most this many steps in the running mean drawn over the clipped runs' noisy curves


def first_nonfinite(values) -> int | None:
    """The first index holding NaN or +-Inf, or None."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
    return int(bad[0]) if bad.size else None


def layer_events(norms) -> dict:
    """For one parameter's norms per step: baseline (median over the first `BASELINE_STEPS` steps, or
    the first half of a shorter run), explodes (the first later step above `EXPLODE_FACTOR` x baseline,
    or the first NaN/Inf, or None), peak (value, step), zero_from (first step after the peak with norm
    exactly 0, or None), nonfinite (step or None)."""
    v = np.asarray(norms, dtype=np.float64)
    window = max(1, min(BASELINE_STEPS, len(v) // 2))
    early = v[:window]
    early = early[np.isfinite(early)]
    baseline = float(np.median(early)) if early.size else float("nan")
    over = np.flatnonzero(~np.isfinite(v) | ((np.arange(len(v)) >= window) & (v > EXPLODE_FACTOR * baseline)))
    finite = np.where(np.isfinite(v), v, -np.inf)
    peak_step = int(np.argmax(finite)) if np.isfinite(finite).any() else None
    zeros = np.flatnonzero(v[peak_step:] == 0.0) if peak_step is not None else np.array([], dtype=int)
    return {"baseline": baseline, "explodes": int(over[0]) if over.size else None,
            "peak": (float(finite[peak_step]), peak_step) if peak_step is not None else (float("nan"), None),
            "zero_from": int(peak_step + zeros[0]) if zeros.size else None, "nonfinite": first_nonfinite(v)}


def layer_summary(layers: dict, loss) -> str:
    """The text "which layer exploded first" table for the unclipped run."""
    events = {name: layer_events(v) for name, v in layers.items()}

    def step(s):
        return "-" if s is None else str(s)

    head = f"  {'parameter':<22}{'explodes at':>12}{'peak norm (step)':>22}{'norm 0 from':>13}{'nan/inf from':>14}"
    n = min((len(v) for v in layers.values()), default=0)
    window = max(1, min(BASELINE_STEPS, n // 2))
    lines = [f"which layer exploded first (the unclipped run; a gradient 'explodes' when its norm first exceeds "
             f"{EXPLODE_FACTOR:g}x its median over steps 0-{window - 1}, or turns nan/inf):", head]
    for name, e in events.items():
        peak, at = e["peak"]
        lines.append(f"  {name:<22}{step(e['explodes']):>12}{f'{peak:.3g} ({step(at)})':>22}"
                     f"{step(e['zero_from']):>13}{step(e['nonfinite']):>14}")
    exploded = {n: e["explodes"] for n, e in events.items() if e["explodes"] is not None}
    if exploded:
        first = min(exploded.values())
        names = [n for n, s in exploded.items() if s == first]
        lines.append(f"first to explode: {', '.join(names)} (step {first})")
    else:
        lines.append("no gradient exploded")
    bad = first_nonfinite(loss)
    lines.append(f"the loss became nan/inf at step {bad}" if bad is not None else "the loss stayed finite")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _smooth(values):
    v = np.asarray(values, dtype=np.float64)
    window = min(SMOOTH, len(v) // 20)
    if window < 2:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def _mark_nonfinite(ax, step, text, y=0.5):
    ax.axvline(step, color="#d62728", ls="--", lw=1)
    ax.annotate(text, xy=(step, y), xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points",
                ha="left", va="center", color="#d62728", fontsize=8, rotation=90)


def plot_runs(runs, path) -> bool:
    """demo.png: loss and gradient norm per step, the unclipped run on its own axes; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    fig = runs_figure(runs)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def runs_figure(runs):
    """The matplotlib Figure of `plot_runs`: axes [[loss, norm] x [unclipped, clipped]], row-major."""
    plt = _pyplot()
    wild = [r for r in runs if r["mode"] == "no clipping"]
    tame = [r for r in runs if r["mode"] != "no clipping"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex="col", squeeze=False)
    colors = {"no clipping": "#d62728", "global-norm clip": "#1f77b4", "error clip": "#2ca02c"}
    for col, group in enumerate((wild, tame)):
        for row, key in enumerate(("loss", "grad_norm")):
            ax = axes[row, col]
            for r in group:
                v = np.asarray(r[key], dtype=np.float64)
                c = colors.get(r["mode"])
                if col == 0:
                    ax.plot(np.arange(len(v)), v, color=c, lw=1, label=r["mode"])
                    bad = first_nonfinite(v)
                    if bad is not None:
                        _mark_nonfinite(ax, bad, f"NaN/Inf from step {bad}")
                else:
                    ax.plot(np.arange(len(v)), v, color=c, lw=0.5, alpha=0.25)
                    sm = _smooth(v)
                    ax.plot(np.arange(len(sm)) + (len(v) - len(sm)) // 2, sm, color=c, lw=1.5,
                            label=f"{r['mode']} ({len(v) - len(sm) + 1}-step mean)" if len(sm) < len(v) else r["mode"])
            ax.set_yscale("log")
            ax.legend(fontsize=8, loc="upper left" if col == 0 else "upper right")
            if row == 1:
                ax.set_xlabel("step")
    if wild and (bad := first_nonfinite(wild[0]["loss"])) is not None:
        axes[0, 0].set_xlim(0, max(bad * 1.5, 20))  # nothing happens after NaN
    axes[0, 0].set_ylabel("training loss (MSE)")
    axes[1, 0].set_ylabel("gradient norm\n(before any gradient clip)")
    axes[0, 0].set_title("without clipping (own axes)", fontsize=10)
    axes[0, 1].set_title("with clipping", fontsize=10)
    fig.suptitle("vanilla RNN on the adding problem")
    fig.tight_layout()
    return fig


def plot_layers(run, path) -> bool:
    """layers.png: each parameter's gradient norm in the unclipped run, as lines and as a heat map."""
    plt = _pyplot()
    if plt is None or not run.get("layers"):
        return False
    names = list(run["layers"])
    data = np.array([run["layers"][n] for n in names], dtype=np.float64)
    bad = first_nonfinite(run["loss"])
    last = data.shape[1] if bad is None else min(data.shape[1], max(int(bad * 1.3) + 5, 20))
    data = data[:, :last]
    fig, (top, heat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    first = {}  # explode step -> names
    for name, row in zip(names, data):
        e = layer_events(row)
        line, = top.plot(np.where(row > 0, row, np.nan), lw=1.2, label=name)
        if e["explodes"] is not None and np.isfinite(row[e["explodes"]]) and row[e["explodes"]] > 0:
            top.plot(e["explodes"], row[e["explodes"]], "o", color=line.get_color(), ms=6)
            first.setdefault(e["explodes"], []).append(name)
    if first:
        step = min(first)
        top.annotate(f"first to explode (step {step}):\n" + "\n".join(first[step]), xy=(step, 0.3),
                     xycoords=("data", "axes fraction"), xytext=(-8, 0), textcoords="offset points", ha="right",
                     va="bottom", fontsize=8, arrowprops=dict(arrowstyle="->", lw=0.8))
    top.set_yscale("log")
    top.set_ylabel("gradient norm")
    top.legend(fontsize=8, loc="upper left", title=f"dot: first step above {EXPLODE_FACTOR:g}x its early median",
               title_fontsize=8)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(data)
    masked = np.ma.masked_invalid(np.where(data == 0, np.nan, logs))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = heat.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest",
                        extent=(-0.5, last - 0.5, len(names) - 0.5, -0.5))
    nonfinite = ~np.isfinite(data)
    ys, xs = np.nonzero(nonfinite)
    heat.scatter(xs, ys, marker="x", color="#d62728", s=12, lw=1, label="NaN/Inf")
    ys, xs = np.nonzero(data == 0)
    heat.scatter(xs, ys, marker="_", color="black", s=12, lw=1, label="exactly 0")
    heat.set_yticks(range(len(names)), names, fontsize=8)
    heat.set_xlabel("step")
    heat.legend(fontsize=8, loc="upper left")
    if bad is not None:
        _mark_nonfinite(top, bad, f"loss NaN/Inf from step {bad}")
        heat.axvline(bad, color="#d62728", ls="--", lw=1)
    fig.suptitle("which layer exploded first: gradient norm per parameter, no clipping")
    fig.tight_layout()
    fig.colorbar(image, ax=[top, heat], label="log10 gradient norm (heat map)", pad=0.01, shrink=0.4, anchor=(0, 0))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
