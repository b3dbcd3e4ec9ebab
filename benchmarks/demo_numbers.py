"""The demo numbers quoted in docs/tutorial.md and docs/experiments.md, checked against fresh runs.

    python benchmarks/demo_numbers.py                # check both docs (seeds 0-7: about 8 demo runs)
    python benchmarks/demo_numbers.py --seeds 0      # only seed 0 (tests/test_demo_numbers.py does this)
    python benchmarks/demo_numbers.py --write        # rewrite the docs' tables from fresh runs

Each run is `fluidlite demo --seed S` at its defaults (`fluidlite.demo.run_all`). A quoted number
agrees when the fresh value, rounded to the digits the doc shows, is that number; "nan" and "inf"
must match exactly. Exits 1 and lists every disagreement when the docs have drifted.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys

try:
    from . import _harness
except ImportError:  # run as a script
    import _harness

_harness.early_imports(__name__)
from fluidlite import demo  # noqa: E402
from fluidlite.demo_plots import layer_summary  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs")
TUTORIAL, EXPERIMENTS = "tutorial.md", "experiments.md"
_MODES = "|".join(re.escape(m) for m in demo.MODES)
TUTORIAL_ROW = re.compile(rf"^    ({_MODES}) +(\S+) +(\S+) +(\S+) +(\d+) / (\d+) +([\d.]+)$", re.M)
LAYERS_BLOCK = re.compile(r"^    which layer exploded first.*\n(?:    .+\n)*", re.M)
SEED_ROW = re.compile(r"^\| (\d+) \| (\S+) \(max grad norm (\S+)\) \| (\S+) \| (\S+) \((\d+)\) \|$", re.M)


def measure(seed: int) -> dict:
    """mode -> `demo.summary` of the demo's three runs at its defaults with this seed (plus "seconds"),
    and "layers" -> the unclipped run's "which layer exploded first" text."""
    args = demo.parse_args(["--seed", str(seed), "--quiet"])
    runs = demo.run_all(args)
    out = {r["mode"]: dict(demo.summary(r), seconds=r["seconds"]) for r in runs}
    out["layers"] = layer_summary(runs[0]["layers"], runs[0]["loss"])
    return out


def layers_block(text: str) -> str | None:
    """The indented "which layer exploded first" block quoted in the tutorial, unindented."""
    m = LAYERS_BLOCK.search(text)
    return None if m is None else "\n".join(line[4:] for line in m.group(0).splitlines())


def agrees(quoted: str, value: float) -> bool:
    """True when `value` shown with the digits of `quoted` ("0.048", "9.7e20", "2854", "nan") is `quoted`."""
    if not math.isfinite(value) or quoted in ("nan", "inf", "-inf"):
        return str(value) == quoted
    mantissa = re.split(r"[eE]", quoted)[0].lstrip("-").replace(".", "").lstrip("0")
    digits = max(len(mantissa), 1)
    return math.isclose(float(f"{value:.{digits}g}"), float(quoted), rel_tol=1e-9)


def _short(v: float, digits: int) -> str:
    if not math.isfinite(v):
        return str(v)
    text = f"{v:.{digits}g}"
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", text)  # 9.7e+20 -> 9.7e20


def check_tutorial(text: str, results: dict) -> list:
    rows = TUTORIAL_ROW.findall(text)
    if {r[0] for r in rows} != set(demo.MODES):
        return [f"{TUTORIAL}: no table with a row per run ({', '.join(demo.MODES)})"]
    bad = []
    for mode, final, mse, norm, clipped, _steps, _sec in rows:
        got = results[mode]
        for key, quoted in (("final loss", final), ("held-out MSE", mse), ("max grad norm", norm),
                            ("clipped steps", clipped)):
            if not agrees(quoted, float(got[key])):
                bad.append(f"{TUTORIAL}: seed 0, {mode}, {key}: the doc says {quoted}, the demo gives {got[key]:.6g}")
    if "layers" in results and layers_block(text) != results["layers"]:
        bad.append(f"{TUTORIAL}: the quoted 'which layer exploded first' block differs from the demo's:\n"
                   + results["layers"])
    return bad


def check_experiments(text: str, results_by_seed: dict) -> list:
    rows = {int(r[0]): r[1:] for r in SEED_ROW.findall(text)}
    bad = []
    for seed, results in results_by_seed.items():
        if seed not in rows:
            bad.append(f"{EXPERIMENTS}: no row for seed {seed} in the table of the demo across seeds")
            continue
        wild, norm, tame_norm, tame_err, clipped = rows[seed]
        for what, quoted, value in (("no clipping, held-out MSE", wild, results["no clipping"]["held-out MSE"]),
                                    ("no clipping, max grad norm", norm, results["no clipping"]["max grad norm"]),
                                    ("global-norm clip, held-out MSE", tame_norm,
                                     results["global-norm clip"]["held-out MSE"]),
                                    ("error clip, held-out MSE", tame_err, results["error clip"]["held-out MSE"]),
                                    ("error clip, clipped steps", clipped, results["error clip"]["clipped steps"])):
            if not agrees(quoted, float(value)):
                bad.append(f"{EXPERIMENTS}: seed {seed}, {what}: the doc says {quoted}, the demo gives {value:.6g}")
    return bad


def tutorial_table(results: dict) -> str:
    runs = [{"mode": m, "loss": [results[m]["final loss"]] * 10, "mse": results[m]["held-out MSE"],
             "grad_norm": [results[m]["max grad norm"]], "seconds": results[m]["seconds"],
             "clipped": [True] * results[m]["clipped steps"] + [False] * (4000 - results[m]["clipped steps"])}
            for m in demo.MODES]
    return "\n".join("    " + line for line in demo.table(runs).splitlines())


def seed_row(seed: int, results: dict) -> str:
    wild, tame, err = (results[m] for m in demo.MODES)
    return (f"| {seed} | {_short(wild['held-out MSE'], 2)} (max grad norm {_short(wild['max grad norm'], 2)}) | "
            f"{_short(tame['held-out MSE'], 2)} | {_short(err['held-out MSE'], 2)} ({err['clipped steps']}) |")


def write(docs: str, results_by_seed: dict):
    if 0 in results_by_seed:
        path = os.path.join(docs, TUTORIAL)
        text = open(path, encoding="utf-8").read()
        head = re.search(r"^    run +final loss.*\n    -+\n", text, re.M)
        rows = list(TUTORIAL_ROW.finditer(text))
        new = tutorial_table(results_by_seed[0]) + "\n"
        text = text[:head.start()] + new + text[rows[-1].end() + 1:]
        m = LAYERS_BLOCK.search(text)
        if m is not None and "layers" in results_by_seed[0]:
            block = "".join("    " + line + "\n" for line in results_by_seed[0]["layers"].splitlines())
            text = text[:m.start()] + block + text[m.end():]
        open(path, "w", encoding="utf-8").write(text)
    path = os.path.join(docs, EXPERIMENTS)
    text = open(path, encoding="utf-8").read()
    for seed, results in results_by_seed.items():
        text = re.sub(rf"^\| {seed} \|.*\|$", seed_row(seed, results).replace("\\", r"\\"), text, count=1, flags=re.M)
    open(path, "w", encoding="utf-8").write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--write", action="store_true", help="rewrite the docs' tables instead of checking them")
    p.add_argument("--docs", default=DOCS)
    p.add_argument("--import-torch-first", action="store_true", help="import torch before fluidlite")
    args = p.parse_args(argv)
    results = {}
    for seed in args.seeds:
        results[seed] = measure(seed)
        print(f"seed {seed}: " + "; ".join(f"{m}: MSE {results[seed][m]['held-out MSE']:.4g}, max grad norm "
                                           f"{results[seed][m]['max grad norm']:.4g}, clipped "
                                           f"{results[seed][m]['clipped steps']}" for m in demo.MODES))
    if args.write:
        write(args.docs, results)
        print("docs rewritten; review the prose around the tables")
        return 0
    bad = check_experiments(open(os.path.join(args.docs, EXPERIMENTS), encoding="utf-8").read(), results)
    if 0 in results:
        bad += check_tutorial(open(os.path.join(args.docs, TUTORIAL), encoding="utf-8").read(), results[0])
    print("\n".join(bad) if bad else "the docs agree with the demo")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
