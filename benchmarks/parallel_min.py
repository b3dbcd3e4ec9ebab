"""One thread against two for elementwise and update kernels, by size: where PARALLEL_MIN belongs.

    python benchmarks/parallel_min.py [--quick] [--import-torch-first] [--json]

Per float32 size: each kernel's serial and two-thread (prange) twin called directly: add, relu,
relu's gradient and gelu (each allocating its output, as in a step), and the optimizer updates in place.
The direct calls run as inside a plan: their parallel loops on fluidlite's dispatcher (fluidlite/_pool.py),
which takes loops only while a plan runs.
For sgd, momentum and adam also the update op run by the Executor on persistable arrays in place
(what a training step does; the plan picks one or two threads by `PARALLEL_MIN`), and NumPy and torch
in place (`out=` / `add_`, `addcdiv_`: the arithmetic of torch.optim's single-tensor path). Sizes where
two threads lose show where the threshold belongs on this machine.
"""
from __future__ import annotations

import argparse

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)
import fluidlite as fl  # noqa: E402
from fluidlite.kernels import activation, adaptive, elementwise, optim  # noqa: E402
from fluidlite import _threads  # noqa: E402
from fluidlite.ops import common  # noqa: E402

LR, MU, B1, B2, EPS = 1e-3, 0.9, 0.9, 0.999, 1e-8
F = np.float32


def _program(kind, n):
    """One in-place update op on persistable arrays; returns (program, scope)."""
    main = fl.Program()
    block = main.global_block()
    slots = {"sgd": ("Param", "Grad"), "momentum": ("Param", "Grad", "Velocity"),
             "adam": ("Param", "Grad", "Moment1", "Moment2")}[kind]
    rng = np.random.default_rng(0)
    scope = fl.Scope()
    ins = {}
    for slot in slots:
        ins[slot] = block.create_var(name=slot.lower(), shape=[n], dtype="float32", persistable=True)
        scope.set_array(slot.lower(), np.abs(rng.standard_normal(n)).astype(F))
    for name, value in (("lr", LR), ("b1p", B1), ("b2p", B2)):
        ins[{"lr": "LearningRate", "b1p": "Beta1Pow", "b2p": "Beta2Pow"}[name]] = block.create_var(
            name=name, shape=[1], dtype="float32", persistable=True)
        scope.set_array(name, np.array([value], F))
    if kind != "adam":
        ins.pop("Beta1Pow"), ins.pop("Beta2Pow")
    outs = {f"{slot}Out": ins[slot] for slot in ins if slot not in ("Grad", "LearningRate")}
    block.append_op(kind, ins, outs, {"mu": MU} if kind == "momentum" else {})
    return main, scope


def _kernel_calls(kind, n):
    rng = np.random.default_rng(1)
    p, g, v, w = (np.abs(rng.standard_normal(n)).astype(F) for _ in range(4))
    if kind in ("add", "relu", "relu_grad", "gelu"):
        unary = {"relu": activation.RELU, "gelu": activation.GELU_VEC}.get(kind, activation.RELU)
        one, two = {"add": (lambda: elementwise.same(p, g, elementwise.ADD), lambda: elementwise.same_parallel(p, g, elementwise.ADD)),
                    "relu_grad": (lambda: activation.unary_grad(p, g, unary, 0.0),
                                  lambda: activation.unary_grad_parallel(p, g, unary, 0.0))}.get(
            kind, (lambda: activation.unary(p, unary, 0.0), lambda: activation.unary_parallel(p, unary, 0.0)))
        return {"one_thread": one, "two_threads": two}
    lr, b1p, b2p = np.array([LR], F), np.array([B1], F), np.array([B2], F)
    calls = {
        "sgd": lambda k: lambda: k(p, g, lr, p),
        "momentum": lambda k: lambda: k(p, g, v, lr, F(MU), False, p, v),
        "adam": lambda k: lambda: k(p, g, lr, v, w, b1p, b2p, B1, B2, EPS, 0.0, p, v, w, b1p, b2p),
        "rmsprop": lambda k: lambda: k(p, g, w, v, lr, F(0.9), F(1e-6), F(0.0), p, w, v),
        "adagrad": lambda k: lambda: k(p, g, w, lr, F(1e-6), p, w),
    }[kind]
    module = adaptive if kind in ("rmsprop", "adagrad") else optim
    return {"one_thread": calls(getattr(module, kind)), "two_threads": calls(getattr(module, kind + "_parallel"))}


def _peers(kind, n, torch):
    rng = np.random.default_rng(2)
    p, g, v, w = (np.abs(rng.standard_normal(n)).astype(F) for _ in range(4))
    tmp = np.empty_like(p)

    def numpy_step():  # ufuncs with out=: in place, one temporary buffer
        if kind == "sgd":
            np.multiply(g, F(LR), out=tmp)
        elif kind == "momentum":
            np.multiply(v, F(MU), out=v)
            np.add(v, g, out=v)
            np.multiply(v, F(LR), out=tmp)
        else:
            np.multiply(v, F(B1), out=v)
            np.multiply(g, F(1 - B1), out=tmp)
            np.add(v, tmp, out=v)
            np.multiply(w, F(B2), out=w)
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, F(1 - B2), out=tmp)
            np.add(w, tmp, out=w)
            np.sqrt(w, out=tmp)
            np.add(tmp, F(EPS), out=tmp)
            np.divide(v, tmp, out=tmp)
            np.multiply(tmp, F(LR), out=tmp)
        np.subtract(p, tmp, out=p)

    peers = {"numpy": numpy_step}
    if torch is not None and kind in ("sgd", "momentum", "adam"):
        tp, tg, tv, tw = (torch.from_numpy(a.copy()) for a in (p, g, v, w))

        def torch_step():
            if kind == "sgd":
                tp.add_(tg, alpha=-LR)
            elif kind == "momentum":
                tv.mul_(MU).add_(tg)
                tp.add_(tv, alpha=-LR)
            else:
                tv.mul_(B1).add_(tg, alpha=1 - B1)
                tw.mul_(B2).addcmul_(tg, tg, value=1 - B2)
                tp.addcdiv_(tv, tw.sqrt().add_(EPS), value=-LR)

        peers["torch"] = torch_step
    return peers


def run(quick: bool = False) -> list:
    try:
        import torch
    except ImportError:
        torch = None
    sizes = [1 << 16, 1 << 20, 1 << 22] if quick else [1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 23, 1 << 24]
    results = []
    exe = fl.Executor()
    pinned = _threads.pool_on()
    if pinned:  # as while a plan runs (held across the plans below): the dispatcher takes the loops
        _threads._pin.enter(_threads._kernel_blas(), _threads._pool_parts)
    try:
        _time_all(sizes, exe, torch, results)
    finally:
        if pinned:
            _threads._pin.exit()
    return results


def _time_all(sizes, exe, torch, results):
    for kind in ("add", "relu", "relu_grad", "gelu", "sgd", "momentum", "adam", "rmsprop", "adagrad"):
        for n in sizes:
            fns = dict(_kernel_calls(kind, n))
            if kind in ("sgd", "momentum", "adam"):
                main, scope = _program(kind, n)
                fns["fluidlite"] = lambda main=main, scope=scope: exe.run(main, scope=scope)
                fns.update(_peers(kind, n, torch))
            repeats = max(3, min(30, (1 << 24) // n))
            ms, _ = _harness.time_ms(fns, warmup=1, repeats=repeats)
            ratios = {"two_threads_vs_one": ms["two_threads"] / ms["one_thread"]}
            ratios.update({f"fluidlite_vs_{k}": ms["fluidlite"] / ms[k] for k in ("numpy", "torch") if k in ms})
            results.append({"name": kind, "elements": n, "ms": ms, "ratios": ratios})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _harness.add_arguments(parser, peers_only=False)
    args = parser.parse_args()
    results = run(args.quick)
    if args.json:
        return _harness.emit_json(results)
    print(f"float32 kernels, ms (median; updates in place); PARALLEL_MIN = 2^{common.parallel_min().bit_length() - 1}")
    for r in results:
        cells = "  ".join(f"{k} {v:7.3f}" for k, v in r["ms"].items())
        ratios = "  ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())
        print(f"  {r['name']:9s} 2^{r['elements'].bit_length() - 1:<3d} {cells}   | {ratios}")


if __name__ == "__main__":
    main()
