"""Clip by value into a persistable output (Out != X) against like-for-like peers and the floors.

    python benchmarks/clip_out_of_place.py [--quick] [--import-torch-first] [--json]

A persistable-output clip reads X and writes another array, as `torch.clamp(g, out=o)` and
`np.clip(g, out=o)` do; torch's in-place `clamp_` reads and writes one array, so it moves a third
fewer bytes and bounds what any out-of-place clip can reach. `np.copyto(o, g)` (a plain copy, one thread)
moves the same bytes as an out-of-place clip. The scope alone holds the output's array, as it holds a gradient buffer, so the
`inplace` pass writes into it every run (checked).
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

LO, HI = -1e-3, 1e-3


def run(quick: bool = False) -> dict:
    n = 10_000_000 if quick else 100_000_000
    g = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    o = np.empty_like(g)
    main = fl.Program()
    block = main.global_block()
    x = block.create_var(name="g", shape=(n,), dtype="float32", persistable=True)
    out = block.create_var(name="o", shape=(n,), dtype="float32", persistable=True)
    block.append_op("clip", {"X": x}, {"Out": out}, {"min": LO, "max": HI})
    scope, exe = fl.Scope(), fl.Executor()
    scope.set_array("g", g)
    scope.set_array("o", np.empty_like(g))
    exe.run(main, scope=scope)
    buffer = id(scope.get_array("o"))
    fns = {"fluidlite": lambda: exe.run(main, scope=scope),
           "numpy_clip_out": lambda: np.clip(g, LO, HI, out=o),
           "numpy_copyto": lambda: np.copyto(o, g)}
    try:
        import torch

        tg, to, tin = torch.from_numpy(g), torch.from_numpy(o), torch.from_numpy(g.copy())
        fns["torch_clamp_out"] = lambda: torch.clamp(tg, LO, HI, out=to)
        fns["torch_clamp_in_place"] = lambda: tin.clamp_(LO, HI)
    except ImportError:
        pass
    _, best = _harness.time_ms(fns, warmup=1, repeats=3 if quick else 5)
    assert id(scope.get_array("o")) == buffer, "the persistable output was not written in place"
    np.testing.assert_array_equal(scope.get_array("o"), np.clip(g, LO, HI))
    ratios = {f"vs_{k}": best["fluidlite"] / v for k, v in best.items() if k != "fluidlite"}
    return {"name": "clip_out_of_place", "elements": n, "ms": best, "ratios": ratios}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _harness.add_arguments(parser, peers_only=False)
    args = parser.parse_args()
    result = run(args.quick)
    if args.json:
        _harness.emit_json(result)
        return
    print(f"clip by value into a persistable output, {result['elements']:,} float32 (best of runs)")
    for k, v in result["ms"].items():
        print(f"  {k:22s} {v:8.2f} ms")
    for k, v in result["ratios"].items():
        print(f"  fluidlite {k}: {v:.2f}x the time")


if __name__ == "__main__":
    main()
