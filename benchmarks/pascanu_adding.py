"""The adding problem as in Pascanu, Mikolov & Bengio (2013): how often plain SGD solves it with and
without gradient-norm clipping, over several seeds and two sequence lengths.

    python benchmarks/pascanu_adding.py [--steps N] [--seeds K] [--seq-lens 50 100] [--import-torch-first]

A run succeeds when its mean squared error on 1000 held-out sequences falls below 0.01
(predicting 1 everywhere scores about 0.167). Not part of the test suite; results and the time
they took are in docs/experiments.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)
import fluidlite as fl  # noqa: E402
from fluidlite.synthetic import adding_problem  # noqa: E402
from fluidlite.demo import build  # noqa: E402

SUCCESS_MSE = 0.01


def one_run(mode, seq_len, seed, args):
    main, startup, test, fetches, _ = build(mode, seq_len, args.hidden, args.lr, seed, args.radius, args.clip_norm,
                                         1.0, args.input_scale)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(1000 + seed)
    held_x, held_y = adding_problem(seq_len, 1000, np.random.default_rng(seed))
    best = float("inf")
    for step in range(1, args.steps + 1):
        xs, ys = adding_problem(seq_len, args.batch, rng)
        loss, = exe.run(main, feed={"x": xs, "y": ys}, fetch_list=fetches[:1], scope=scope)
        if not np.isfinite(loss[0]):
            return float("nan"), step
        if step % args.eval_every == 0 or step == args.steps:
            mse = float(exe.run(test, feed={"x": held_x, "y": held_y}, fetch_list=fetches[:1], scope=scope)[0][0])
            best = min(best, mse)
            if best < SUCCESS_MSE:
                return best, step
    return best, args.steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[50, 100])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--radius", type=float, default=1.2)
    p.add_argument("--input-scale", type=float, default=1.0)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--import-torch-first", action="store_true", help="import torch before fluidlite")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for seq_len in args.seq_lens:
        for mode in ("no clipping", "global-norm clip"):
            results = [one_run(mode, seq_len, seed, args) for seed in range(args.seeds)]
            wins = sum(mse < SUCCESS_MSE for mse, _ in results)
            rows.append((seq_len, mode, wins, results))
            print(f"T={seq_len:<4} {mode:<17} success {wins}/{args.seeds}  "
                  f"best held-out MSE per seed: {', '.join(f'{m:.3g}@{s}' for m, s in results)}", flush=True)
    print(f"\n| T | SGD | success (MSE < {SUCCESS_MSE}) | best held-out MSE per seed (@ step) |")
    print("|---|---|---|---|")
    for seq_len, mode, wins, results in rows:
        print(f"| {seq_len} | {mode} | {wins}/{args.seeds} | {', '.join(f'{m:.3g} @{s}' for m, s in results)} |")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
