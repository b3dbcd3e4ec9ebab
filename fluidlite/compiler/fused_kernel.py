"""Generated Numba kernels for the fuse pass: the source of one fused chain, and its on-disk cache.

A chain is rendered as a loop over the elements of its output ("flat"), or over rows and columns
of its output viewed as (R, C) when an input repeats along one of them ("2d": a bias row [C] over
[R, C], a column [R], the row split read from that input's size at run time). Each op's per-element
function (`OpDef.elementwise`) is called on the inputs' elements and its result converted to the
op's output dtype, exactly what storing it into the unfused op's output array does; so fused and
unfused plans agree bit for bit. Sizes are read from the arguments, never baked into the source, so
one kernel serves every batch size and every chain with the same ops in the same pattern.

Numba's `cache=True` needs a real source file: the source is written once to
`<cache dir>/fused_<hash>.py` (hash of the source, Numba's version and the kernel modules it calls,
so an edited per-element function gives a new file), never rewritten (Numba's cache index keys on
the file's timestamp), and imported from there. A second process finds the file and Numba's
machine code next to it (or under NUMBA_CACHE_DIR) and does not compile. The cache dir is
FLUIDLITE_CACHE_DIR, else NUMBA_CACHE_DIR/fluidlite, else ~/.cache/fluidlite (XDG_CACHE_HOME).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numba
import numpy as np

from .. import _kernel_cache

FULL, ROW, COL, SCALAR = "full", "row", "col", "scalar"


@dataclass
class Chain:
    """A fused chain, symbolically. `args`: (kind, dtype name) per array argument; `params`: the type
    name of each run-time scalar (passed in one float64 array P, converted back to its type);
    `calls`: (fn, refs, outs, out dtypes) with refs ("arg", j) | ("tmp", k) | ("lit", v) | ("par", k),
    outs the temp ids the call defines (and for a tuple result, the index of each); `results`: temp
    ids returned; `donor`: the argument whose shape the results take."""

    args: list = field(default_factory=list)
    params: list = field(default_factory=list)
    calls: list = field(default_factory=list)
    results: list = field(default_factory=list)
    donor: int = 0
    ntmp: int = 0


def _elem(kind: str, j: int, flat: bool) -> str:
    if kind == SCALAR:
        return f"s{j}"
    if kind == FULL:
        return f"e{j}[i]" if flat else f"e{j}[r, c]"
    return f"e{j}[c]" if kind == ROW else f"e{j}[r]"


def render(chain: Chain) -> tuple[str, list]:
    """(source text defining `fused` and its prange twin `fused_parallel`, the per-element functions it
    imports as f0, f1, ...). Numba compiles each twin only when it is first called."""
    fns = list(dict.fromkeys(call[0] for call in chain.calls))
    flat = not any(kind in (ROW, COL) for kind, _ in chain.args)
    tdt = {}
    body = []
    for fn, refs, outs, dtypes in chain.calls:
        args = []
        for what, v in refs:
            if what == "arg":
                args.append(_elem(chain.args[v][0], v, flat))
            elif what == "tmp":
                args.append(f"t{v}")
            elif what == "par":
                args.append(f"p{v}")
            else:
                args.append(repr(v))
        call = f"f{fns.index(fn)}({', '.join(args)})"
        if len(outs) == 1 and outs[0][1] is None:
            # a new name per converted value: Numba would unify a reused name's types (float32 -> float64)
            body.append(f"t{outs[0][0]} = np.{dtypes[0]}({call})")
        else:  # a tuple result: take the wanted items
            body.append(f"u{outs[0][0]} = {call}")
            body += [f"t{t} = np.{dt}(u{outs[0][0]}[{k}])" for (t, k), dt in zip(outs, dtypes)]
        tdt.update({t: dt for (t, _), dt in zip(outs, dtypes)})
    head = [f"from {fn.py_func.__module__} import {fn.__name__} as f{k}" for k, fn in enumerate(fns)]
    text = ["import numpy as np", "from numba import njit, prange", *head]
    for parallel in (False, True):
        flags = ", parallel=True" if parallel else ""
        text += ["", "", f'@njit(cache=True, error_model="numpy"{flags})', *_function(chain, body, tdt, flat, parallel)]
    return "\n".join(text) + "\n", fns


def _function(chain: Chain, body: list, tdt: dict, flat: bool, parallel: bool) -> list:
    names = ", ".join(f"x{j}" for j in range(len(chain.args)))
    lines = [f"def fused{'_parallel' if parallel else ''}(P, {names}):"]
    for k, typ in enumerate(chain.params):
        lines.append(f"    p{k} = P[{k}]" if typ == "float64" else f"    p{k} = np.{typ}(P[{k}])")
    d = chain.donor
    if flat:
        lines.append(f"    n = x{d}.size")
    else:  # the row split, read from an input that repeats along rows (its size is C) or columns (R)
        j, kind = next((j, kind) for j, (kind, _) in enumerate(chain.args) if kind in (ROW, COL))
        if kind == ROW:
            lines += [f"    C = x{j}.size", f"    R = x{d}.size // C if C else 0"]
        else:
            lines += [f"    R = x{j}.size", f"    C = x{d}.size // R if R else 0"]
    for j, (kind, _) in enumerate(chain.args):
        if kind == SCALAR:
            lines.append(f"    s{j} = x{j}.reshape(-1)[0]")
        elif kind == FULL and not flat:
            lines.append(f"    e{j} = x{j}.reshape(R, C)")
        else:
            lines.append(f"    e{j} = x{j}.reshape(-1)")
    loop = "prange" if parallel else "range"
    shape = "n" if flat else "(R, C)"
    lines += [f"    o{k} = np.empty({shape}, np.{tdt[t]})" for k, t in enumerate(chain.results)]
    if flat:
        lines.append(f"    for i in {loop}(n):")
        ind = "        "
    else:
        lines += [f"    for r in {loop}(R):", "        for c in range(C):"]
        ind = "            "
    lines += [ind + b for b in body]
    at = "i" if flat else "r, c"
    lines += [f"{ind}o{k}[{at}] = t{t}" for k, t in enumerate(chain.results)]
    outs = ", ".join(f"o{k}.reshape(x{d}.shape)" for k in range(len(chain.results)))
    lines.append(f"    return {outs}")
    return lines


def cache_dir() -> str:
    """Where generated kernel files go (see the module docstring)."""
    root = os.environ.get("FLUIDLITE_CACHE_DIR")
    if not root:
        numba_dir = os.environ.get("NUMBA_CACHE_DIR")
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(numba_dir, "fluidlite") if numba_dir else os.path.join(base, "fluidlite")
    return os.path.join(root, "fused")


@functools.lru_cache(maxsize=None)
def _module_text(name: str) -> str:
    with open(sys.modules[name].__file__, encoding="utf-8") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _writable(path: str) -> str:
    """`path`, created if needed, or a private temporary directory when it cannot be written
    (the kernels then compile in every process)."""
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="fluidlite_fused_")


_loaded: dict = {}  # digest -> the imported kernel module (one per chain signature per process)


def load(text: str, fns: list):
    """The module of the generated source `text`, from the cache dir (written if new)."""
    key = text + numba.__version__ + "".join(_module_text(m) for m in sorted({f.py_func.__module__ for f in fns}))
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    mod = _loaded.get(digest)
    if mod is None:
        folder = _writable(cache_dir())
        _kernel_cache.covered_dirs.add(os.path.realpath(folder))  # it inlines kernels' functions
        path = os.path.join(folder, f"fused_{digest}.py")
        if not _has(path, text):
            _publish(folder, path, text)
        name = f"fluidlite_fused_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _loaded[digest] = mod
    return mod


def _has(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == text
    except OSError:
        return False


def _publish(folder: str, path: str, text: str) -> None:
    """Write `text` to `path` atomically; a file another process published first is kept as it is
    (replacing it would change its timestamp and invalidate Numba's cache of it)."""
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        if not _has(path, text):  # a damaged file: replace it
            os.replace(tmp, path)
            return
    except OSError:  # no hard links here
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def bind(mod, params: list, donor: int, parallel_min: int):
    """The step's callable: the serial or the prange kernel by the output's size at run time (so one
    callable serves every batch size), its run-time scalars bound as the float64 array P."""
    serial, parallel, P = mod.fused, mod.fused_parallel, np.array(params, np.float64)

    def run(*xs):
        return (parallel if xs[donor].size >= parallel_min else serial)(P, *xs)

    run.serial, run.parallel = serial, parallel
    return run
