"""The benchmarks' import-order flag and isolated peer processes (benchmarks/_harness.py)."""
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import _harness  # noqa: E402


def test_every_benchmark_takes_import_torch_first():
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name.startswith("_") or path.name == "__init__.py":
            continue
        assert "early_imports(__name__)" in path.read_text(), f"{path.name} lacks --import-torch-first"


def test_executor_overhead_with_torch_imported_first():
    r = _harness.run_script(str(ROOT / "benchmarks" / "executor_overhead.py"), ["--quick", "--import-torch-first"])
    assert r["import_order"] == "torch first" and r["executor_us_per_op"] > 0


def test_peers_only_never_imports_fluidlite():
    pytest.importorskip("torch")
    r = _harness.run_script(str(ROOT / "benchmarks" / "rnn_step.py"), ["--quick", "--peers-only"])
    assert r["fluidlite_imported"] is False and r["peers_ms"]["torch"] > 0
