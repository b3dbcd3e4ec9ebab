"""One training step of a Transformer encoder: fluidlite's Executor vs torch eager, in the same run.

    python benchmarks/transformer_step.py [--quick] [--import-torch-first] [--peers-only] [--json]

Batch 32, sequence 64, d_model 128, 4 heads, feed-forward 512 with gelu, 2 post-norm encoder layers,
a 16-way token classifier, softmax cross-entropy, Adam, float32, no dropout (so both sides compute
the same function). torch runs the same layers from fluidlite's initial weights; the losses of the
first steps must agree before anything is timed. `--peers-only` times torch alone, from random weights
of the same shapes, in a process where fluidlite is never imported.
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

BATCH, SEQ, D, HEADS, FFN, LAYERS, CLASSES, LR = 32, 64, 128, 4, 512, 2, 16, 1e-3


def _proj(x, size):
    return layers.fc(x, size, num_flatten_dims=2)


def _encoder_layer(x):
    dh = D // HEADS

    def split(t):
        return layers.transpose(layers.reshape(t, [0, 0, HEADS, dh]), [0, 2, 1, 3])

    q, k, v = (split(_proj(x, D)) for _ in range(3))
    attn = layers.softmax(layers.matmul(q, k, transpose_y=True, alpha=dh ** -0.5))
    merged = layers.reshape(layers.transpose(layers.matmul(attn, v), [0, 2, 1, 3]), [0, 0, D])
    x = layers.layer_norm(x + _proj(merged, D), begin_norm_axis=2)
    return layers.layer_norm(x + _proj(layers.gelu(_proj(x, FFN)), D), begin_norm_axis=2)


def build():
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [SEQ, D])
        label = layers.data("label", [SEQ, 1], dtype="int64")
        h = x
        for _ in range(LAYERS):
            h = _encoder_layer(h)
        loss = layers.mean(layers.softmax_with_cross_entropy(_proj(h, CLASSES), label))
        fl.optimizer.Adam(LR).minimize(loss)
    return main, startup, loss


def _torch_step(torch, params):
    """The same encoder from the same weights: per layer q, k, v, o (w, b), ln1 (scale, shift), ffn1,
    ffn2 (w, b), ln2; then the classifier (w, b). fc weights are (in, out), as fluidlite lays them out."""
    F = torch.nn.functional
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.Adam(ps, lr=LR, eps=1e-8)
    dh = D // HEADS

    def step(x, label):
        h = x
        for i in range(LAYERS):
            (qw, qb, kw, kb, vw, vb, ow, ob, g1, b1, f1w, f1b, f2w, f2b, g2, b2) = ps[16 * i:16 * (i + 1)]
            q, k, v = ((h @ w + b).view(BATCH, SEQ, HEADS, dh).transpose(1, 2) for w, b in
                       ((qw, qb), (kw, kb), (vw, vb)))
            attn = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5, dim=-1)
            merged = (attn @ v).transpose(1, 2).reshape(BATCH, SEQ, D)
            h = F.layer_norm(h + merged @ ow + ob, (D,), g1, b1)
            h = F.layer_norm(h + F.gelu(h @ f1w + f1b) @ f2w + f2b, (D,), g2, b2)
        logits = h @ ps[-2] + ps[-1]
        loss = F.cross_entropy(logits.reshape(-1, CLASSES), label.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(quick: bool = False) -> dict:
    warmup, repeats, checked = (1, 3, 2) if quick else (2, 10, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SEQ, D)).astype(np.float32)
    label = rng.integers(0, CLASSES, (BATCH, SEQ, 1)).astype(np.int64)
    main, startup, loss = build()
    scope, exe = fl.Scope(), fl.Executor()
    exe.run(startup, scope=scope)
    params = [fl.fetch_var(p.name, scope).copy() for p in main.all_parameters()]

    def fl_step():
        return exe.run(main, feed={"x": x, "label": label}, fetch_list=[loss], scope=scope)[0][0]

    result = {"name": "transformer_step", "batch": BATCH, "seq": SEQ, "d_model": D, "heads": HEADS}
    try:
        import torch
    except ImportError:
        ms, _ = _harness.time_ms({"fluidlite": fl_step}, warmup, repeats)
        return {**result, "ms": ms["fluidlite"], "peers_ms": ms, "ratios": {}, "missing": ["torch"]}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    t_step = _torch_step(torch, params)
    tx, tl = torch.from_numpy(x), torch.from_numpy(label)
    for step in range(checked):  # same losses step by step, from the same weights
        mine, theirs = fl_step(), t_step(tx, tl)
        if not np.isclose(mine, theirs, rtol=1e-3, atol=1e-4):
            raise AssertionError(f"step {step}: fluidlite loss {mine} != torch loss {theirs}")
    ms, best = _harness.time_ms({"fluidlite": fl_step, "torch": lambda: t_step(tx, tl)}, warmup, repeats)
    floor, _ = _harness.time_ms({"products": products_fn()}, warmup, repeats)
    return {**result, "ms": ms["fluidlite"], "peers_ms": ms, "min_ms": best, "products_ms": floor["products"],
            "floor_ratio_vs_torch": floor["products"] / ms["torch"], "ratios": {"vs_torch": ms["fluidlite"] / ms["torch"]}}


def products_fn():
    """The step's matrix products alone, through fluidlite's own BLAS path (kernels/blas.py): per
    layer the q, k, v, o and feed-forward projections forward, their weight gradients and input
    gradients (none for the first layer's q, k, v input, which is data), the attention scores and
    weighted values per head with their two gradients each; then the classifier. No step that computes
    them can take less."""
    from fluidlite.kernels import basic as KB
    from fluidlite.kernels import nn as KN

    rng = np.random.default_rng(0)
    rows, dh, bh = BATCH * SEQ, D // HEADS, BATCH * HEADS
    shapes = [(D, D)] * 4 + [(D, FFN), (FFN, D)]
    xs = {n: rng.random((rows, n), dtype=np.float32) for n in (D, FFN, CLASSES)}
    ws = {s: rng.random(s, dtype=np.float32) for s in shapes + [(D, CLASSES)]}
    q, p = rng.random((bh, SEQ, dh), dtype=np.float32), rng.random((bh, SEQ, SEQ), dtype=np.float32)
    idx, one = np.arange(bh), np.float32(1.0)

    def fc(shape, dx=True):
        KB.matmul2d(xs[shape[0]], ws[shape])
        KB.matmul2d_tn(xs[shape[0]], xs[shape[1]])
        if dx:
            KB.matmul2d_nt(xs[shape[1]], ws[shape])

    def products():
        for layer in range(LAYERS):
            for i, shape in enumerate(shapes):
                fc(shape, dx=layer > 0 or i >= 3)
            KN.bmm_parallel(q, q, idx, idx, False, True, one)  # scores = q k^T
            KN.bmm_parallel(p, q, idx, idx, False, False, one)  # weighted values = p v
            for ta, tb in ((False, False), (True, False)):  # the gradients of both: dq, dk and dp, dv
                KN.bmm_parallel(p, q, idx, idx, ta, tb, one)
                KN.bmm_parallel(p if ta else q, q, idx, idx, ta, not ta, one)
        fc((D, CLASSES))

    return products


def _random_params(rng):
    """Weights in _torch_step's order, for a run without fluidlite's initializers."""
    def fc(a, b):
        return [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32)]

    def norm():
        return [np.ones(D, np.float32), np.zeros(D, np.float32)]

    params = []
    for _ in range(LAYERS):
        params += fc(D, D) + fc(D, D) + fc(D, D) + fc(D, D) + norm() + fc(D, FFN) + fc(FFN, D) + norm()
    return params + fc(D, CLASSES)


def run_peers(quick: bool = False) -> dict:
    """torch alone (fluidlite is not imported), from random weights of the same shapes."""
    warmup, repeats = (1, 3) if quick else (2, 10)
    result = {"name": "transformer_step", "peers_ms": {}, "fluidlite_imported": _harness.fluidlite_imported()}
    try:
        import torch
    except ImportError:
        return result
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, SEQ, D)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, CLASSES, (BATCH, SEQ, 1)).astype(np.int64))
    t_step = _torch_step(torch, _random_params(rng))
    ms, best = _harness.time_ms({"torch": lambda: t_step(x, label)}, warmup, repeats)
    return {**result, "peers_ms": ms, "min_ms": best}


def main(argv=None):
    r = _harness.run_from_args(__doc__.splitlines()[0], argv, run, run_peers)
    if r is None:
        return None
    print(f"Transformer encoder x{LAYERS}: batch {BATCH}, seq {SEQ}, d {D}, {HEADS} heads, ffn {FFN}, float32, Adam: "
          "one train step")
    for name, ms in r["peers_ms"].items():
        print(f"  {name:10s} {ms:8.2f} ms/step (median; min {r.get('min_ms', r['peers_ms'])[name]:.2f})")
    for name, ratio in r["ratios"].items():
        print(f"  fluidlite {name}: {ratio:.2f}x the time")
    if "products_ms" in r:
        print(f"  the matrix products alone (fluidlite's BLAS path): {r['products_ms']:.2f} ms = "
              f"{r['floor_ratio_vs_torch']:.2f}x the torch step (a floor for fluidlite)")


if __name__ == "__main__":
    main()
