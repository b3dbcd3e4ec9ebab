"""One training step of a LeNet-style CNN: fluidlite's Executor vs torch eager, measured in the same run.

    python benchmarks/cnn_step.py [--quick] [--import-torch-first] [--peers-only] [--json]

Batch 64 of 1x28x28 float32 images: conv 5x5x20 relu, max pool 2, conv 5x5x50 relu, max pool 2,
fc 500 relu, fc 10, softmax cross-entropy, SGD(lr 0.01). Both sides start from fluidlite's initial
weights and their losses must agree (1e-4 relative) over the first steps before anything is timed.
`--peers-only` times torch alone, from random weights, in a process where fluidlite is never imported.
"""
from __future__ import annotations

import os

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

if _harness.early_imports(__name__):
    import fluidlite as fl
    from fluidlite import layers

BATCH, LR = 64, 0.01


def build():
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        img = layers.data("img", [1, 28, 28], dtype="float32")
        label = layers.data("label", [1], dtype="int64")
        h = layers.pool2d(layers.conv2d(img, 20, 5, act="relu"), 2, pool_stride=2)
        h = layers.pool2d(layers.conv2d(h, 50, 5, act="relu"), 2, pool_stride=2)
        h = layers.fc(h, 500, act="relu")
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, 10), label))
        fl.optimizer.SGD(LR).minimize(loss)
    return main, startup, loss


def _torch_step(torch, params):
    """The same net in torch eager; conv weights share fluidlite's (F, C, kh, kw) layout, fc weights are (in, out)."""
    F = torch.nn.functional
    ps = [torch.tensor(p, requires_grad=True) for p in params]  # c1.w c1.b c2.w c2.b fc1.w fc1.b fc2.w fc2.b
    opt = torch.optim.SGD(ps, lr=LR)

    def step(x, label):
        h = F.max_pool2d(F.relu(F.conv2d(x, ps[0], ps[1])), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, ps[2], ps[3])), 2)
        h = F.relu(h.reshape(h.shape[0], -1) @ ps[4] + ps[5])
        loss = F.cross_entropy(h @ ps[6] + ps[7], label[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(quick: bool = False) -> dict:
    warmup, repeats, checked = (2, 5, 3) if quick else (3, 15, 5)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 1, 28, 28), dtype=np.float32)
    label = rng.integers(0, 10, (BATCH, 1)).astype(np.int64)
    main, startup, loss = build()
    scope = fl.Scope()
    exe = fl.Executor()
    exe.run(startup, scope=scope)
    params = [fl.fetch_var(p.name, scope).copy() for p in main.all_parameters()]
    feed = {"img": x, "label": label}

    def fl_step():
        return exe.run(main, feed=feed, fetch_list=[loss], scope=scope)[0][0]

    peers, missing = {}, []
    try:
        import torch
    except ImportError:
        missing.append("torch")
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        t_step, tx, tl = _torch_step(torch, params), torch.from_numpy(x), torch.from_numpy(label)
        peers["torch"] = lambda: t_step(tx, tl)
    for step in range(checked):  # same losses step by step, from the same weights
        mine = fl_step()
        for name, peer in peers.items():
            theirs = peer()
            if not np.isclose(mine, theirs, rtol=1e-4, atol=1e-5):
                raise AssertionError(f"step {step}: fluidlite loss {mine} != {name} loss {theirs}")
    ms, best = _harness.time_ms({"fluidlite": fl_step, **peers}, warmup, repeats)
    result = {"name": "cnn_step", "ms": ms["fluidlite"], "peers_ms": ms, "min_ms": best,
              "ratios": {f"vs_{k}": ms["fluidlite"] / v for k, v in ms.items() if k != "fluidlite"},
              "batch": BATCH}
    if missing:
        result["missing"] = missing
    return result


SHAPES = ((20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (800, 500), (500,), (500, 10), (10,))


def run_peers(quick: bool = False) -> dict:
    """torch alone (fluidlite is not imported), from random weights of the same shapes."""
    warmup, repeats = (2, 5) if quick else (3, 15)
    result = {"name": "cnn_step", "peers_ms": {}, "fluidlite_imported": _harness.fluidlite_imported()}
    try:
        import torch
    except ImportError:
        return result
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rng = np.random.default_rng(0)
    params = [(rng.standard_normal(s) * 0.05).astype(np.float32) for s in SHAPES]
    x = torch.from_numpy(rng.random((BATCH, 1, 28, 28), dtype=np.float32))
    label = torch.from_numpy(rng.integers(0, 10, (BATCH, 1)).astype(np.int64))
    t_step = _torch_step(torch, params)
    ms, best = _harness.time_ms({"torch": lambda: t_step(x, label)}, warmup, repeats)
    return {**result, "peers_ms": ms, "min_ms": best}


def main(argv=None):
    r = _harness.run_from_args(__doc__.splitlines()[0], argv, run, run_peers)
    if r is None:
        return None
    print(f"CNN conv5x5x20-pool2-conv5x5x50-pool2-fc500-fc10, batch {BATCH}x1x28x28 float32, SGD: one train step")
    for name, ms in r["peers_ms"].items():
        print(f"  {name:10s} {ms:8.2f} ms/step (median; min {r['min_ms'][name]:.2f})")
    for name, ratio in r["ratios"].items():
        print(f"  fluidlite {name}: {ratio:.2f}x the time")
    if r.get("missing"):
        print(f"  (not installed: {', '.join(r['missing'])})")


if __name__ == "__main__":
    main()
