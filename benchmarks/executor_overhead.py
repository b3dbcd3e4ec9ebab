"""Executor overhead: a chain of small ops through the Executor vs plain loops over the same kernels.

    python benchmarks/executor_overhead.py [--quick] [--check-nan-inf] [--import-torch-first] [--peers-only] [--json]

The chain alternates `scale` and `elementwise_add` on a 16-element float32 vector, so kernel
time is tiny and what is measured is the per-op cost of the framework. Three floors, all plain
Python loops over the same compiled kernels, timed in the same run:
  - "loop": the kernels as the plan binds them (the ops' lowering closures);
  - "dispatcher loop": the Numba dispatchers called directly with their arguments (no closure, no
    reshape): Numba's type dispatch (~0.6 us a call on the development machine) is the floor here;
  - "entry-point loop": each dispatcher's compiled overload called through its `entry_point`
    (`dispatcher.overloads[sig].entry_point`), skipping the type dispatch: what a plan binding
    entry points could reach at best (unchecked: a wrong layout would not be caught).
torch eager runs the same chain when installed (extra `bench`); `--peers-only` times it alone, in a
process that never imports fluidlite. `--check-nan-inf` also times an Executor with the NaN/Inf check on.
"""
from __future__ import annotations

import argparse

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

if _harness.early_imports(__name__):
    import fluidlite as fl
    from fluidlite import layers
    from fluidlite.registry import InferContext, Meta, get_op_def

_best = _harness.best_s
SIZE = 16


def build_chain(n_ops, size=16):
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data(name="x", shape=[size], dtype="float32", append_batch_size=False)
        h = x
        for i in range(n_ops // 2):
            s = layers.scale(h, scale=0.5, bias=0.1)
            h = layers.elementwise_add(s, x)
    return main, h


def run(quick: bool = False, check_nan_inf: bool = False) -> dict:
    n_ops = 200 if quick else 1000
    repeats = 5 if quick else 30
    size = SIZE
    main, out = build_chain(n_ops, size)
    xs = np.linspace(-1, 1, size).astype(np.float32)
    exe = fl.Executor()
    feed = {"x": xs}
    t_exe = _best(lambda: exe.run(main, feed=feed, fetch_list=[out]), repeats)
    # the default Executor fuses this chain into a few generated kernels (compiler/fuse.py); "no fuse":
    # one kernel call per op
    from fluidlite.compiler import CompileOptions

    unfused = fl.Executor(compile_options=CompileOptions(disabled={"fuse"}))
    t_unfused = _best(lambda: unfused.run(main, feed=feed, fetch_list=[out]), repeats)

    # the same kernels, bound the same way, called from a plain Python loop
    meta = Meta("x", (size,), np.dtype(np.float32))
    kernels = []
    for op in main.global_block().ops:
        opdef = get_op_def(op.type)
        ins = {slot: [meta] * len(names) for slot, names in op.inputs.items()}
        kernels.append((op.type, opdef.bind(InferContext(opdef, ins, op.attrs, op.outputs))))

    def plain():
        h = xs
        for kind, k in kernels:
            h = k(h) if kind == "scale" else k(h, xs)
        return h

    t_loop = _best(plain, repeats)
    got = exe.run(main, feed=feed, fetch_list=[out])[0]
    np.testing.assert_allclose(got, plain(), rtol=1e-6)
    direct, entry = _direct_loops(xs, n_ops)
    np.testing.assert_allclose(direct(), got, rtol=1e-6)
    np.testing.assert_allclose(entry(), got, rtol=1e-6)
    t_direct, t_entry = _best(direct, repeats), _best(entry, repeats)
    us = {"fluidlite": 1e6 * t_exe / n_ops, "loop": 1e6 * t_loop / n_ops, "dispatcher_loop": 1e6 * t_direct / n_ops,
          "entry_point_loop": 1e6 * t_entry / n_ops}
    result = {"name": "executor_overhead", "ops": n_ops, "executor_us_per_op": us["fluidlite"],
              "loop_us_per_op": us["loop"], "dispatcher_loop_us_per_op": us["dispatcher_loop"],
              "entry_point_loop_us_per_op": us["entry_point_loop"], "ratio_vs_loop": t_exe / t_loop,
              "ratio_vs_dispatcher_loop": t_exe / t_direct, "ratio_vs_entry_point_loop": t_exe / t_entry,
              "peers_ms": dict(us),  # per op, in us (the ratios are what the table reads)
              "unfused_us_per_op": 1e6 * t_unfused / n_ops, "unfused_ratio_vs_loop": t_unfused / t_loop}
    if check_nan_inf:
        checked = fl.Executor(check_nan_inf=True)
        t_check = _best(lambda: checked.run(main, feed=feed, fetch_list=[out]), repeats)
        result["check_us_per_op"] = 1e6 * t_check / n_ops
        result["check_ratio_vs_off"] = t_check / t_exe
    try:
        import torch
    except ImportError:
        result["missing"] = ["torch"]
    else:
        t_torch = _torch_chain(torch, xs, n_ops, repeats)
        result["torch_us_per_op"] = 1e6 * t_torch / n_ops
        result["ratio_vs_torch"] = t_exe / t_torch
        result["peers_ms"]["torch"] = result["torch_us_per_op"]
    return result


def _direct_loops(xs, n_ops):
    """The chain as a plain loop calling the Numba dispatchers directly, and calling their compiled
    overloads' entry points (no type dispatch)."""
    from fluidlite.kernels import basic as KB
    from fluidlite.kernels import elementwise as KE
    from fluidlite.ops.elementwise import opcode

    add = opcode("elementwise_add")
    scale, same = KB.scale, KE.same

    def direct():
        h = xs
        for _ in range(n_ops // 2):
            h = same(scale(h, 0.5, 0.1), xs, add)
        return h

    direct()
    sig = scale.typeof_pyval(xs), scale.typeof_pyval(0.5), scale.typeof_pyval(0.1)
    es = scale.overloads[sig].entry_point
    ee = same.overloads[(sig[0], sig[0], same.typeof_pyval(add))].entry_point

    def entry():
        h = xs
        for _ in range(n_ops // 2):
            h = ee(es(h, 0.5, 0.1), xs, add)
        return h

    return direct, entry


def _torch_chain(torch, xs, n_ops, repeats):
    tx = torch.from_numpy(xs)

    def eager():
        h = tx
        for _ in range(n_ops // 2):
            h = h * 0.5 + 0.1
            h = h + tx
        return h

    with torch.no_grad():
        return _best(eager, repeats)


def run_peers(quick: bool = False) -> dict:
    """torch eager's chain alone, in a process where fluidlite is never imported."""
    n_ops, repeats = (200, 5) if quick else (1000, 30)
    result = {"name": "executor_overhead", "peers_ms": {}, "fluidlite_imported": _harness.fluidlite_imported()}
    try:
        import torch
    except ImportError:
        return result
    xs = np.linspace(-1, 1, SIZE).astype(np.float32)
    result["peers_ms"]["torch"] = 1e6 * _torch_chain(torch, xs, n_ops, repeats) / n_ops  # us per op
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _harness.add_arguments(parser)
    parser.add_argument("--check-nan-inf", action="store_true", help="also time Executor(check_nan_inf=True)")
    args = parser.parse_args(argv)
    if args.peers_only:
        r = run_peers(args.quick)
        if args.json:
            return _harness.emit_json(r)
        print(f"  torch eager alone (fluidlite not imported): {r['peers_ms'].get('torch', float('nan')):.3f} us/op")
        return r
    r = run(args.quick, args.check_nan_inf)
    r["import_order"] = "torch first" if args.import_torch_first else "fluidlite first"
    if args.json:
        return _harness.emit_json(r)
    print(f"chain of {r['ops']} ops on a 16-element float32 vector (best of several runs)")
    print(f"  executor        {r['executor_us_per_op']:7.3f} us/op")
    print(f"  executor no fuse{r['unfused_us_per_op']:7.3f} us/op   (that/loop     = {r['unfused_ratio_vs_loop']:.2f}x)")
    print(f"  plain loop      {r['loop_us_per_op']:7.3f} us/op   executor/loop  = {r['ratio_vs_loop']:.2f}x")
    print(f"  dispatcher loop {r['dispatcher_loop_us_per_op']:7.3f} us/op   executor/that  = "
          f"{r['ratio_vs_dispatcher_loop']:.2f}x  (Numba dispatchers called directly)")
    print(f"  entry-point loop{r['entry_point_loop_us_per_op']:7.3f} us/op   executor/that  = "
          f"{r['ratio_vs_entry_point_loop']:.2f}x  (compiled overloads, no type dispatch)")
    if "check_us_per_op" in r:
        print(f"  check_nan_inf   {r['check_us_per_op']:7.3f} us/op   on/off         = {r['check_ratio_vs_off']:.2f}x")
    if "torch_us_per_op" in r:
        print(f"  torch eager     {r['torch_us_per_op']:7.3f} us/op   executor/torch = {r['ratio_vs_torch']:.2f}x")
    else:
        print("  torch eager     not installed (pip install '.[bench]')")
    return r


if __name__ == "__main__":
    main()
