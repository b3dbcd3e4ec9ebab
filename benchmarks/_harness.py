"""What every benchmark shares, importing nothing of fluidlite: the import order, isolated peer processes.

- `--import-torch-first`: torch is imported before fluidlite (checked at the top of each benchmark
  script, before its `import fluidlite`), to show that the order changes nothing.
- `--peers-only`: time only the peers (NumPy, torch), in a process where fluidlite is never
  imported; `peers_at_best` runs that in a subprocess, once with the peer's default threads and once
  with one thread, and keeps the faster: a peer is compared at its best, never as fluidlite left it.
- `--json`: print the result as one JSON line (what `fluidlite bench` reads).

The timing loops live here too (`time_ms`, `best_s`), so every benchmark times the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def early_imports(name: str) -> bool:
    """Call at the top of a benchmark, before `import fluidlite`. Returns True when fluidlite is wanted
    (not --peers-only). Only a script run (`__main__`) reads the command line."""
    if name != "__main__":
        return True
    if "--import-torch-first" in sys.argv:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
    return "--peers-only" not in sys.argv


def add_arguments(parser, peers_only=True):
    parser.add_argument("--quick", action="store_true", help="a smaller, faster profile")
    parser.add_argument("--import-torch-first", action="store_true", help="import torch before fluidlite")
    if peers_only:
        parser.add_argument("--peers-only", action="store_true",
                            help="time only the peers; fluidlite is never imported")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")


def run_from_args(description: str, argv, run, run_peers):
    """The shared command line of a benchmark with peers: runs the peers alone (--peers-only) or fluidlite
    and its peers. Returns the result for the script to print, or None when it was printed here (--json,
    or the peers alone)."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.peers_only:
        r = run_peers(args.quick)
        if not args.json:
            for name, ms in r["peers_ms"].items():
                print(f"  {name:10s} {ms:8.2f} ms/step (median; alone, fluidlite not imported)")
            return None
    else:
        r = run(args.quick)
        r["import_order"] = "torch first" if args.import_torch_first else "fluidlite first"
    if args.json:
        return emit_json(r)
    return r


def emit_json(result) -> None:
    print(json.dumps(result, default=float))


def run_script(path: str, args: list, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run a benchmark script in a fresh process and return its JSON result."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    done = subprocess.run([sys.executable, path, "--json", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{os.path.basename(path)} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    text = done.stdout.strip()
    try:
        return json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):  # a script printing indented JSON: from its first line that opens one
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith(("{", "["))), None)
        if first is None:
            raise RuntimeError(f"{os.path.basename(path)} {' '.join(args)} printed no JSON:\n{text[-2000:]}") from None
        return json.loads("\n".join(lines[first:]))


def peers_at_best(path: str, quick: bool) -> dict:
    """(result name, peer) -> (ms, threads): each peer's time in processes of its own (fluidlite never
    imported), the faster of its default threads and one thread. A script may print one result or a
    list of them (one per case). `fluidlite bench` runs this as often as it runs each import order,
    and keeps each peer's fastest: a single torch-alone process that fell in a slow spell had made
    fluidlite's Transformer step look 1.2x faster."""
    extra = ["--quick"] if quick else []
    best = {}
    for label, env in (("default", {}), ("1", {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                               "MKL_NUM_THREADS": "1"})):
        results = run_script(path, ["--peers-only", *extra], env)
        for result in results if isinstance(results, list) else [results]:
            assert not result.get("fluidlite_imported"), "a peers-only run imported fluidlite"
            for peer, ms in result["peers_ms"].items():
                key = (result.get("name"), peer)
                if key not in best or ms < best[key][0]:
                    best[key] = (ms, label)
    return best


SETTLE_S = 0.2  # OpenBLAS's idle workers spin 2^28 cycles (about 0.1 s here) after a call


def time_ms(fns: dict, warmup: int, repeats: int, rounds: int = 3):
    """Median and min ms per call of each fn: each fn runs `repeats` calls in a row, over several rounds.

    Runs of calls, not single calls, are interleaved, each after a pause of SETTLE_S: torch and an
    OpenBLAS each bring a thread pool, and one pool's threads still spinning after a call slowed the
    other (fluidlite's MLP step right after NumPy's: 8.7-9.0 ms median against 5.1-5.4 min)."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            for _ in range(warmup):
                fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return ({k: 1e3 * statistics.median(v) for k, v in times.items()}, {k: 1e3 * min(v) for k, v in times.items()})


def best_s(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of fn, in seconds, after one warm-up call (which compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fluidlite_imported() -> bool:
    return "fluidlite" in sys.modules
