"""Per-step time of a small MLP training step when the batch size changes every step, against a fixed
batch size, in the same run (issue #12 item 7; docs/reliability.md, "Plan cache").

    python benchmarks/batch_cycle.py [--sizes 100] [--cycles 5] [--quick] [--import-torch-first] [--json]

Batch sizes 2 .. sizes+1 are cycled in order; the fixed batch is their mean. "first cycle" is the
mean step of the first pass over the sizes (each size new to the Executor), "cycling" the mean
step of the later passes, "fixed" the mean step at the fixed batch size, as many steps.
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
from fluidlite import layers  # noqa: E402


def build():
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [32])
        label = layers.data("label", [1], dtype="int64")
        h = layers.fc(x, 64, act="relu")
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 10), label))
        fl.optimizer.SGD(0.01).minimize(loss)
    return main, startup, loss


def run(n_sizes=100, cycles=5) -> dict:
    main, startup, loss = build()
    rng = np.random.default_rng(0)
    sizes = list(range(2, n_sizes + 2))
    feeds = {b: {"x": rng.standard_normal((b, 32)).astype("float32"),
                 "label": rng.integers(0, 10, (b, 1)).astype("int64")} for b in sizes}
    fixed = feeds.setdefault(int(np.mean(sizes)), None) or feeds[int(np.mean(sizes))]
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)

    def steps(feed_list):
        t0 = time.perf_counter()
        for feed in feed_list:
            exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
        return (time.perf_counter() - t0) / len(feed_list) * 1e3

    exe.run(main, feed=fixed, fetch_list=[loss], scope=scope)  # the fixed size's plan, compiled
    first = steps([feeds[b] for b in sizes])
    cycling = steps([feeds[b] for _ in range(cycles - 1) for b in sizes])
    fixed_ms = steps([fixed] * (len(sizes) * (cycles - 1)))
    return {"name": "batch_cycle", "sizes": n_sizes, "first_cycle_ms": first, "cycling_ms": cycling, "fixed_ms": fixed_ms,
            "ratio": cycling / fixed_ms, "plans": len(exe._plans)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=5)
    _harness.add_arguments(ap, peers_only=False)
    args = ap.parse_args(argv)
    r = run(20 if args.quick else args.sizes, 2 if args.quick else args.cycles)
    r["import_order"] = "torch first" if args.import_torch_first else "fluidlite first"
    if args.json:
        return _harness.emit_json(r)
    print(f"{r['sizes']} batch sizes cycled: first cycle {r['first_cycle_ms']:.3f} ms/step, then "
          f"{r['cycling_ms']:.3f} ms/step; fixed batch {r['fixed_ms']:.3f} ms/step; "
          f"cycling/fixed {r['ratio']:.2f}x; plans cached {r['plans']}")


if __name__ == "__main__":
    main()
