"""Allreduce time of a model's gradients over 2 MPI workers: one bucket vs one allreduce per gradient.

    python benchmarks/allreduce.py [--quick] [-n 2] [--import-torch-first]

Re-launches itself under the mpiexec of the `[dist]` extra. Times what the `allreduce` op's kernel
runs (`fluidlite.distributed.comm.reduce_bucket`: pack, Iallreduce in place with a deadline, unpack)
for two gradient sets:
- the MLP of benchmarks/mlp_step.py (784-1024-1024-10, float32): 6 gradients, 7.5 MB;
- 200 small gradients (64x64 float32, 16 KB each; 3.3 MB), where the per-call latency dominates;
each bucketed (one op, DistributedOptimizer's default 25 MB buckets) and unbucketed (bucket_size_mb=0),
plus mpi4py's blocking `Allreduce` on one preallocated buffer as the floor. Rounds alternate the
cases; the median over repeats is reported, and ratios come from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)

MLP = [(784, 1024), (1024,), (1024, 1024), (1024,), (1024, 10), (10,)]
SMALL = [(64, 64)] * 200


def _worker(quick):
    import fluidlite as fl
    from fluidlite.distributed import comm

    fl.distributed.init()
    from mpi4py import MPI

    rng = np.random.default_rng(fl.distributed.rank())
    repeats, rounds = (5, 2) if quick else (20, 3)
    results = {}
    for label, shapes in (("mlp", MLP), ("200_small", SMALL)):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        flat = np.concatenate([g.ravel() for g in grads])
        cases = {
            "bucketed": lambda: comm.reduce_bucket(grads, "mean", 1),
            "unbucketed": lambda: [comm.reduce_bucket([g], "mean", 1) for g in grads],
            "blocking_floor": lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM),
        }
        times = {k: [] for k in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                fn()  # warm
                for _ in range(repeats):
                    comm.barrier()
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        results[label] = {"grads": len(shapes), "mbytes": flat.nbytes / 2**20, "ms": ms,
                          "unbucketed_over_bucketed": ms["unbucketed"] / ms["bucketed"],
                          "bucketed_over_floor": ms["bucketed"] / ms["blocking_floor"]}
    if fl.distributed.rank() == 0:
        print(json.dumps(results))


def run(n=2, quick=False) -> dict:
    from fluidlite.distributed import launch

    cmd = launch.command(n, os.path.abspath(__file__), ["--worker"] + (["--quick"] if quick else []))
    proc = subprocess.run(cmd, env=launch.environment(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark workers failed:\n{proc.stdout}\n{proc.stderr}")
    return {"name": "allreduce", "workers": n, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--import-torch-first", action="store_true", help="import torch before fluidlite")
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.quick)
    r = run(args.n, args.quick)
    print(f"allreduce of gradients over {r['workers']} MPI workers on this machine (median ms per step)")
    for label in ("mlp", "200_small"):
        c = r[label]
        print(f"  {label:9s} {c['grads']:3d} grads {c['mbytes']:5.2f} MB: bucketed {c['ms']['bucketed']:7.2f}  "
              f"unbucketed {c['ms']['unbucketed']:7.2f}  blocking floor {c['ms']['blocking_floor']:7.2f}  "
              f"-> unbucketed/bucketed {c['unbucketed_over_bucketed']:.2f}x, "
              f"bucketed/floor {c['bucketed_over_floor']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
