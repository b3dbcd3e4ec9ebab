"""The demo numbers quoted in docs/tutorial.md and docs/experiments.md come from the demo itself.

The slow test reruns `fluidlite demo` at its defaults (seed 0) and compares every quoted number with
what the demo prints; when it fails, the docs have drifted: `python benchmarks/demo_numbers.py --write`
rewrites the tables (then reread the prose around them). The other seeds are checked by the script.
"""
import os
import re

import pytest

from fluidlite.benchmarks import demo_numbers as dn

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs")


def _read(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def test_agrees_at_the_quoted_precision():
    assert dn.agrees("0.048", 0.04806) and not dn.agrees("0.048", 0.0486)
    assert dn.agrees("9.7e20", 9.668e20) and dn.agrees("9.668e+20", 9.668e20) and not dn.agrees("9.7e20", 9.6e20)
    assert dn.agrees("2854", 2854) and not dn.agrees("2854", 2853)
    assert dn.agrees("nan", float("nan")) and not dn.agrees("nan", 0.1) and not dn.agrees("0.1", float("nan"))
    assert dn._short(9.668e20, 2) == "9.7e20" and dn._short(0.04806, 2) == "0.048"


def _fake(seed_shift=0.0):
    return {"no clipping": {"final loss": float("nan"), "held-out MSE": float("nan"), "max grad norm": 9.668e20,
                            "clipped steps": 0, "seconds": 1.0},
            "global-norm clip": {"final loss": 0.05815, "held-out MSE": 0.04806 + seed_shift, "max grad norm": 21.68,
                                 "clipped steps": 2854, "seconds": 1.0},
            "error clip": {"final loss": 0.05138, "held-out MSE": 0.0388, "max grad norm": 6.099,
                           "clipped steps": 1945, "seconds": 1.0}}


def test_checks_find_drift_and_write_fixes_it(tmp_path):
    for name in (dn.TUTORIAL, dn.EXPERIMENTS):
        (tmp_path / name).write_text(_read(name), encoding="utf-8")
    drifted = {0: _fake(seed_shift=0.01)}
    dn.write(str(tmp_path), drifted)
    tutorial, experiments = (tmp_path / dn.TUTORIAL).read_text(), (tmp_path / dn.EXPERIMENTS).read_text()
    assert dn.check_tutorial(tutorial, drifted[0]) == [] and dn.check_experiments(experiments, drifted) == []
    assert "0.05806" in tutorial and "| 0 | nan (max grad norm 9.7e20) | 0.058 | 0.039 (1945) |" in experiments
    back = {0: _fake()}
    bad = dn.check_tutorial(tutorial, back[0]) + dn.check_experiments(experiments, back)
    assert len(bad) == 2 and all("global-norm clip, held-out MSE" in b for b in bad)
    assert tutorial.count("    run ") == _read(dn.TUTORIAL).count("    run ")  # one table, replaced in place
    quoted = dn.layers_block(tutorial)
    assert quoted.startswith("which layer exploded first") and "first to explode" in quoted
    assert dn.check_tutorial(tutorial, dict(drifted[0], layers=quoted)) == []
    step = re.search(r"\(step (\d+)\)", quoted)
    bumped = quoted.replace(step.group(0), f"(step {int(step.group(1)) + 1})")
    assert len(dn.check_tutorial(tutorial, dict(drifted[0], layers=bumped))) == 1


def test_the_docs_quote_what_the_demo_prints():
    results = dn.measure(0)
    bad = dn.check_tutorial(_read(dn.TUTORIAL), results) + dn.check_experiments(_read(dn.EXPERIMENTS), {0: results})
    assert not bad, "\n".join(bad) + "\n(python benchmarks/demo_numbers.py --write updates the docs)"
