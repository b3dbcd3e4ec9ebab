"""`fluidlite demo`: exploding gradients in a vanilla RNN on the adding problem, and two cures.

The same tanh RNN (recurrent weight drawn with a spectral radius well above 1, as in Pascanu,
Mikolov & Bengio 2013) is trained three times from the same initialisation on the same batches:
without clipping, with global-norm gradient clipping, and with error clipping of d(loss)/dh_t at
every step (Graves 2013). The unclipped run's gradient norm explodes and its loss spikes; both
clipped runs train. Prints a table and which layer's gradient exploded first, and writes plots
(`demo.png`: loss and gradient norm of each run; `layers.png`: the unclipped run's gradient norm per
parameter), the histories as CSV and the program's graph (.dot, and .png when Graphviz is installed).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers
from fluidlite.demo_plots import layer_summary, plot_layers, plot_runs
from fluidlite.synthetic import adding_problem

MODES = ("no clipping", "global-norm clip", "error clip")
_SPARK = " ▁▂▃▄▅▆▇█"


def build(mode, seq_len, hidden, lr, seed, radius, clip_norm, error_clip, input_scale=1.0):
    """(main, startup, test program, fetches, layer norms); fetches = [loss, grad norm, error-clipped
    gradients...]; layer norms: parameter label ("rnn w_rec", "readout fc_1.w_0") -> its gradient's norm."""
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = seed
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [seq_len, -1, 2], append_batch_size=False)
        y = layers.data("y", [1])
        w_h = fl.ParamAttr(name="w_rec", initializer=fl.initializer.Normal(0.0, radius / math.sqrt(hidden), seed + 1))
        w_x = fl.ParamAttr(name="w_in", initializer=fl.initializer.Normal(0.0, input_scale, seed + 2))
        rnn = layers.StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(x)
            h_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
            h = layers.fc([x_t, h_prev], size=hidden, act="tanh", param_attr=[w_x, w_h])
            if mode == "error clip":
                h.error_clip = fl.clip.ErrorClipByValue(error_clip)
            rnn.update_memory(h_prev, h)
        rnn_params = {p.name for p in main.all_parameters()}
        last = rnn.step_var(h)
        pred = layers.fc(last, size=1, param_attr=fl.ParamAttr(initializer=fl.initializer.Normal(0.0, 0.1, seed + 3)))
        if mode == "error clip":  # the readout's error too, so a bad prediction cannot blow up the readout
            pred.error_clip = fl.clip.ErrorClipByValue(error_clip)
        loss = layers.mean(layers.square_error_cost(pred, y))
        test = main.clone(for_test=True)
        opt = fl.optimizer.SGD(learning_rate=lr)
        if mode == "global-norm clip":
            _, params_grads = opt.minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(clip_norm))
            norm = fl.clip.global_norm_var(program=main)
        else:
            callback = fl.clip.error_clip_callback if mode == "error clip" else None
            _, params_grads = opt.minimize(loss, callback=callback)
            block = main.global_block()
            block.append_op("global_norm", {"X": [g for _, g in params_grads]}, {"Out": "demo@GRAD_NORM"})
            norm = block.var("demo@GRAD_NORM")
        watched = [rnn.step_var(h, t).name + "@GRAD" for t in range(seq_len)] + [pred.name + "@GRAD"] \
            if mode == "error clip" else []
        layer_norms = {}  # the unclipped run's, for "which layer exploded first"
        if mode == "no clipping":
            layer_norms = {f"{'rnn' if name in rnn_params else 'readout'} {name}": v
                           for name, v in fl.clip.gradient_norms(params_grads).items()}
    return main, startup, test, [loss, norm] + watched, layer_norms


def train(mode, args, batches, held_out, progress=True):
    """Train one run; returns its history (loss, grad norm, clipped flag per step; for the unclipped run
    also each parameter's gradient norm), held-out MSE, wall time. A run stops at the first NaN
    gradient norm (the update puts NaN into the parameters, so every later step is NaN); the
    history is filled up with NaN."""
    main, startup, test, fetches, layer_norms = build(mode, args.seq_len, args.hidden, args.lr, args.seed,
                                                      args.radius, args.clip_norm, args.error_clip, args.input_scale)
    exe, scope = fl.Executor(), fl.Scope()
    t0 = time.perf_counter()
    exe.run(startup, scope=scope)
    losses, norms, clipped = [], [], []
    layers_hist = {name: [] for name in layer_norms}
    bar = _progress(len(batches), mode, progress)
    for xs, ys in batches:
        out = exe.run(main, feed={"x": xs, "y": ys}, fetch_list=fetches + list(layer_norms.values()), scope=scope)
        loss, norm = float(out[0][0]), float(out[1][0])
        losses.append(loss)
        norms.append(norm)
        for name, value in zip(layers_hist, out[len(fetches):]):
            layers_hist[name].append(float(value[0]))
        if mode == "global-norm clip":
            clipped.append(norm > args.clip_norm)
        elif mode == "error clip":  # a clipped gradient sits exactly on the bound
            clipped.append(any(np.max(np.abs(g)) >= args.error_clip * (1 - 1e-6) for g in out[2:len(fetches)]))
        else:
            clipped.append(False)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3g}", grad_norm=f"{norm:.3g}", refresh=False)
        if math.isnan(norm):  # a NaN gradient is now in the parameters: every later step is NaN too
            rest = len(batches) - len(losses)
            losses += [math.nan] * rest
            norms += [math.nan] * rest
            clipped += [False] * rest
            for hist in layers_hist.values():
                hist += [math.nan] * rest
            bar.update(rest)
            break
    bar.close()
    seconds = time.perf_counter() - t0
    mse = float(exe.run(test, feed={"x": held_out[0], "y": held_out[1]}, fetch_list=[fetches[0]], scope=scope)[0][0])
    return {"mode": mode, "loss": losses, "grad_norm": norms, "clipped": clipped, "mse": mse,
            "seconds": seconds, "program": main, "layers": layers_hist}


def _progress(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        tqdm = None
    if tqdm is None or not enabled:
        class _Quiet:
            def update(self, n):
                pass

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass
        return _Quiet()
    return tqdm(total=total, desc=f"{desc:>16}", unit="step", leave=True)


def _fmt(v):
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def summary(run) -> dict:
    """The numbers `table` prints for one run (the docs quote them: see benchmarks/demo_numbers.py)."""
    return {"final loss": float(np.mean(run["loss"][-10:])), "held-out MSE": run["mse"],
            "max grad norm": max(run["grad_norm"]), "clipped steps": sum(run["clipped"])}


def table(runs) -> str:
    head = f"{'run':<18}{'final loss':>12}{'held-out MSE':>14}{'max grad norm':>15}{'clipped steps':>15}{'wall s':>8}"
    lines = [head, "-" * len(head)]
    for r in runs:
        n = summary(r)
        lines.append(f"{r['mode']:<18}{_fmt(n['final loss']):>12}{_fmt(n['held-out MSE']):>14}"
                     f"{_fmt(n['max grad norm']):>15}{n['clipped steps']:>9} / {len(r['clipped']):<4}"
                     f"{r['seconds']:>8.1f}")
    return "\n".join(lines)


def sparkline(values, width=60) -> str:
    """A one-line text plot of log10(values), `width` characters wide."""
    v = np.asarray(values, dtype=np.float64)
    chunks = np.array_split(v, min(width, len(v)))
    pts = np.array([np.log10(np.nanmax(c) + 1e-12) if np.isfinite(c).all() else np.inf for c in chunks])
    finite = pts[np.isfinite(pts)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    span = hi - lo or 1.0
    return "".join("!" if not np.isfinite(p) else _SPARK[1 + int((p - lo) / span * (len(_SPARK) - 2))] for p in pts)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fluidlite demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=30, help="sequence length of the adding problem (default 30)")
    p.add_argument("--steps", type=int, default=4000, help="SGD steps per run (default 4000)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units (default 32)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    p.add_argument("--radius", type=float, default=1.5, help="spectral radius of the recurrent weight (default 1.5)")
    p.add_argument("--input-scale", type=float, default=1.0, help="std of the input weights (default 1)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="global-norm clip threshold (default 1)")
    p.add_argument("--error-clip", type=float, default=0.05,
                   help="error clip bound on dloss/dh_t and dloss/dprediction (default 0.05)")
    p.add_argument("--out", default="fluidlite_demo", help="output directory (default ./fluidlite_demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("seq_len", "steps", "hidden", "batch"):
        if getattr(args, name) < 1 or (name == "seq_len" and args.seq_len < 2):
            p.error(f"--{name.replace('_', '-')} must be a positive integer (seq-len at least 2)")
    return args


def run_all(args, progress=False) -> list:
    """The three runs (in MODES order) on the same batches drawn from `args.seed`."""
    rng = np.random.default_rng(args.seed)
    batches = [adding_problem(args.seq_len, args.batch, rng) for _ in range(args.steps)]
    held_x, held_y = adding_problem(args.seq_len, 512, rng)
    return [train(mode, args, batches, (held_x, held_y), progress=progress) for mode in MODES]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"adding problem: seq_len={args.seq_len}, batch={args.batch}, hidden={args.hidden}, "
          f"steps={args.steps}, lr={args.lr}, recurrent spectral radius ~{args.radius}, seed={args.seed}")
    runs = run_all(args, progress=not args.quiet)
    print()
    print(table(runs))
    print("(final loss: mean of the last 10 steps; predicting 1 everywhere scores about 0.167)")
    unclipped = runs[0]
    print()
    print(layer_summary(unclipped["layers"], unclipped["loss"]))
    png, layers_png = os.path.join(args.out, "demo.png"), os.path.join(args.out, "layers.png")
    if plot_runs(runs, png) and plot_layers(unclipped, layers_png):
        print(f"\nplots: {png} (loss and gradient norm per step), {layers_png} (gradient norm per parameter)")
    else:
        print("\nlog10 gradient norm per step (! = inf/nan):")
        for r in runs:
            print(f"  {r['mode']:<18}{sparkline(r['grad_norm'])}")
        print("log10 training loss per step:")
        for r in runs:
            print(f"  {r['mode']:<18}{sparkline(r['loss'])}")
        print("(matplotlib is missing, so no PNG plots: pip install matplotlib)")
    _write_csv(os.path.join(args.out, "history.csv"), args.steps,
               {f"{r['mode']} {k}": r[k] for r in runs for k in ("loss", "grad_norm")})
    _write_csv(os.path.join(args.out, "layers.csv"), args.steps, unclipped["layers"])
    print(f"histories: {os.path.join(args.out, 'history.csv')}, {os.path.join(args.out, 'layers.csv')}")
    print(f"program graph (error-clip run): {_draw_program(runs[2]['program'], args.out)}")
    return 0


def _write_csv(path, steps, columns: dict):
    with open(path, "w") as f:
        f.write("step," + ",".join(columns) + "\n")
        for i in range(steps):
            f.write(f"{i}," + ",".join(f"{v[i]:.9g}" for v in columns.values()) + "\n")


def _draw_program(program, out) -> str:
    """program.dot, and program.png when Graphviz is installed (the RNN's steps drawn once)."""
    dot = os.path.join(out, "program.dot")
    fl.graphviz.draw(program, dot)
    try:
        return fl.graphviz.draw(program, os.path.join(out, "program.png"), timeout=60)
    except fl.graphviz.GraphvizNotFound:
        return f"{dot} (install Graphviz for a PNG)"
    except RuntimeError as exc:  # a timeout or a Graphviz failure costs the picture, not the demo
        return f"{dot} (no PNG: {exc})"


if __name__ == "__main__":
    raise SystemExit(main())
