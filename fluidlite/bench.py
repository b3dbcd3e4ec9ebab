"""`fluidlite bench`: the benchmarks in a quick profile, as one table of ratios against the peers.

Every benchmark runs in two fresh processes, one per import order (fluidlite first, torch first),
so the table shows whether the order matters. The MLP and LSTM peers are also timed at their best:
in processes of their own where fluidlite is never imported, with their default threads and with
one thread, the faster kept (`benchmarks/_harness.py`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

BENCHMARKS = ("executor_overhead", "mlp_step", "clip", "rnn_step", "cnn_step", "transformer_step", "dp_step")
PEERS_ALONE = ("mlp_step", "rnn_step")  # benchmarks with a --peers-only mode
ORDERS = (("fluidlite first", []), ("torch first", ["--import-torch-first"]))


def _ratios(result: dict) -> dict:
    """label -> ratio (fluidlite time / peer time; below 1 means fluidlite is faster)."""
    ratios = {key.replace("vs_", "vs ").replace("_", " "): v for key, v in result.get("ratios", {}).items()}
    for key, value in result.items():
        if key.startswith("ratio") and isinstance(value, (int, float)):
            ratios.setdefault(key.replace("ratio_", "").replace("vs_", "vs ").replace("_", " "), value)
    return ratios


def _mine_ms(result: dict):
    return result.get("fluidlite_ms", result.get("ms"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fluidlite bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--full", action="store_true", help="the full profile instead of the quick one")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    from .benchmarks import _harness

    quick = [] if args.full else ["--quick"]
    rows, missing = {}, set()  # (bench, label) -> {order: ratio}
    for name in names:
        path = importlib.util.find_spec(f"fluidlite.benchmarks.{name}").origin
        mine = {}
        for order, flags in ORDERS:
            t0 = time.perf_counter()
            result = _harness.run_script(path, quick + flags)
            results = result if isinstance(result, list) else [result]
            for r in results:
                for label, ratio in _ratios(r).items():
                    rows.setdefault((r.get("name", name), label), {})[order] = ratio
                missing.update(r.get("missing", []))
            mine[order] = _mine_ms(results[0])
            print(f"  ran {name} ({order}) in {time.perf_counter() - t0:.1f} s", flush=True)
        if name in PEERS_ALONE:  # once per benchmark: the peers' processes never see fluidlite
            for peer, (ms, threads) in _harness.peers_at_best(path, not args.full).items():
                label = f"vs {peer} alone ({threads} threads)"
                rows[(name, label)] = {order: t / ms for order, t in mine.items() if t is not None}
    width = max([len(b) for b, _ in rows] + [9])
    lwidth = max([len(lab) for _, lab in rows] + [16])
    print(f"\n{'benchmark':<{width}}  {'fluidlite / peer':<{lwidth}}  {'fluidlite first':>15}  {'torch first':>11}")
    for (bench, label), by_order in rows.items():
        cells = [f"{by_order[o]:.2f}x" if o in by_order else "-" for o, _ in ORDERS]
        print(f"{bench:<{width}}  {label:<{lwidth}}  {cells[0]:>15}  {cells[1]:>11}")
    print("\nratio = fluidlite's time / the peer's time (below 1: fluidlite is faster), each order in a fresh "
          "process;\n'alone' = the peer in a process of its own, fluidlite never imported, at its faster thread setting"
          f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if missing:
        print(f"peers not installed, not measured: {', '.join(sorted(missing))} (pip install '.[bench]')")
    return 0
