"""The benchmarks' float32 matrix products in each BLAS fluidlite could call, and torch's.

    python benchmarks/gemm.py [--quick] [--import-torch-first] [--json]

- `fluidlite`: the kernels' products (kernels/blas.py: NumPy's OpenBLAS when it exports a 64-bit CBLAS,
  else SciPy's);
- `scipy`: `np.dot` inside a Numba kernel, which reaches SciPy's OpenBLAS (what fluidlite called before);
- `numpy`: `np.matmul`, NumPy's own OpenBLAS;
- `torch`: `torch.matmul` (MKL), when torch imports;
- `tall`: fluidlite's call for the same sums with the output transposed, C^T = B^T A^T from row-major
  copies of B^T and A^T (OpenBLAS's kernels here run a row-major product faster when its output is tall);
- `mkl`, `onednn`: `cblas_sgemm` of the `mkl` wheel and `dnnl_sgemm` of the `onednn-cpu-gomp` wheel, through
  ctypes, when they are in this environment (the `[mkl]` and `[onednn]` extras, for FLUIDLITE_BLAS=mkl / onednn).

Shapes (m, k, n; `nt`: a @ b.T, `tn`: a.T @ b) are those of the MLP, LSTM and Transformer steps'
forward and backward products; the LSTM's recurrent dX appears as `nt` (through W's transposed view)
and `nn` (through a row-major copy of W^T, what the batch_grad pass makes). Each library runs its
calls in a block of its own, after a pause: interleaving single calls would make three spinning
thread pools fight for the cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

if _harness.early_imports(__name__):
    import fluidlite  # noqa: F401  (the import order is what --import-torch-first varies)

CASES = (("nn", 128, 784, 1024), ("nt", 128, 1024, 784), ("tn", 784, 128, 1024), ("nn", 128, 1024, 1024),
         ("nt", 128, 1024, 1024), ("tn", 1024, 128, 1024),  # MLP 784-1024-1024, batch 128
         ("nn", 32, 256, 1024), ("nt", 32, 1024, 256), ("nn", 32, 1024, 256), ("nn", 1600, 256, 1024), ("tn", 256, 1600, 1024),  # LSTM
         ("nn", 2048, 128, 128), ("tn", 128, 2048, 128), ("nn", 2048, 128, 512), ("nt", 2048, 512, 128),
         ("tn", 128, 2048, 512))  # Transformer, 2048 tokens, d 128, ffn 512


def _operands(kind, m, k, n, rng):
    a = rng.random((k, m) if kind == "tn" else (m, k), dtype=np.float32)
    b = rng.random((n, k) if kind == "nt" else (k, n), dtype=np.float32)
    return a, b


def _numba_products():
    from numba import njit

    @njit(cache=True)
    def nn(a, b):
        return np.dot(a, b)

    @njit(cache=True)
    def nt(a, b):
        return np.dot(a, b.T)

    @njit(cache=True)
    def tn(a, b):
        return np.dot(a.T, b)

    return {"nn": nn, "nt": nt, "tn": tn}


def _prefix_library(pattern):
    """A shared library a wheel installed into this environment's lib/, or None."""
    import glob
    import os
    import sys

    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", pattern)))
    return found[0] if found else None


def _foreign_calls(kind, a, b):
    """name -> call of the same product through MKL's and oneDNN's sgemm, for those installed."""
    import ctypes as C

    m, n = (a.shape[1] if kind == "tn" else a.shape[0]), (b.shape[0] if kind == "nt" else b.shape[1])
    k = a.shape[0] if kind == "tn" else a.shape[1]
    ta, tb = kind == "tn", kind == "nt"
    out = np.empty((m, n), np.float32)
    calls = {}
    i64, f32, ptr = C.c_int64, C.c_float, C.c_void_p
    path = _prefix_library("libmkl_rt.so*")
    if path:
        mkl = C.CDLL(path)
        gemm = mkl.cblas_sgemm
        gemm.argtypes = [C.c_int] * 6 + [f32, ptr, C.c_int, ptr, C.c_int, f32, ptr, C.c_int]
        calls["mkl"] = lambda: (gemm(101, 112 if ta else 111, 112 if tb else 111, m, n, k, 1.0, a.ctypes.data,
                                     a.shape[1], b.ctypes.data, b.shape[1], 0.0, out.ctypes.data, n), out)[1]
    path = _prefix_library("libdnnl.so*")
    if path:
        dnnl = C.CDLL(path).dnnl_sgemm  # row-major
        dnnl.argtypes = [C.c_char, C.c_char, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64]
        calls["onednn"] = lambda: (dnnl(b"T" if ta else b"N", b"T" if tb else b"N", m, n, k, 1.0, a.ctypes.data,
                                        a.shape[1], b.ctypes.data, b.shape[1], 0.0, out.ctypes.data, n), out)[1]
    return calls


def _calls(kind, a, b):
    from fluidlite.kernels import basic as KB

    numba = _numba_products()[kind]
    ours = {"nn": KB.matmul2d, "nt": KB.matmul2d_nt, "tn": KB.matmul2d_tn}[kind]
    calls = {"fluidlite": lambda: ours(a, b), "scipy": lambda: numba(a, b),
             "numpy": {"nn": lambda: a @ b, "nt": lambda: a @ b.T, "tn": lambda: a.T @ b}[kind]}
    a_t = np.ascontiguousarray(a if kind == "tn" else a.T)  # A^T and B^T, row-major
    b_t = np.ascontiguousarray(b if kind == "nt" else b.T)
    calls["tall"] = lambda: KB.matmul2d(b_t, a_t).T
    calls.update(_foreign_calls(kind, a, b))
    try:
        import torch
    except ImportError:
        return calls
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    calls["torch"] = {"nn": lambda: ta @ tb, "nt": lambda: ta @ tb.T, "tn": lambda: ta.T @ tb}[kind]
    return calls


def run(quick: bool = False) -> dict:
    repeats = 5 if quick else 30
    rng = np.random.default_rng(0)
    rows = []
    for kind, m, k, n in CASES[:3] if quick else CASES:
        a, b = _operands(kind, m, k, n, rng)
        calls = _calls(kind, a, b)
        want = calls["numpy"]()
        us = {}
        for name, fn in calls.items():
            time.sleep(0.3)  # the previous library's pool goes idle
            got = np.asarray(fn())
            if not np.allclose(got, want, rtol=1e-4, atol=1e-3 * k):
                raise AssertionError(f"{name} {kind} {(m, k, n)}: wrong product")
            us[name] = 1e6 * _harness.best_s(fn, repeats)
        rows.append({"kind": kind, "m": m, "k": k, "n": n, "us": us})
    return {"name": "gemm", "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _harness.add_arguments(parser, peers_only=False)
    args = parser.parse_args(argv)
    r = run(args.quick)
    if args.json:
        return _harness.emit_json(r)
    from fluidlite.kernels import blas

    print(f"fastest call, us (GFLOP/s); fluidlite = kernels/blas.py ({blas.BACKEND}'s BLAS), "
          "scipy = np.dot in a Numba kernel (SciPy's OpenBLAS), numpy = np.matmul")
    for row in r["rows"]:
        flop = 2 * row["m"] * row["k"] * row["n"]
        cells = "  ".join(f"{name} {us:8.0f} ({flop / us / 1e3:4.0f})" for name, us in row["us"].items())
        print(f"  {row['kind']} {row['m']:5d}x{row['k']:5d}x{row['n']:5d}  {cells}")


if __name__ == "__main__":
    main()
