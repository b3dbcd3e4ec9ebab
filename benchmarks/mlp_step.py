"""One training step of an MLP: fluidlite's Executor vs hand-written NumPy (and torch eager if installed).

    python benchmarks/mlp_step.py [--quick] [--import-torch-first] [--peers-only] [--json]

MLP 784-1024-1024-10 with relu, softmax cross-entropy, batch 128, float32, Momentum(lr 0.01, mu 0.9).
All sides start from fluidlite's initial weights; their losses must agree (1e-4 relative) over the
first steps before anything is timed. Both sides call the same BLAS: NumPy's OpenBLAS, which the
kernels use too (kernels/blas.py); set OPENBLAS_CORETYPE / thread variables the same way for both.
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

SIZES = (784, 1024, 1024, 10)
BATCH, LR, MU = 128, 0.01, 0.9


def build():
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [SIZES[0]], dtype="float32")
        label = layers.data("label", [1], dtype="int64")
        h = x
        for size in SIZES[1:-1]:
            h = layers.fc(h, size, act="relu")
        logits = layers.fc(h, SIZES[-1])
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
        fl.optimizer.Momentum(LR, MU).minimize(loss)
    return main, startup, loss


class NumpyMLP:
    """The same net, forward, backward and momentum update written with NumPy (in place where it can)."""

    def __init__(self, params):
        self.params = [p.copy() for p in params]  # w0, b0, w1, b1, w2, b2
        self.vel = [np.zeros_like(p) for p in self.params]

    def step(self, x, label):
        ws, bs = self.params[0::2], self.params[1::2]
        acts = [x]
        for w, b in zip(ws[:-1], bs[:-1]):
            a = acts[-1] @ w
            a += b
            np.maximum(a, 0, out=a)
            acts.append(a)
        z = acts[-1] @ ws[-1]
        z += bs[-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)  # softmax probabilities
        rows = np.arange(len(x))
        loss = -np.log(z[rows, label[:, 0]]).mean()
        z[rows, label[:, 0]] -= 1
        dz = z
        dz /= np.float32(len(x))
        grads = [None] * len(self.params)
        for i in range(len(ws) - 1, -1, -1):
            grads[2 * i] = acts[i].T @ dz
            grads[2 * i + 1] = dz.sum(axis=0)
            if i:
                dz = dz @ ws[i].T
                dz *= acts[i] > 0
        for p, v, g in zip(self.params, self.vel, grads):
            v *= np.float32(MU)
            v += g
            p -= np.float32(LR) * v
        return np.float32(loss)


def blas_floor(params, x):
    """The step's matrix products alone, through NumPy (the same products both sides make: forward
    x @ w per layer, backward a.T @ dz per layer and dz @ w.T below the top layer). No step that
    computes them can take less; the benchmark reports it as a share of the NumPy step."""
    ws = params[0::2]
    acts = [x]
    for w in ws:
        acts.append(acts[-1] @ w)
    dzs = [np.ones_like(a) for a in acts[1:]]

    def products():
        for a, w in zip(acts[:-1], ws):
            a @ w
        for i, (a, dz) in enumerate(zip(acts[:-1], dzs)):
            a.T @ dz
            if i:
                dz @ ws[i].T

    return products


def _torch_step(torch, params):
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.SGD(ps, lr=LR, momentum=MU)

    def step(x, label):
        h = x
        for w, b in zip(ps[0:-2:2], ps[1:-2:2]):
            h = torch.relu(h @ w + b)
        loss = torch.nn.functional.cross_entropy(h @ ps[-2] + ps[-1], label[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(quick: bool = False) -> dict:
    warmup, repeats, checked = (2, 5, 3) if quick else (3, 15, 5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    label = rng.integers(0, SIZES[-1], (BATCH, 1)).astype(np.int64)
    main, startup, loss = build()
    scope = fl.Scope()
    exe = fl.Executor()
    exe.run(startup, scope=scope)
    params = [fl.fetch_var(p.name, scope).copy() for p in main.all_parameters()]
    ref = NumpyMLP(params)
    feed = {"x": x, "label": label}

    def fl_step():
        return exe.run(main, feed=feed, fetch_list=[loss], scope=scope)[0][0]

    peers = {"numpy": lambda: ref.step(x, label)}
    missing = []
    try:
        import torch
    except ImportError:
        missing.append("torch")
    else:
        peers["torch"] = _torch_step(torch, params)
        tx, tl = torch.from_numpy(x), torch.from_numpy(label)
        t_step = peers["torch"]
        peers["torch"] = lambda: t_step(tx, tl)
    for step in range(checked):  # same losses step by step, from the same weights
        mine = fl_step()
        for name, peer in peers.items():
            theirs = peer()
            if not np.isclose(mine, theirs, rtol=1e-4, atol=1e-5):
                raise AssertionError(f"step {step}: fluidlite loss {mine} != {name} loss {theirs}")
    ms, best = _harness.time_ms({"fluidlite": fl_step, **peers, "blas_floor": blas_floor(params, x)}, warmup, repeats)
    floor = ms.pop("blas_floor")
    best.pop("blas_floor")
    result = {"name": "mlp_step", "ms": ms["fluidlite"], "peers_ms": ms, "min_ms": best, "blas_floor_ms": floor,
              "floor_ratio_vs_numpy": floor / ms["numpy"],
              "ratios": {f"vs_{k}": ms["fluidlite"] / v for k, v in ms.items() if k != "fluidlite"},
              "batch": BATCH, "sizes": SIZES, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}
    if missing:
        result["missing"] = missing
    return result


def run_peers(quick: bool = False) -> dict:
    """Only the peers (fluidlite is not imported): NumPy and torch from the same random weights."""
    warmup, repeats = (2, 5) if quick else (3, 15)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    label = rng.integers(0, SIZES[-1], (BATCH, 1)).astype(np.int64)
    params = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        params += [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32)]
    ref = NumpyMLP(params)
    peers = {"numpy": lambda: ref.step(x, label)}
    try:
        import torch
    except ImportError:
        pass
    else:
        t_step = _torch_step(torch, params)
        tx, tl = torch.from_numpy(x), torch.from_numpy(label)
        peers["torch"] = lambda: t_step(tx, tl)
    ms, best = _harness.time_ms(peers, warmup, repeats)
    return {"name": "mlp_step", "peers_ms": ms, "min_ms": best, "fluidlite_imported": _harness.fluidlite_imported()}


def main(argv=None):
    r = _harness.run_from_args(__doc__.splitlines()[0], argv, run, run_peers)
    if r is None:
        return None
    print(f"MLP {'-'.join(map(str, SIZES))} relu, batch {BATCH}, float32, Momentum: one train step "
          f"(OPENBLAS_CORETYPE={r['openblas_coretype']}; {r['import_order']})")
    for name, ms in r["peers_ms"].items():
        print(f"  {name:10s} {ms:8.2f} ms/step (median; min {r['min_ms'][name]:.2f})")
    for name, ratio in r["ratios"].items():
        print(f"  fluidlite {name}: {ratio:.2f}x the time")
    print(f"  the matrix products alone (NumPy): {r['blas_floor_ms']:.2f} ms = {r['floor_ratio_vs_numpy']:.2f}x the NumPy "
          "step (a floor for any implementation)")
    if r.get("missing"):
        print(f"  (not installed: {', '.join(r['missing'])})")
    return r


if __name__ == "__main__":
    main()
