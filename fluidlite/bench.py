"""`fluidlite bench`: the benchmarks as one table of ratios against the peers, and the speed targets.

Every benchmark runs in fresh processes, one per import order (fluidlite first, torch first), so the
table shows whether the order matters. With `--full` each order runs twice (`--repeat N`: N times), in
the order A B B A A B ... so that neither always goes first (a first process meets cold file caches),
and each order's fastest process counts: on a shared machine one process can run 1.3x slower than the
next for no reason of its own. The spread rows compare the orders twice: fluidlite's time, and its
ratio to the peer timed in the same process (noise that slows a whole process cancels there). Every
peer is also timed at its best: in processes of its own where fluidlite is never imported, run after
each round of both orders (as many as fluidlite gets per order, and spread over the same minutes), with
its default threads and with one thread, the fastest kept (`benchmarks/_harness.py`). The last table holds
each target of issue #13 against what was measured: `fluidlite bench --full` gives every figure the
README quotes in one go. Where the `onednn-cpu-gomp` wheel is installed, the LSTM step also runs with
FLUIDLITE_BLAS=onednn (its own rows, `rnn_step_onednn`); where the `mkl` wheel is, the MLP, LSTM and
Transformer steps also run with FLUIDLITE_BLAS=mkl (`mlp_step_mkl`, ...).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

BENCHMARKS = ("executor_overhead", "mlp_step", "clip", "rnn_step", "cnn_step", "transformer_step", "dp_step")
NO_PEERS_ALONE = ("dp_step",)  # its peers (a per-example loop, Opacus) are timed in its own run only
# benchmark -> ((suffix, environment), ...): the same script again with another BLAS, when that BLAS is installed
_MKL = ("mkl", {"FLUIDLITE_BLAS": "mkl"})
VARIANTS = {"rnn_step": (("onednn", {"FLUIDLITE_BLAS": "onednn"}), _MKL), "mlp_step": (_MKL,),
            "transformer_step": (_MKL,)}
ORDERS = (("fluidlite first", []), ("torch first", ["--import-torch-first"]))

# label, benchmark, result name, fluidlite's key in peers_ms, the peer's key (a prefix: the fastest match), goal
TARGETS = (
    ("MLP step / hand-written NumPy", "mlp_step", "mlp_step", "fluidlite", "numpy", 0.9),
    ("LSTM step / torch nn.LSTM", "rnn_step", "rnn_step", "fluidlite", "torch", 1.0),
    ("LSTM step, FLUIDLITE_BLAS=onednn (opt-in) / torch nn.LSTM", "rnn_step_onednn", "rnn_step_onednn", "fluidlite",
     "torch", 1.0),
    ("LSTM step, FLUIDLITE_BLAS=mkl (opt-in) / torch nn.LSTM", "rnn_step_mkl", "rnn_step_mkl", "fluidlite", "torch", 1.0),
    ("MLP step, FLUIDLITE_BLAS=mkl (opt-in) / hand-written NumPy", "mlp_step_mkl", "mlp_step_mkl", "fluidlite", "numpy",
     0.9),
    ("Transformer step / torch eager", "transformer_step", "transformer_step", "fluidlite", "torch", 1.0),
    ("Transformer step, FLUIDLITE_BLAS=mkl (opt-in) / torch eager", "transformer_step_mkl", "transformer_step_mkl",
     "fluidlite", "torch", 1.0),
    ("clip by value, persistable out / torch clamp_", "clip", "clip_by_value", "fluidlite_persistable_out",
     "torch_clamp_", 1.1),
    ("global-norm clip, persistable outs, 200 tensors / torch clip_grad_norm_", "clip",
     "clip_global_norm_transformer", "fluidlite_persistable_out", "torch_foreach", 1.1),
    ("global-norm clip, persistable outs, 20 large tensors / torch clip_grad_norm_", "clip",
     "clip_global_norm_large", "fluidlite_persistable_out", "torch_foreach", 1.1),
)
OVERHEAD_GOAL_US = 0.5
ORDER_SPREAD_GOAL = 1.10


def _ratios(result: dict) -> dict:
    """label -> ratio (fluidlite time / peer time; below 1 means fluidlite is faster)."""
    ratios = {key.replace("vs_", "vs ").replace("_", " "): v for key, v in result.get("ratios", {}).items()}
    for key, value in result.items():
        if key.startswith("ratio") and isinstance(value, (int, float)):
            ratios.setdefault(key.replace("ratio_", "").replace("vs_", "vs ").replace("_", " "), value)
    return ratios


def _peer(peers: dict, prefix: str):
    found = [ms for key, ms in peers.items() if key.startswith(prefix)]
    return min(found) if found else None


def _mine(result: dict):
    peers = result.get("peers_ms", {})
    return peers.get("fluidlite", result.get("fluidlite_ms", result.get("ms")))


def run_all(names, full: bool, log=print, repeat: int | None = None):
    """results[key][order] = [result, ...] and alone[key] = {(result name, peer): (ms, threads)}; key is a
    benchmark's name, or name_suffix for its VARIANTS run (result names suffixed alike)."""
    from .benchmarks import _harness

    quick = [] if full else ["--quick"]
    sequence = order_sequence(repeat or (2 if full else 1))
    results, alone = {}, {}
    for name in names:
        path = importlib.util.find_spec(f"fluidlite.benchmarks.{name}").origin
        jobs = [(name, {})]
        jobs += [(f"{name}_{suffix}", env) for suffix, env in VARIANTS.get(name, ()) if _variant_installed(suffix)]
        for key, env in jobs:
            try:  # one failing run loses its own rows, not the whole table
                runs, peers = {}, []
                for i, (order, flags) in enumerate(sequence):
                    t0 = time.perf_counter()
                    out = _harness.run_script(path, quick + flags, env)
                    runs.setdefault(order, []).append(_renamed(out if isinstance(out, list) else [out], name, key))
                    log(f"  ran {key} ({order}) in {time.perf_counter() - t0:.1f} s")
                    if key == name and name not in NO_PEERS_ALONE and (i + 1) % len(ORDERS) == 0:
                        # the peers alone after each round of both orders, as often as fluidlite runs per
                        # order and in between: a slow spell of the machine meets both sides
                        t0 = time.perf_counter()
                        peers.append(_harness.peers_at_best(path, not full))
                        log(f"  ran {name}'s peers alone in {time.perf_counter() - t0:.1f} s")
                results[key] = {order: faster_process(outs) for order, outs in runs.items()}
                if peers:
                    alone[name] = fastest_alone(peers)
                elif key != name and name not in NO_PEERS_ALONE:
                    # the peers do not import fluidlite: its BLAS setting changes nothing of theirs
                    alone[key] = {(n.replace(name, key, 1), p): v for (n, p), v in alone.get(name, {}).items()}
            except (RuntimeError, ValueError, OSError) as exc:
                log(f"  {key} FAILED: {str(exc)[-1500:]}")
    return results, alone


def _variant_installed(suffix: str) -> bool:
    from ._blas import mkl_library, onednn_library

    return {"onednn": onednn_library, "mkl": mkl_library}[suffix]() is not None


def _renamed(results: list, name: str, key: str) -> list:
    """A variant run's results, their names suffixed as its key is."""
    if key == name:
        return results
    return [dict(r, name=r.get("name", name).replace(name, key, 1)) for r in results]


def order_sequence(repeat: int) -> list:
    """Each import order `repeat` times, as A B B A A B ...: neither order always runs first."""
    return [pair for i in range(repeat) for pair in (ORDERS if i % 2 == 0 else ORDERS[::-1])]


def fastest_alone(parts: list) -> dict:
    """Of several `peers_at_best` results, per (result name, peer) the fastest."""
    best = {}
    for part in parts:
        for key, (ms, threads) in part.items():
            if key not in best or ms < best[key][0]:
                best[key] = (ms, threads)
    return best


def faster_process(outs: list) -> list:
    """Of several processes' results (each a list of result dicts), per result name the one where
    fluidlite was fastest."""
    best = {}
    for out in outs:
        for r in out:
            key = r.get("name")
            mine, kept = _mine(r), best.get(key)
            if kept is None or (mine is not None and _mine(kept) is not None and mine < _mine(kept)):
                best[key] = r
    return list(best.values())


def ratio_rows(results, alone) -> dict:
    """(benchmark, label) -> {order: ratio}: every ratio a benchmark reports, and fluidlite's time
    against each peer alone at its best."""
    rows = {}
    for name, by_order in results.items():
        for order, rs in by_order.items():
            for r in rs:
                rname = r.get("name", name)
                for label, ratio in _ratios(r).items():
                    rows.setdefault((rname, label), {})[order] = ratio
                mine = _mine(r)
                for (aname, peer), (ms, threads) in alone.get(name, {}).items():
                    if aname == rname and mine is not None and ms:
                        rows.setdefault((rname, f"vs {peer} alone ({threads} threads)"), {})[order] = mine / ms
    return rows


def target_rows(results, alone) -> list:
    """(target, goal, {order: (ratio vs the peer alone, ratio vs the peer in the same process)})."""
    rows = []
    for label, bench, rname, mine_key, peer_key, goal in TARGETS:
        cells = {}
        for order, rs in results.get(bench, {}).items():
            for r in rs:
                if r.get("name") != rname:
                    continue
                peers = r.get("peers_ms", {})
                mine, same = peers.get(mine_key), _peer(peers, peer_key)
                best_alone = _peer({p: ms for (n, p), (ms, _) in alone.get(bench, {}).items() if n == rname}, peer_key)
                if mine is not None:
                    cells[order] = (mine / best_alone if best_alone else None, mine / same if same else None)
        rows.append((label, f"<= {goal:.2f}x", cells))
    for order, rs in results.get("mlp_step", {}).items():
        if "floor_ratio_vs_numpy" in rs[0]:
            rows.append(("MLP floor: its matrix products alone (NumPy) / the NumPy step", "-",
                         {order: (rs[0]["floor_ratio_vs_numpy"], None)}))
    for bench, label in (("rnn_step", "LSTM"), ("rnn_step_onednn", "LSTM, oneDNN,"), ("rnn_step_mkl", "LSTM, MKL,"),
                         ("transformer_step", "Transformer"), ("transformer_step_mkl", "Transformer, MKL,")):
        for order, rs in results.get(bench, {}).items():
            if "floor_ratio_vs_torch" in rs[0]:
                rows.append((f"{label} floor: its matrix products alone (fluidlite's BLAS) / the torch step", "-",
                             {order: (rs[0]["floor_ratio_vs_torch"], None)}))
    for order, rs in results.get("executor_overhead", {}).items():
        r = rs[0]
        floors = (f"loop {r['loop_us_per_op']:.2f}, dispatchers {r['dispatcher_loop_us_per_op']:.2f}, "
                  f"entry points {r['entry_point_loop_us_per_op']:.2f} us/op")
        rows.append((f"executor overhead, us per op ({order}; floors: {floors})", f"<= {OVERHEAD_GOAL_US}",
                     {order: (r["executor_us_per_op"], None)}))
    for name, by_order in results.items():
        times = {o: _mine(rs[0]) for o, rs in by_order.items()}
        same = {o: _vs_same_process(rs[0]) for o, rs in by_order.items()}
        a, b = times.get(ORDERS[0][0]), times.get(ORDERS[1][0])
        if a and b:
            sa, sb = same.get(ORDERS[0][0]), same.get(ORDERS[1][0])
            rows.append((f"{name}: fluidlite's time, torch first / fluidlite first", f"<= {ORDER_SPREAD_GOAL:.2f}x",
                         {ORDERS[1][0]: (b / a, sb / sa if sa and sb else None)}))
    return rows


def _vs_same_process(result: dict):
    """fluidlite's time / the first peer's in the same process, or None without one."""
    peers = result.get("peers_ms", {})
    others = [ms for key, ms in peers.items() if not key.startswith("fluidlite") and ms]
    mine = _mine(result)
    return mine / others[0] if mine and others else None


def _fmt(cell):
    if cell is None:
        return "-"
    vs_alone, vs_same = cell
    text = "-" if vs_alone is None else f"{vs_alone:.2f}"
    return text + ("" if vs_same is None else f" ({vs_same:.2f})")


def print_tables(rows, targets, missing=()):
    width = max([len(b) for b, _ in rows] + [9])
    lwidth = max([len(lab) for _, lab in rows] + [16])
    print(f"\n{'benchmark':<{width}}  {'fluidlite / peer':<{lwidth}}  {'fluidlite first':>15}  {'torch first':>11}")
    for (bench, label), by_order in rows.items():
        cells = [f"{by_order[o]:.2f}x" if o in by_order else "-" for o, _ in ORDERS]
        print(f"{bench:<{width}}  {label:<{lwidth}}  {cells[0]:>15}  {cells[1]:>11}")
    print("\nratio = fluidlite's time / the peer's time (below 1: fluidlite is faster), each order in a fresh "
          "process;\n'alone' = the peer in processes of its own, fluidlite never imported: its fastest process (as many as\n"
          "fluidlite's per order) at its faster thread setting")
    twidth = max(len(t[0]) for t in targets) if targets else 6
    print(f"\n{'target (issue #13)':<{twidth}}  {'goal':>9}  {'fluidlite first':>15}  {'torch first':>13}")
    for label, goal, cells in targets:
        print(f"{label:<{twidth}}  {goal:>9}  {_fmt(cells.get(ORDERS[0][0])):>15}  {_fmt(cells.get(ORDERS[1][0])):>13}")
    print("target cells: ratio against the peer alone at its best (in parentheses: against the peer in the same process;\n"
          "in the spread rows: the ratio of those same-process ratios, torch first / fluidlite first)")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores (uptime) at the end")
    if missing:
        print(f"peers not installed, not measured: {', '.join(sorted(missing))} (pip install '.[bench]')")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fluidlite bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--full", action="store_true", help="the full profile instead of the quick one")
    parser.add_argument("--repeat", type=int, metavar="N", help="processes per import order (default: 2 with "
                        "--full, else 1); the fastest counts")
    parser.add_argument("--save", metavar="FILE", help="also write every result (both orders, peers alone) as JSON")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start; profile "
          f"{'full' if args.full else 'quick'}", flush=True)
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    results, alone = run_all(names, args.full, log=lambda m: print(m, flush=True), repeat=args.repeat)
    if args.save:
        import json

        with open(args.save, "w", encoding="utf-8") as f:
            json.dump({"results": results, "alone": {n: [[k[0], k[1], v[0], v[1]] for k, v in a.items()]
                                                     for n, a in alone.items()},
                       "load_average": os.getloadavg(), "full": args.full}, f, indent=1, default=float)
    missing = {m for by_order in results.values() for rs in by_order.values() for r in rs for m in r.get("missing", [])}
    print_tables(ratio_rows(results, alone), target_rows(results, alone), missing)
    return 0
