"""`fluidlite bench`: the benchmarks in a quick profile, as one table of ratios against the peers."""
from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = ("executor_overhead", "mlp_step", "clip", "rnn_step", "cnn_step")


def _ratios(result: dict) -> dict:
    """label -> ratio (fluidlite time / peer time; below 1 means fluidlite is faster)."""
    ratios = {key.replace("vs_", "vs ").replace("_", " "): v for key, v in result.get("ratios", {}).items()}
    for key, value in result.items():
        if key.startswith("ratio") and isinstance(value, (int, float)):
            ratios.setdefault(key.replace("ratio_", "").replace("vs_", "vs ").replace("_", " "), value)
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fluidlite bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--full", action="store_true", help="the full profile instead of the quick one")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    rows, missing = [], set()
    for name in names:
        module = importlib.import_module(f"fluidlite.benchmarks.{name}")
        t0 = time.perf_counter()
        result = module.run(quick=not args.full)
        results = result if isinstance(result, list) else [result]
        for r in results:
            for label, ratio in _ratios(r).items():
                rows.append((r.get("name", name), label, ratio))
            missing.update(r.get("missing", []))
        print(f"  ran {name} in {time.perf_counter() - t0:.1f} s")
    width = max([len(r[0]) for r in rows] + [9])
    print(f"\n{'benchmark':<{width}}  {'fluidlite / peer':<28}  ratio")
    for bench, label, ratio in rows:
        print(f"{bench:<{width}}  {label:<28}  {ratio:6.2f}x")
    print("\nratio = fluidlite's time / the peer's time, measured in the same run (below 1: fluidlite is faster)")
    if missing:
        print(f"peers not installed, not measured: {', '.join(sorted(missing))} (pip install '.[bench]')")
    return 0
