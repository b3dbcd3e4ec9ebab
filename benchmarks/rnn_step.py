"""One training step of an LSTM classifier: fluidlite (StaticRNN + lstm_unit) vs torch nn.LSTM (eager).

    python benchmarks/rnn_step.py [--quick] [--import-torch-first] [--peers-only] [--json]

Full profile: T=50, batch 32, input 256, hidden 256; the last hidden state feeds a 10-way
softmax cross-entropy; gradients are clipped to global norm 0.25; plain SGD. Both frameworks
start from the same weights and see the same batches, so their losses must agree step by step.
torch is optional (extra `bench`); without it only fluidlite is timed.
"""
from __future__ import annotations

import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

if _harness.early_imports(__name__):
    import fluidlite as fl
    from fluidlite import layers

FULL = {"seq_len": 50, "batch": 32, "input": 256, "hidden": 256, "classes": 10, "steps": 10}
QUICK = {"seq_len": 20, "batch": 16, "input": 64, "hidden": 64, "classes": 10, "steps": 5}
LR, CLIP = 0.5, 0.25


def build(cfg):
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
            h, c = layers.lstm_unit(x_t, h_prev, c_prev, param_attr=[fl.ParamAttr(name="w_ih"), fl.ParamAttr(name="w_hh")],
                                    bias_attr=fl.ParamAttr(name="b"))
            rnn.update_memory(h_prev, h)
            rnn.update_memory(c_prev, c)
        logits = layers.fc(rnn.step_var(h), size=cfg["classes"], param_attr=fl.ParamAttr(name="w_out"),
                           bias_attr=fl.ParamAttr(name="b_out"))
        loss = layers.mean(layers.softmax_with_cross_entropy(logits, label))
        fl.optimizer.SGD(LR).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(CLIP))
    return main, startup, loss


def batches(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((cfg["seq_len"], cfg["batch"], cfg["input"])).astype(np.float32),
             rng.integers(0, cfg["classes"], size=(cfg["batch"], 1)).astype(np.int64)) for _ in range(cfg["steps"])]


def run_fluidlite(cfg, data):
    main, startup, loss = build(cfg)
    from fluidlite.compiler import CompileOptions

    # the recurrent weight's gradient as one product (opt-in: it changes rounding)
    exe, scope = fl.Executor(compile_options=CompileOptions(batch_grad=True)), fl.Scope()
    exe.run(startup, scope=scope)
    weights = {n: fl.fetch_var(n, scope).copy() for n in ("w_ih", "w_hh", "b", "w_out", "b_out")}
    losses, times = [], []
    warm = fl.Scope()  # one step in a scratch scope compiles every kernel before timing
    exe.run(startup, scope=warm)
    exe.run(main, feed={"x": data[0][0], "label": data[0][1]}, fetch_list=[loss], scope=warm)
    for xs, ys in data:
        t0 = time.perf_counter()
        out, = exe.run(main, feed={"x": xs, "label": ys}, fetch_list=[loss], scope=scope)
        times.append(time.perf_counter() - t0)
        losses.append(float(out[0]))
    return weights, losses, times


def products_ms(cfg, repeats=10) -> float:
    """Median ms of the step's matrix products alone, through fluidlite's own BLAS path (kernels/blas.py):
    the input projection of all steps, T recurrent products forward, T - 1 backward by the
    row-major copy of W_hh^T (the first step's h_prev needs no gradient), and the two weight gradients
    as one product each (batch_grad). No step that computes them can take less."""
    from fluidlite.kernels import basic as KB

    t, b, d, h = cfg["seq_len"], cfg["batch"], cfg["input"], cfg["hidden"]
    rng = np.random.default_rng(0)
    x, hs = rng.random((t * b, d), dtype=np.float32), rng.random((t * b, h), dtype=np.float32)
    dgates = rng.random((t * b, 4 * h), dtype=np.float32)
    w_ih, w_hh = rng.random((d, 4 * h), dtype=np.float32), rng.random((h, 4 * h), dtype=np.float32)
    w_hh_t = np.ascontiguousarray(w_hh.T)

    def products():
        KB.matmul2d(x, w_ih)
        for i in range(t):
            KB.matmul2d(hs[i * b:(i + 1) * b], w_hh)
        for i in range(1, t):
            KB.matmul2d(dgates[i * b:(i + 1) * b], w_hh_t)
        KB.matmul2d_tn(hs, dgates)
        KB.matmul2d_tn(x, dgates)

    return _harness.time_ms({"products": products}, 1, repeats, rounds=1)[0]["products"]


def run_torch(cfg, weights, data):
    import torch

    torch.manual_seed(0)
    h = cfg["hidden"]
    # fluidlite's gate blocks are (i, f, o, j); torch's are (i, f, g, o) with g = j
    perm = np.concatenate([np.arange(0, 2 * h), np.arange(3 * h, 4 * h), np.arange(2 * h, 3 * h)])
    lstm = torch.nn.LSTM(cfg["input"], h)
    out = torch.nn.Linear(h, cfg["classes"])
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(weights["w_ih"][:, perm].T.copy()))
        lstm.weight_hh_l0.copy_(torch.from_numpy(weights["w_hh"][:, perm].T.copy()))
        lstm.bias_ih_l0.copy_(torch.from_numpy(weights["b"][perm].copy()))
        lstm.bias_hh_l0.zero_()
        out.weight.copy_(torch.from_numpy(weights["w_out"].T.copy()))
        out.bias.copy_(torch.from_numpy(weights["b_out"]))
    lstm.bias_hh_l0.requires_grad_(False)  # fluidlite has one bias; a second trained one would double its step
    params = [p for p in list(lstm.parameters()) + list(out.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xs, ys):
        opt.zero_grad()
        hs, _ = lstm(torch.from_numpy(xs))
        loss = loss_fn(out(hs[-1]), torch.from_numpy(ys[:, 0]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    losses, times = [], []
    for xs, ys in data:
        t0 = time.perf_counter()
        losses.append(step(xs, ys))
        times.append(time.perf_counter() - t0)
    return losses, times


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    data = batches(cfg)
    weights, losses, times = run_fluidlite(cfg, data)
    result = {"name": "rnn_step", "config": dict(cfg), "fluidlite_losses": losses,
              "fluidlite_ms": 1e3 * float(np.median(times)), "missing": []}
    try:
        import torch  # noqa: F401
    except ImportError:
        result["missing"].append("torch")
        return result
    t_losses, t_times = run_torch(cfg, weights, data)
    result.update({"torch_losses": t_losses, "torch_ms": 1e3 * float(np.median(t_times)),
                   "max_loss_diff": float(np.max(np.abs(np.array(losses) - np.array(t_losses))))})
    result["ratio_vs_torch"] = result["fluidlite_ms"] / result["torch_ms"]
    result["peers_ms"] = {"fluidlite": result["fluidlite_ms"], "torch": result["torch_ms"]}
    result["products_ms"] = products_ms(cfg)
    result["floor_ratio_vs_torch"] = result["products_ms"] / result["torch_ms"]
    return result


def run_peers(quick: bool = False) -> dict:
    """torch alone (fluidlite is not imported), from random weights of the same shapes."""
    cfg = QUICK if quick else FULL
    rng = np.random.default_rng(0)
    h, d, k = cfg["hidden"], cfg["input"], cfg["classes"]
    weights = {"w_ih": rng.uniform(-0.1, 0.1, (d, 4 * h)), "w_hh": rng.uniform(-0.1, 0.1, (h, 4 * h)),
               "b": np.zeros(4 * h), "w_out": rng.uniform(-0.1, 0.1, (h, k)), "b_out": np.zeros(k)}
    weights = {n: w.astype(np.float32) for n, w in weights.items()}
    result = {"name": "rnn_step", "peers_ms": {}, "fluidlite_imported": _harness.fluidlite_imported()}
    try:
        import torch  # noqa: F401
    except ImportError:
        return result
    data = batches(cfg)
    run_torch(cfg, weights, data[:2])  # warm-up
    _, times = run_torch(cfg, weights, data)
    result["peers_ms"]["torch"] = 1e3 * float(np.median(times))
    result["fluidlite_imported"] = _harness.fluidlite_imported()
    return result


def main(argv=None):
    r = _harness.run_from_args(__doc__.split("\n\n")[0], argv, run, run_peers)
    if r is None:
        return None
    print(f"LSTM train step, config {r['config']} ({r['import_order']})")
    print(f"  fluidlite: {r['fluidlite_ms']:8.2f} ms/step  losses {[round(v, 5) for v in r['fluidlite_losses'][:4]]}")
    if "torch_ms" in r:
        print(f"  torch:     {r['torch_ms']:8.2f} ms/step  losses {[round(v, 5) for v in r['torch_losses'][:4]]}")
        print(f"  ratio fluidlite/torch: {r['ratio_vs_torch']:.2f}x   max |loss difference| over "
              f"{len(r['torch_losses'])} steps: {r['max_loss_diff']:.2e}")
        print(f"  the matrix products alone (fluidlite's BLAS path): {r['products_ms']:.2f} ms = "
              f"{r['floor_ratio_vs_torch']:.2f}x the torch step (a floor for fluidlite)")
    else:
        print("  torch is not installed: pip install 'fluidlite[bench]' to compare")
    return r


if __name__ == "__main__":
    main()
