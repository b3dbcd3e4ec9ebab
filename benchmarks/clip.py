"""Gradient clipping speed: fluidlite's clip ops through the Executor vs NumPy and torch.

    python benchmarks/clip.py [--quick] [--import-torch-first] [--peers-only] [--json]

Global-norm clip (clip_norm below the norm, so every gradient is rescaled) on
  - "transformer": 200 tensors, 10.5M floats (a 12-layer d=256 transformer's parameter shapes)
  - "large": 20 tensors, 100.7M floats
clip by norm (the clip_by_norm op) on one tensor of 100M floats, and clip by value on 100M floats. Peers: NumPy per tensor (np.linalg.norm, *=), NumPy on one flat
buffer, torch.nn.utils.clip_grad_norm_ (foreach True/False) and clamp_ when torch imports.
Every implementation works in place on the same float32 gradients, views of one working buffer
(fluidlite_own_buffers: the scope's own arrays instead), restored from a pristine copy before each
timed call (outside the timed region, followed by a cache flush); each result is checked against a
float64 reference. The floor is the bytes moved (norm: read; scale: read + write) at the copy
bandwidth measured in the same run (np.copyto of a large buffer, read + write bytes).
`--peers-only` times only NumPy and torch, in a process where fluidlite is never imported.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from numba import njit, prange

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

fl = None
if _harness.early_imports(__name__):
    import fluidlite as fl

CLIP = 1.0


def transformer_shapes(layers=12, d=256, vocab=3200, positions=512):
    shapes = [(vocab, d), (positions, d)]
    for _ in range(layers):
        shapes += [(d, d), (d,)] * 4 + [(d,), (d,)]  # attention q, k, v, o; layer norm
        shapes += [(d, 4 * d), (4 * d,), (4 * d, d), (d,), (d,), (d,)]  # feed-forward; layer norm
    shapes += [(d,), (d,), (d, d), (d,), (d, 8), (8,)]  # final norm, pooler, classifier
    return shapes


CASES = {"transformer": transformer_shapes(), "large": [(1024, 4917)] * 20, "by_norm": [(100_000_000,)]}


def _flush(buf):
    buf.sum()  # read a buffer larger than the caches: evicts the data without leaving dirty lines to write back


def time_round_robin(impls, flush, repeats, seed=0):
    """name -> median ms over `repeats`; impls: name -> (fn, restore). One call of each per round, in
    a fresh random order, so drift and position effects touch every implementation alike."""
    names = list(impls)
    times = {name: [] for name in names}
    order = np.random.default_rng(seed)
    for _ in range(repeats):
        for name in order.permutation(names):
            fn, restore = impls[name]
            restore()
            flush()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


@njit(parallel=True, error_model="numpy")
def _parallel_copy(dst, src):
    for i in prange(src.size):
        dst[i] = src[i]


def copy_references(n):
    """Timed references for the copy bandwidth: np.copyto and a copy on every core, on n float32s."""
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    _parallel_copy(dst, src)
    skip = lambda: None  # noqa: E731
    return {"copy_np": (lambda: np.copyto(dst, src), skip), "copy_all_cores": (lambda: _parallel_copy(dst, src), skip)}


def copy_bandwidth(ms, n):
    """Bytes/s (read + write bytes) of the faster copy reference."""
    return 2 * 4 * n / (min(ms.pop("copy_np"), ms.pop("copy_all_cores")) / 1e3)


@njit(error_model="numpy", fastmath={"reassoc"})
def _sq_sum(x):
    acc = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        acc += v * v
    return acc


@njit(parallel=True, error_model="numpy")
def _flat_sq_sum(x):
    chunk = 1 << 18
    parts = np.zeros((x.size + chunk - 1) // chunk)
    for c in prange(parts.size):
        parts[c] = _sq_sum(x[c * chunk:(c + 1) * chunk])  # a call vectorizes, an inlined loop does not
    return parts.sum()


@njit(parallel=True, error_model="numpy")
def _flat_scale(x, s):
    for i in prange(x.size):
        x[i] *= s


def two_pass_reference(flat):
    """The global-norm clip hand-written on one contiguous buffer: a parallel read pass, then a parallel
    in-place scale pass. No two-pass clip of these bytes can beat it on this machine by much."""
    norm = math.sqrt(_flat_sq_sum(flat))
    _flat_scale(flat, np.float32(CLIP / max(norm, CLIP)))


class Work:
    """One flat float32 working buffer (tensors are views of it) and its pristine copy."""

    def __init__(self, shapes, rng):
        sizes = [math.prod(s) for s in shapes]
        self.pristine = rng.standard_normal(sum(sizes), dtype=np.float32) * np.float32(1e-3)
        self.flat = self.pristine.copy()
        offs = np.cumsum([0] + sizes)
        self.views = [self.flat[a:b].reshape(s) for a, b, s in zip(offs[:-1], offs[1:], shapes)]
        self.norm64 = math.sqrt(float(np.dot(self.pristine.astype(np.float64), self.pristine.astype(np.float64))))

    def restore(self):
        np.copyto(self.flat, self.pristine)


def fluidlite_global(shapes, work, shared=True, persistable_out=False):
    """A program clipping persistable gradients g0..gN in place (or, persistable_out, into persistable
    outputs o0..oN kept between runs); returns (run, restore, result)."""
    main = fl.Program()
    block = main.global_block()
    gs = [block.create_var(name=f"g{i}", shape=s, dtype="float32", persistable=True) for i, s in enumerate(shapes)]
    outs = gs
    if persistable_out:
        outs = [block.create_var(name=f"o{i}", shape=s, dtype="float32", persistable=True) for i, s in enumerate(shapes)]
    block.append_op("global_norm", {"X": gs}, {"Out": "norm"})
    block.append_op("scale_by_global_norm", {"X": gs, "GlobalNorm": "norm"}, {"Out": outs}, {"clip_norm": CLIP})
    run, restore, result = _fluidlite_runner(main, work, [g.name for g in gs], ["norm"], shared)
    if persistable_out:
        scope = run.scope
        return run, restore, lambda: np.concatenate([scope.get_array(o.name).reshape(-1) for o in outs])
    return run, restore, result


def fluidlite_by_norm(work):
    main = fl.Program()
    g = main.global_block().create_var(name="g", shape=work.flat.shape, dtype="float32", persistable=True)
    main.global_block().append_op("clip_by_norm", {"X": g}, {"Out": g}, {"max_norm": CLIP})
    return _fluidlite_runner(main, work, ["g"], [])


def fluidlite_value(work, persistable_out=False):
    """clip by value in place (Out = X = g), or into a persistable output kept between runs (Out = o)."""
    main = fl.Program()
    g = main.global_block().create_var(name="g", shape=work.flat.shape, dtype="float32", persistable=True)
    out = g
    if persistable_out:
        out = main.global_block().create_var(name="o", shape=work.flat.shape, dtype="float32", persistable=True)
    main.global_block().append_op("clip", {"X": g}, {"Out": out}, {"min": -CLIP * 1e-3, "max": CLIP * 1e-3})
    run, restore, result = _fluidlite_runner(main, work, ["g"], [])
    if persistable_out:
        scope = run.scope
        return run, restore, lambda: scope.get_array("o")
    return run, restore, result


def _fluidlite_runner(main, work, names, fetch, shared=True):
    """Run `main` on the gradients g0..gN. shared: they alias the working buffer the peers use (as torch's
    .grad do), so every implementation touches the same memory; else each is its own allocation."""
    scope, exe = fl.Scope(), fl.Executor()
    views = work.views if len(names) > 1 else [work.flat]
    for n, v in zip(names, views):
        scope.var(n).get_tensor().set(v)
        if shared:
            scope.set_array(n, v)  # Tensor.set copies; alias the buffer itself
    arrays = [scope.var(n).get_tensor().__array__(copy=False) for n in names]

    def restore():  # pristine values, in place (the clip ops work in place)
        off = 0
        for a in arrays:
            np.copyto(a.reshape(-1), work.pristine[off:off + a.size])
            off += a.size

    def result():
        return np.concatenate([a.reshape(-1) for a in arrays])

    def run():
        exe.run(main, fetch_list=fetch, scope=scope)

    run.scope = scope
    return run, restore, result


def numpy_per_tensor(views):
    norm = math.sqrt(sum(float(np.linalg.norm(g)) ** 2 for g in views))
    coef = np.float32(CLIP / max(norm, CLIP))
    for g in views:
        g *= coef


def numpy_flat(flat):
    norm = float(np.linalg.norm(flat))
    flat *= np.float32(CLIP / max(norm, CLIP))


def _check(name, got, expected, tol):
    """Max error relative to the largest value; float32 peers that accumulate in float32 get a looser tol."""
    err = float(np.max(np.abs(got - expected)) / (np.max(np.abs(expected)) + 1e-30))
    if not err < tol:
        raise AssertionError(f"{name}: max relative error {err:.2e} against the float64 reference")
    return err


def _checked_timings(case, impls, references, expected, tol, flush, repeats):
    """Check every implementation's result, then time them and the references in one round robin."""
    errors = {}
    for name, (fn, restore, result) in impls.items():
        restore()
        fn()
        errors[name] = _check(f"{case}/{name}", result(), expected, tol(name))
    timed = {name: (fn, restore) for name, (fn, restore, _) in impls.items()}
    return time_round_robin({**timed, **references}, flush, repeats), errors


def _made(makers):
    """name -> (run, restore, result) from name -> maker; fluidlite's are left out in a peers-only run."""
    return {name: make() for name, make in makers.items() if fl is not None or not name.startswith("fluidlite")}


def bench_global(case, shapes, repeats, flush, rng, torch, copies):
    """The global-norm clip of `shapes`; case "by_norm" (one tensor) clips with the clip_by_norm op."""
    work = Work(shapes, rng)
    coef = CLIP / max(work.norm64, CLIP)
    expected = (work.pristine.astype(np.float64) * coef).astype(np.float32)
    if case == "by_norm":
        impls = {"fluidlite": lambda: fluidlite_by_norm(work),
                 "numpy": lambda: (lambda: numpy_per_tensor(work.views), work.restore, lambda: work.flat)}
    else:
        impls = {"fluidlite": lambda: fluidlite_global(shapes, work),
                 "fluidlite_own_buffers": lambda: fluidlite_global(shapes, work, shared=False),
                 "fluidlite_persistable_out": lambda: fluidlite_global(shapes, work, persistable_out=True),
                 "numpy_per_tensor": lambda: (lambda: numpy_per_tensor(work.views), work.restore, lambda: work.flat),
                 "numpy_flat": lambda: (lambda: numpy_flat(work.flat), work.restore, lambda: work.flat)}
    impls = _made(impls)
    if torch is not None:
        params = []
        for v in work.views:
            p = torch.nn.Parameter(torch.empty(v.shape))
            p.grad = torch.from_numpy(v)  # shares the working buffer
            params.append(p)
        for foreach in (True, False)[case == "by_norm":]:
            impls[f"torch_foreach_{foreach}"] = (
                lambda f=foreach: torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=f), work.restore,
                lambda: work.flat)
    work.restore()
    two_pass_reference(work.flat)
    _check(f"{case}/two_pass_reference", work.flat, expected, 2e-6)
    references = {**copies, "two_pass": (lambda: two_pass_reference(work.flat), work.restore)}
    tol = lambda name: 2e-6 if name.startswith("fluidlite") else 5e-2  # noqa: E731  (float32 sums: torch is off 1% on 100M)
    ms, errors = _checked_timings(case, impls, references, expected, tol, flush, repeats)
    return work.flat.size, ms, errors


def stream_copy_reference(n):
    """Timed reference: X read and written to another buffer by streaming stores, nothing computed, four
    lines from each of PAGES pages in turn as the clip writes them (kernels/stream.py). The floor of any
    clip into a separate output (fluidlite_persistable_out) on this machine."""
    from fluidlite.kernels.stream import PAGE, PAGES, line_head, sfence, stream_line

    @njit(error_model="numpy")
    def stream_lines(dst, src):  # dst starts a 64-byte line and holds whole lines (65536 elements: whole turns)
        turn, page = PAGES * PAGE // 4, PAGE // 4
        a = 0
        while a + turn <= dst.size:
            for off in range(0, page, 64):
                for p in range(PAGES):
                    for k in range(a + p * page + off, a + p * page + off + 64, 16):
                        stream_line(dst, k, src, k)
            a += turn
        for k in range(a, dst.size, 16):
            stream_line(dst, k, src, k)
        sfence()

    @njit(parallel=True, error_model="numpy")
    def stream_copy(dst, src):
        h = line_head(dst)
        end = h + (dst.size - h) // 16 * 16
        dst[:h] = src[:h]
        dst[end:] = src[end:]
        for p in prange((end - h + 65535) // 65536):
            a = h + p * 65536
            b = min(end, a + 65536)
            stream_lines(dst[a:b], src[a:b])

    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    stream_copy(dst, src)
    assert np.array_equal(dst, src)
    return {"stream_copy": (lambda: stream_copy(dst, src), lambda: None)}


def bench_value(n, repeats, flush, rng, torch, copies):
    work = Work([(n,)], rng)
    lo, hi = -CLIP * 1e-3, CLIP * 1e-3
    expected = np.clip(work.pristine.astype(np.float64), lo, hi).astype(np.float32)
    impls = _made({"fluidlite": lambda: fluidlite_value(work), "fluidlite_persistable_out": lambda: fluidlite_value(work, True),
                   "numpy_clip": lambda: (lambda: np.clip(work.flat, lo, hi, out=work.flat), work.restore, lambda: work.flat)})
    if torch is not None:
        t = torch.from_numpy(work.flat)
        impls["torch_clamp_"] = (lambda: t.clamp_(lo, hi), work.restore, lambda: work.flat)
    references = {**copies, **(stream_copy_reference(n) if fl is not None else {})}
    ms, _ = _checked_timings("value", impls, references, expected, lambda name: 1e-7, flush, repeats)
    return ms


def run(quick: bool = False) -> list:
    repeats = 5 if quick else 15
    rng = np.random.default_rng(0)
    try:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # peers_at_best's one-thread run sets it
    except ImportError:
        torch = None
    flush_buf = np.ones(32 << 20, np.float32)  # 128 MB
    flush = lambda: _flush(flush_buf)  # noqa: E731
    copy_n = 100_000_000  # smaller copies measure slower on the development machine
    copies = copy_references(copy_n)
    results = []
    cases = dict(CASES)
    if quick:  # the large cases at a quarter of their size
        cases["large"] = [(1024, 4917)] * 5
        cases["by_norm"] = [(25_000_000,)]
    for case, shapes in cases.items():
        n, ms, errors = bench_global(case, shapes, repeats, flush, rng, torch, copies)
        bw = copy_bandwidth(ms, copy_n)
        two_pass = ms.pop("two_pass")
        results.append(_result("clip_by_norm" if case == "by_norm" else f"clip_global_norm_{case}", ms, 1e3 * 3 * 4 * n / bw, n, len(shapes), bw))
        results[-1]["two_pass_reference_ms"] = two_pass
        results[-1]["max_rel_error_vs_float64"] = errors
        if fl is not None:
            results[-1]["ratios"]["vs_two_pass_reference"] = ms["fluidlite"] / two_pass
    n_value = 25_000_000 if quick else 100_000_000
    ms = bench_value(n_value, repeats, flush, rng, torch, copies)
    bw = copy_bandwidth(ms, copy_n)
    stream_copy = ms.pop("stream_copy", None)
    results.append(_result("clip_by_value", ms, 1e3 * 2 * 4 * n_value / bw, n_value, 1, bw))
    if stream_copy is not None:
        results[-1]["stream_copy_reference_ms"] = stream_copy
        results[-1]["ratios"]["persistable_out_vs_stream_copy"] = ms["fluidlite_persistable_out"] / stream_copy
    return results


def _result(name, ms, floor_ms, n, tensors, bw):
    if fl is None:  # peers only
        return {"name": name, "peers_ms": ms, "floor_ms": floor_ms, "floats": n, "tensors": tensors,
                "copy_bandwidth_GBps": bw / 1e9, "fluidlite_imported": _harness.fluidlite_imported()}
    mine = ms["fluidlite"]
    torch_ms = [v for k, v in ms.items() if k.startswith("torch")]
    persist = {"persistable_out_vs_torch_best": ms["fluidlite_persistable_out"] / min(torch_ms)} if (
        "fluidlite_persistable_out" in ms and torch_ms) else {}
    out = {"name": name, "ms": mine, "peers_ms": ms, "floor_ms": floor_ms, "floats": n, "tensors": tensors,
           "copy_bandwidth_GBps": bw / 1e9, "fluidlite_GBps_effective": (floor_ms / mine) * bw / 1e9,
           "ratios": {f"vs_{k}": mine / v for k, v in ms.items() if k != "fluidlite"}}
    out["ratios"]["vs_bandwidth_floor"] = mine / floor_ms
    out["ratios"].update(persist)
    if not any(k.startswith("torch") for k in ms):
        out["missing"] = ["torch"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _harness.add_arguments(parser)
    args = parser.parse_args(argv)
    results = run(args.quick)
    if args.json:
        return _harness.emit_json(results)
    print("import order:", "torch first" if args.import_torch_first else "fluidlite first")
    if args.peers_only:
        for r in results:
            print(f"{r['name']} (peers alone, fluidlite not imported): "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in r["peers_ms"].items()))
        return results
    for r in results:
        print(f"{r['name']}: {r['tensors']} tensor(s), {r['floats'] / 1e6:.1f}M float32; copy bandwidth "
              f"{r['copy_bandwidth_GBps']:.1f} GB/s; floor (bytes moved at copy bandwidth) {r['floor_ms']:.2f} ms")
        for name, ms in r["peers_ms"].items():
            print(f"  {name:22s} {ms:9.2f} ms  {r['floor_ms'] / ms * r['copy_bandwidth_GBps']:6.1f} GB/s effective"
                  + ("" if name == "fluidlite" else f"   fluidlite / {name}: {r['ms'] / ms:.2f}x"))
        print(f"  fluidlite / floor: {r['ms'] / r['floor_ms']:.2f}x")
        if "two_pass_reference_ms" in r:
            print(f"  fluidlite / two-pass reference (both passes hand-written on one flat buffer, "
                  f"{r['two_pass_reference_ms']:.2f} ms): {r['ratios']['vs_two_pass_reference']:.2f}x")
        if "stream_copy_reference_ms" in r:
            torch_ms = [v for k, v in r["peers_ms"].items() if k.startswith("torch")]
            print(f"  streaming copy into a separate output, nothing computed (the floor of a persistable output): "
                  f"{r['stream_copy_reference_ms']:.2f} ms; fluidlite_persistable_out / it: "
                  f"{r['ratios']['persistable_out_vs_stream_copy']:.2f}x"
                  + (f"; it / torch: {r['stream_copy_reference_ms'] / min(torch_ms):.2f}x" if torch_ms else ""))
        if "persistable_out_vs_torch_best" in r["ratios"]:
            print(f"  fluidlite_persistable_out / best torch: {r['ratios']['persistable_out_vs_torch_best']:.2f}x")
        if "max_rel_error_vs_float64" in r:
            print("  max error vs float64: " + ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_error_vs_float64"].items()))
        if r.get("missing"):
            print(f"  (not installed: {', '.join(r['missing'])})")


if __name__ == "__main__":
    main()
