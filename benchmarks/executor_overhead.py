"""Executor overhead: a chain of small ops through the Executor vs a plain loop over the same kernels.

    python benchmarks/executor_overhead.py [--quick] [--check-nan-inf] [--import-torch-first] [--json]

The chain alternates `scale` and `elementwise_add` on a 16-element float32 vector, so kernel
time is tiny and what is measured is the per-op cost of the framework. torch eager runs the
same chain when installed (extra `bench`). The default Executor fuses the chain (compiler/fuse.py);
"no fuse" is one kernel call per op. `--check-nan-inf` also times an Executor with the NaN/Inf
check on (off, the plan is the same as before the check existed: compare executor/loop across versions).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)
import fluidlite as fl  # noqa: E402
from fluidlite import layers  # noqa: E402
from fluidlite.compiler import CompileOptions  # noqa: E402
from fluidlite.registry import InferContext, Meta, get_op_def  # noqa: E402


def _best(fn, repeats):
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
    size = 16
    main, out = build_chain(n_ops, size)
    xs = np.linspace(-1, 1, size).astype(np.float32)
    exe = fl.Executor()
    feed = {"x": xs}
    t_exe = _best(lambda: exe.run(main, feed=feed, fetch_list=[out]), repeats)
    # the fuse pass turns this chain into a few generated kernels: also time one op per kernel call
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
    result = {"name": "executor_overhead", "ops": n_ops, "executor_us_per_op": 1e6 * t_exe / n_ops,
              "loop_us_per_op": 1e6 * t_loop / n_ops, "ratio_vs_loop": t_exe / t_loop, "peers": {"loop": t_loop},
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
        tx = torch.from_numpy(xs)

        def eager():
            h = tx
            for _ in range(n_ops // 2):
                h = h * 0.5 + 0.1
                h = h + tx
            return h

        with torch.no_grad():
            t_torch = _best(eager, repeats)
        result["torch_us_per_op"] = 1e6 * t_torch / n_ops
        result["ratio_vs_torch"] = t_exe / t_torch
        result["peers"]["torch"] = t_torch
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _harness.add_arguments(parser, peers_only=False)
    parser.add_argument("--check-nan-inf", action="store_true", help="also time Executor(check_nan_inf=True)")
    args = parser.parse_args(argv)
    r = run(args.quick, args.check_nan_inf)
    r["import_order"] = "torch first" if args.import_torch_first else "fluidlite first"
    if args.json:
        return _harness.emit_json(r)
    print(f"chain of {r['ops']} ops on a 16-element float32 vector (best of several runs)")
    print(f"  executor        {r['executor_us_per_op']:7.3f} us/op")
    print(f"  executor, no fuse {r['unfused_us_per_op']:5.3f} us/op   (fuse off/loop = {r['unfused_ratio_vs_loop']:.2f}x)")
    print(f"  plain loop      {r['loop_us_per_op']:7.3f} us/op   executor/loop  = {r['ratio_vs_loop']:.2f}x")
    if "check_us_per_op" in r:
        print(f"  check_nan_inf   {r['check_us_per_op']:7.3f} us/op   on/off         = {r['check_ratio_vs_off']:.2f}x")
    if "torch_us_per_op" in r:
        print(f"  torch eager     {r['torch_us_per_op']:7.3f} us/op   executor/torch = {r['ratio_vs_torch']:.2f}x")
    else:
        print("  torch eager     not installed (pip install '.[bench]')")
    return r


if __name__ == "__main__":
    main()
