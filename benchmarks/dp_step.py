"""A DP-SGD step (per-example clipping + noise) against the ordinary step, a per-example loop and Opacus.

    python benchmarks/dp_step.py [--quick] [--import-torch-first]

- MLP: the net of benchmarks/mlp_step.py (784-1024-1024-10, relu), batch 64, SGD.
- LSTM: the net of benchmarks/rnn_step.py (StaticRNN + lstm_unit, last state -> 10 classes), SGD.
- naive: the ordinary MLP program run once per example (batch 1), then clip, sum and noise in NumPy:
  what per-example clipping costs without ghost norms.
- Opacus (optional, `pip install opacus`): the same MLP in torch with Opacus's per-sample gradients.
- Peak memory: the growth of the peak RSS over three steps after a warm-up (Linux: the peak is reset
  through /proc/self/clear_refs), on a wide layer: B per-example copies of its weight would show.
  Ratios come from one run, alternating the variants.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)
import fluidlite as fl  # noqa: E402
from fluidlite import layers  # noqa: E402

SIZES = (784, 1024, 1024, 10)
LSTM_FULL = {"seq_len": 50, "batch": 32, "input": 256, "hidden": 256, "classes": 10}
LSTM_QUICK = {"seq_len": 20, "batch": 16, "input": 64, "hidden": 64, "classes": 10}
BATCH, LR, CLIP, SIGMA = 64, 0.01, 1.0, 1.0


def _minimize(loss, private):
    clip = fl.clip.GradientClipPerExample(CLIP, noise_multiplier=SIGMA, seed=1) if private else None
    return fl.optimizer.SGD(LR).minimize(loss, grad_clip=clip)


def build_mlp(private, sizes=SIZES):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        h = layers.data("x", [sizes[0]])
        label = layers.data("label", [1], dtype="int64")
        for size in sizes[1:-1]:
            h = layers.fc(h, size, act="relu")
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, sizes[-1]), label))
        _, pairs = _minimize(loss, private)
    return main, startup, loss, pairs


def build_lstm(private, cfg):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data("x", [cfg["seq_len"], -1, cfg["input"]], append_batch_size=False)
        label = layers.data("label", [1], dtype="int64")
        rnn = layers.StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(x)
            h_prev = rnn.memory(shape=[-1, cfg["hidden"]], batch_ref=x_t)
            c_prev = rnn.memory(shape=[-1, cfg["hidden"]], batch_ref=x_t)
            h, c = layers.lstm_unit(x_t, h_prev, c_prev)
            rnn.update_memory(h_prev, h)
            rnn.update_memory(c_prev, c)
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(rnn.step_var(h), cfg["classes"]), label))
        _minimize(loss, private)
    return main, startup, loss


def _stepper(built, feed):
    main, startup, loss = built[:3]
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    return lambda: exe.run(main, feed=feed, fetch_list=[loss], scope=scope)


def _naive(feed):
    """Per-example gradients by running the ordinary backward once per example, then DP-SGD in NumPy."""
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 1
    with fl.program_guard(main, startup), fl.unique_name.guard():
        h = layers.data("x", [SIZES[0]])
        label = layers.data("label", [1], dtype="int64")
        for size in SIZES[1:-1]:
            h = layers.fc(h, size, act="relu")
        loss = layers.mean(layers.softmax_with_cross_entropy(layers.fc(h, SIZES[-1]), label))
        pairs = fl.append_backward(loss)
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(0)
    grads = [g for _, g in pairs]

    def step():
        total = [np.zeros(p.shape, np.float32) for p, _ in pairs]
        for i in range(feed["x"].shape[0]):
            gs = exe.run(main, feed={"x": feed["x"][i:i + 1], "label": feed["label"][i:i + 1]},
                         fetch_list=grads, scope=scope)
            norm = np.sqrt(sum(float((g * g).sum()) for g in gs))
            c = min(1.0, CLIP / norm) if norm > 0 else 1.0
            for t, g in zip(total, gs):
                t += c * g
        for (p, _), t in zip(pairs, total):
            t += rng.normal(0, SIGMA * CLIP, t.shape).astype(np.float32)
            w = fl.fetch_var(p.name, scope)
            scope.var(p.name).get_tensor().set(w - LR * t / feed["x"].shape[0])

    return step


def _opacus(feed):
    import warnings

    import torch
    from opacus import GradSampleModule

    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no gradient

    layers_ = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        layers_ += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = GradSampleModule(torch.nn.Sequential(*layers_[:-1]))
    params = list(model.parameters())
    x, y = torch.from_numpy(feed["x"]), torch.from_numpy(feed["label"][:, 0])

    def step():
        for p in params:
            p.grad_sample = None
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in params]).norm(dim=0)
        c = (CLIP / (norms + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for p in params:
                g = torch.einsum("i,i...->...", c, p.grad_sample) + torch.randn_like(p) * SIGMA * CLIP
                p -= LR * g / x.shape[0]

    return step


def _time_ms(fns, repeats, rounds=3):
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _mlp_feed(batch, sizes=SIZES):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((batch, sizes[0])).astype(np.float32),
            "label": rng.integers(0, sizes[-1], (batch, 1)).astype(np.int64)}


def _noise_ms(n, repeats):
    """Milliseconds to add the DP noise to n float32 gradient elements (what dp_gaussian_noise does)."""
    from fluidlite.kernels import privacy as K
    from fluidlite.ops.privacy_ops import _ZIGGURAT

    x = np.zeros(n, np.float32)
    K.add_gaussian(x, np.uint64(1), 1.0, *_ZIGGURAT)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        K.add_gaussian(x, np.uint64(k), 1.0, *_ZIGGURAT)
        times.append(time.perf_counter() - t0)
    return {"elements": n, "ms": 1e3 * statistics.median(times)}


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak(private, width, batch):
    """Extra peak RSS (MB) of three steps on a [width, width] layer, after a warm-up step: the peak is
    reset through /proc/self/clear_refs (Linux), so kernel compilation does not count."""
    sizes = (width, width, 10)
    step = _stepper(build_mlp(private, sizes), _mlp_feed(batch, sizes))
    step()
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed buffers back, so the step's own allocations count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_mb("VmRSS")
    for _ in range(3):
        step()
    return _status_mb("VmHWM") - base


def run(quick=False) -> dict:
    repeats = 3 if quick else 10
    feed = _mlp_feed(BATCH)
    result = {"name": "dp_step", "batch": BATCH, "ratios": {}}
    mlp = _time_ms({"private": _stepper(build_mlp(True), feed), "plain": _stepper(build_mlp(False), feed)}, repeats)
    result["mlp_ms"] = mlp
    result["ratios"]["dp_vs_plain_mlp"] = mlp["private"] / mlp["plain"]
    cfg = LSTM_QUICK if quick else LSTM_FULL
    rng = np.random.default_rng(0)
    lfeed = {"x": rng.standard_normal((cfg["seq_len"], cfg["batch"], cfg["input"])).astype(np.float32),
             "label": rng.integers(0, cfg["classes"], (cfg["batch"], 1)).astype(np.int64)}
    lstm = _time_ms({"private": _stepper(build_lstm(True, cfg), lfeed),
                     "plain": _stepper(build_lstm(False, cfg), lfeed)}, max(2, repeats // 2))
    result["lstm_ms"], result["lstm_config"] = lstm, cfg
    result["ratios"]["dp_vs_plain_lstm"] = lstm["private"] / lstm["plain"]
    peers = {"private": _stepper(build_mlp(True), feed), "naive": _naive(feed)}
    try:
        peers["opacus"] = _opacus(feed)
    except ImportError:
        result["missing"] = ["opacus"]
    peer_ms = _time_ms(peers, 2 if quick else 4, rounds=2)
    result["peer_ms"] = peer_ms
    result["ratios"]["dp_vs_naive"] = peer_ms["private"] / peer_ms["naive"]
    if "opacus" in peer_ms:
        result["ratios"]["dp_vs_opacus"] = peer_ms["private"] / peer_ms["opacus"]
    result["noise_ms"] = _noise_ms(sum(int(np.prod(p.shape)) for p, _ in build_mlp(False)[3]), repeats)
    width, batch = (512, 32) if quick else (2048, 64)
    result["peak_mb"] = {"width": width, "batch": batch, "weight_mb": width * width * 4 / 2 ** 20,
                         "private": _peak(True, width, batch), "plain": _peak(False, width, batch)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small configuration")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--import-torch-first", action="store_true", help="import torch before fluidlite")
    r = run(parser.parse_args(argv).quick)
    if "--json" in (argv or sys.argv[1:]):
        print(json.dumps(r))  # one line: fluidlite bench reads the last line
        return
    m, s, p, mem = r["mlp_ms"], r["lstm_ms"], r["peer_ms"], r["peak_mb"]
    print(f"DP-SGD step (clip {CLIP}, noise {SIGMA}) vs the ordinary SGD step, same run")
    print(f"  MLP {SIZES} batch {BATCH}: {m['private']:.2f} ms vs {m['plain']:.2f} ms -> "
          f"{r['ratios']['dp_vs_plain_mlp']:.2f}x")
    print(f"  LSTM {r['lstm_config']}: {s['private']:.2f} ms vs {s['plain']:.2f} ms -> "
          f"{r['ratios']['dp_vs_plain_lstm']:.2f}x")
    print(f"  per-example loop (batch 1 x {BATCH}): {p['naive']:.1f} ms -> ghost path {1 / r['ratios']['dp_vs_naive']:.1f}x faster")
    print(f"  of the MLP's DP step: the noise for its {r['noise_ms']['elements']} parameters takes {r['noise_ms']['ms']:.2f} ms")
    if "opacus" in p:
        print(f"  Opacus (torch, per-sample grads): {p['opacus']:.2f} ms -> fluidlite/opacus "
              f"{r['ratios']['dp_vs_opacus']:.2f}x")
    else:
        print("  Opacus is not installed (pip install opacus to compare)")
    print(f"  peak RSS growth, [{mem['width']}x{mem['width']}] layer ({mem['weight_mb']:.0f} MB) batch {mem['batch']}: "
          f"private {mem['private']:.0f} MB, plain {mem['plain']:.0f} MB "
          f"(B copies of the weight would be {mem['batch'] * mem['weight_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
