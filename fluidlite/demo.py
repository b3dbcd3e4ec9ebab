"""`fluidlite demo`: exploding gradients in a vanilla RNN on the adding problem, and two cures.

The same tanh RNN (recurrent weight drawn with a spectral radius well above 1, as in Pascanu,
Mikolov & Bengio 2013) is trained three times from the same initialisation on the same batches:
without clipping, with global-norm gradient clipping, and with error clipping of d(loss)/dh_t at
every step (Graves 2013). The unclipped run's gradient norm explodes and its loss spikes; both
clipped runs train. Writes a table, a plot (or a text sparkline) and the program's .dot file.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers
from fluidlite.synthetic import adding_problem

MODES = ("no clipping", "global-norm clip", "error clip")
_SPARK = " ▁▂▃▄▅▆▇█"


def build(mode, seq_len, hidden, lr, seed, radius, clip_norm, error_clip, input_scale=1.0):
    """(main, startup, test program, fetches); fetches = [loss, grad norm, error-clipped gradients...]."""
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
    return main, startup, test, [loss, norm] + watched


def train(mode, args, batches, held_out, progress=True):
    """Train one run; returns its history (loss, grad norm, clipped flag per step), held-out MSE, wall time."""
    main, startup, test, fetches = build(mode, args.seq_len, args.hidden, args.lr, args.seed, args.radius,
                                         args.clip_norm, args.error_clip, args.input_scale)
    exe, scope = fl.Executor(), fl.Scope()
    t0 = time.perf_counter()
    exe.run(startup, scope=scope)
    losses, norms, clipped = [], [], []
    bar = _progress(len(batches), mode, progress)
    for xs, ys in batches:
        out = exe.run(main, feed={"x": xs, "y": ys}, fetch_list=fetches, scope=scope)
        loss, norm = float(out[0][0]), float(out[1][0])
        losses.append(loss)
        norms.append(norm)
        if mode == "global-norm clip":
            clipped.append(norm > args.clip_norm)
        elif mode == "error clip":  # a clipped gradient sits exactly on the bound
            clipped.append(any(np.max(np.abs(g)) >= args.error_clip * (1 - 1e-6) for g in out[2:]))
        else:
            clipped.append(False)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3g}", grad_norm=f"{norm:.3g}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - t0
    mse = float(exe.run(test, feed={"x": held_out[0], "y": held_out[1]}, fetch_list=[fetches[0]], scope=scope)[0][0])
    return {"mode": mode, "loss": losses, "grad_norm": norms, "clipped": clipped, "mse": mse,
            "seconds": seconds, "program": main}


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


def table(runs) -> str:
    head = f"{'run':<18}{'final loss':>12}{'held-out MSE':>14}{'max grad norm':>15}{'clipped steps':>15}{'wall s':>8}"
    lines = [head, "-" * len(head)]
    for r in runs:
        final = float(np.mean(r["loss"][-10:]))
        lines.append(f"{r['mode']:<18}{_fmt(final):>12}{_fmt(r['mse']):>14}"
                     f"{_fmt(max(r['grad_norm'])):>15}{sum(r['clipped']):>9} / {len(r['clipped']):<4}"
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


def plot(runs, path) -> bool:
    """A PNG of loss and gradient norm per step; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for r in runs:
        axes[0].plot(r["loss"], label=r["mode"], lw=1)
        axes[1].plot(r["grad_norm"], label=r["mode"], lw=1)
    for ax, what in zip(axes, ("training loss (MSE)", "gradient norm (before gradient clipping)")):
        ax.set_yscale("log")
        ax.set_ylabel(what)
        ax.legend()
    axes[1].set_xlabel("step")
    fig.suptitle("vanilla RNN on the adding problem")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    batches = [adding_problem(args.seq_len, args.batch, rng) for _ in range(args.steps)]
    held_x, held_y = adding_problem(args.seq_len, 512, rng)
    print(f"adding problem: seq_len={args.seq_len}, batch={args.batch}, hidden={args.hidden}, "
          f"steps={args.steps}, lr={args.lr}, recurrent spectral radius ~{args.radius}, seed={args.seed}")
    runs = [train(mode, args, batches, (held_x, held_y), progress=not args.quiet) for mode in MODES]
    print()
    print(table(runs))
    print("(final loss: mean of the last 10 steps; predicting 1 everywhere scores about 0.167)")
    png = os.path.join(args.out, "demo.png")
    if plot(runs, png):
        print(f"\nplot: {png}")
    else:
        print("\nlog10 gradient norm per step (! = inf/nan):")
        for r in runs:
            print(f"  {r['mode']:<18}{sparkline(r['grad_norm'])}")
        print("log10 training loss per step:")
        for r in runs:
            print(f"  {r['mode']:<18}{sparkline(r['loss'])}")
        print("(install matplotlib for a PNG plot: pip install 'fluidlite[plot]')")
    with open(os.path.join(args.out, "history.csv"), "w") as f:
        f.write("step," + ",".join(f"{m} {k}" for m in MODES for k in ("loss", "grad_norm")) + "\n")
        for i in range(args.steps):
            f.write(f"{i}," + ",".join(f"{r[k][i]:.9g}" for r in runs for k in ("loss", "grad_norm")) + "\n")
    dot = os.path.join(args.out, "program.dot")
    fl.graphviz.draw(runs[2]["program"], dot)
    print(f"history: {os.path.join(args.out, 'history.csv')}\nprogram graph (error-clip run): {dot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
