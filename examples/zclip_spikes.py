"""ZClip against a fixed global-norm clip on a regression task with injected gradient spikes.

A tanh MLP learns a random teacher network with SGD + momentum. Every `--spike-every` steps after
step 40 one batch is corrupted (its labels multiplied by `--spike-scale`), which makes that step's
gradient norm jump, as a bad batch does in large-model training. Four runs from the same
initialisation on the same batches:

- no clipping;
- GradientClipByGlobalNorm with a clip_norm picked once, as a practitioner would, from the early
  norms (twice their median over the first 25 steps): training norms fall below it later, so a
  later spike of the same relative size is barely clipped;
- GradientClipZScore (ZClip, defaults): the threshold follows the norm's running mean and variance;
- GradientClipZScore(skip_spikes=True): spikes skip the update altogether.

Prints a table and writes a PNG (held-out loss and gradient norm per step):

    python examples/zclip_spikes.py --out docs/img/zclip_spikes.png
"""
from __future__ import annotations

import argparse

import numpy as np

import fluidlite as fl
from fluidlite import layers

RUNS = ("no clipping", "global-norm clip", "ZClip", "ZClip skip_spikes")


def make_data(args):
    rng = np.random.default_rng(args.seed)
    teacher = [rng.standard_normal((16, 32)) / 4, rng.standard_normal((32, 1)) / 4]

    def label(x):
        return np.tanh(x @ teacher[0]) @ teacher[1]

    batches, spikes = [], []
    for step in range(args.steps):
        x = rng.standard_normal((args.batch, 16))
        y = label(x) + 0.01 * rng.standard_normal((args.batch, 1))
        if step >= 40 and (step - 40) % args.spike_every == 0:
            y = y * args.spike_scale
            spikes.append(step)
        batches.append((x.astype("float32"), y.astype("float32")))
    x = rng.standard_normal((512, 16))
    return batches, spikes, (x.astype("float32"), label(x).astype("float32"))


def build(run, clip_norm, args):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = args.seed
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data(name="x", shape=[16], dtype="float32")
        y = layers.data(name="y", shape=[1], dtype="float32")
        h = layers.fc(layers.fc(x, 64, act="tanh"), 64, act="tanh")
        loss = layers.mean(layers.square_error_cost(layers.fc(h, 1), y))
        test = main.clone(for_test=True)
        clip = {"no clipping": None, "global-norm clip": fl.clip.GradientClipByGlobalNorm(clip_norm or 1.0),
                "ZClip": fl.clip.GradientClipZScore(),
                "ZClip skip_spikes": fl.clip.GradientClipZScore(skip_spikes=True)}[run]
        _, params_grads = fl.optimizer.Momentum(args.lr, 0.9).minimize(loss, grad_clip=clip)
        norm = fl.clip.global_norm_var(program=main)  # None without a group clip
    return main, startup, test, loss, norm, params_grads


def train(run, batches, held_out, clip_norm, args):
    main, startup, test, loss, norm, params_grads = build(run, clip_norm, args)
    if norm is None:  # per-parameter norms, combined below into the global one
        with fl.program_guard(main, startup):
            fetch = [loss] + list(fl.clip.gradient_norms(params_grads).values())
    else:
        fetch = [loss, norm]
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    out = {"loss": [], "norm": [], "held_out": []}
    for xs, ys in batches:
        vals = exe.run(main, feed={"x": xs, "y": ys}, fetch_list=fetch, scope=scope)
        out["loss"].append(float(vals[0][0]))
        out["norm"].append(float(np.sqrt(sum(float(v[0]) ** 2 for v in vals[1:]))))
        out["held_out"].append(float(exe.run(test, feed={"x": held_out[0], "y": held_out[1]}, fetch_list=[loss],
                                             scope=scope)[0][0]))
    return out


def plot(results, spikes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for run, r in results.items():
        top.plot(r["held_out"], label=run, lw=1.3)
        bottom.plot(r["norm"], label=run, lw=1.0)
    for ax in (top, bottom):
        ax.set_yscale("log")
        for s in spikes:
            ax.axvline(s, color="0.85", lw=0.8, zorder=0)
    top.set_ylabel("held-out MSE (clean data)")
    bottom.set_ylabel("gradient norm before clipping")
    bottom.set_xlabel("step (grey lines: corrupted batches)")
    top.legend()
    top.set_title("ZClip vs a fixed global-norm clip, injected gradient spikes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--spike-every", type=int, default=30)
    ap.add_argument("--spike-scale", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="PNG path (needs matplotlib)")
    args = ap.parse_args(argv)
    batches, spikes, held_out = make_data(args)
    results = {"no clipping": train("no clipping", batches, held_out, None, args)}
    clip_norm = 2.0 * float(np.median(results["no clipping"]["norm"][:25]))
    for run in RUNS[1:]:
        results[run] = train(run, batches, held_out, clip_norm, args)
    print(f"{len(spikes)} corrupted batches (labels x{args.spike_scale:g}) at steps {spikes[0]}, {spikes[1]}, ...; "
          f"global-norm clip_norm = {clip_norm:.3g} (2 x median of the first 25 norms)")
    head = f"{'run':<20}{'final held-out MSE':>20}{'worst after step 40':>21}{'mean of last 100':>18}"
    print(head)
    print("-" * len(head))
    for run, r in results.items():
        h = np.array(r["held_out"])
        print(f"{run:<20}{h[-1]:>20.4g}{h[40:].max():>21.4g}{h[-100:].mean():>18.4g}")
    if args.out:
        plot(results, spikes, args.out)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
