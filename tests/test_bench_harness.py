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


def test_every_benchmark_of_fluidlite_bench_times_its_peers_alone():
    from fluidlite import bench

    for name in set(bench.BENCHMARKS) - set(bench.NO_PEERS_ALONE):
        text = (ROOT / "benchmarks" / f"{name}.py").read_text()
        assert "_harness.run_from_args(" in text or (
            "_harness.add_arguments(parser)" in text and "args.peers_only" in text), name


def test_executor_overhead_peers_only_never_imports_fluidlite():
    pytest.importorskip("torch")
    r = _harness.run_script(str(ROOT / "benchmarks" / "executor_overhead.py"), ["--quick", "--peers-only"])
    assert r["fluidlite_imported"] is False and r["peers_ms"]["torch"] > 0


def test_target_table_reads_ratios_against_the_peer_alone_and_the_import_order_spread():
    from fluidlite import bench

    def mlp(mine, numpy):
        return [{"name": "mlp_step", "peers_ms": {"fluidlite": mine, "numpy": numpy}}]

    results = {"mlp_step": {"fluidlite first": mlp(8.0, 10.0), "torch first": mlp(9.0, 20.0)},
               "clip": {"fluidlite first": [{"name": "clip_by_value", "peers_ms": {
                   "fluidlite": 1.0, "fluidlite_persistable_out": 3.0, "torch_clamp_": 2.0}}]}}
    alone = {"mlp_step": {("mlp_step", "numpy"): (4.0, "1")}, "clip": {("clip_by_value", "torch_clamp_"): (1.5, "1")}}
    rows = {label: cells for label, _, cells in bench.target_rows(results, alone)}
    assert rows["MLP step / hand-written NumPy"] == {"fluidlite first": (2.0, 0.8), "torch first": (2.25, 0.45)}
    assert rows["clip by value, persistable out / torch clamp_"] == {"fluidlite first": (2.0, 1.5)}
    assert rows["mlp_step: fluidlite's time, torch first / fluidlite first"] == {"torch first": (9.0 / 8.0, (9.0 / 20.0) / (8.0 / 10.0))}
    ratios = bench.ratio_rows(results, alone)
    assert ratios[("mlp_step", "vs numpy alone (1 threads)")] == {"fluidlite first": 2.0, "torch first": 2.25}


def test_each_order_keeps_its_faster_process_per_result():
    from fluidlite import bench

    first = [{"name": "a", "peers_ms": {"fluidlite": 5.0}}, {"name": "b", "peers_ms": {"fluidlite": 1.0}}]
    second = [{"name": "a", "peers_ms": {"fluidlite": 4.0}}, {"name": "b", "peers_ms": {"fluidlite": 2.0}}]
    kept = {r["name"]: r["peers_ms"]["fluidlite"] for r in bench.faster_process([first, second])}
    assert kept == {"a": 4.0, "b": 1.0}


def test_repeated_orders_alternate_which_runs_first():
    from fluidlite import bench

    names = [order for order, _ in bench.order_sequence(3)]
    a, b = (order for order, _ in bench.ORDERS)
    assert names == [a, b, b, a, a, b]


def test_a_blas_variant_runs_the_script_again_with_its_environment_and_borrows_the_peers_alone(monkeypatch):
    from fluidlite import bench
    from fluidlite.benchmarks import _harness

    calls = []

    def run_script(path, args, env=None):
        calls.append(dict(env or {}))
        mine = {"onednn": 3.0, "mkl": 3.5}.get((env or {}).get("FLUIDLITE_BLAS"), 4.0)
        return {"name": "rnn_step", "peers_ms": {"fluidlite": mine, "torch": 5.0}}

    monkeypatch.setattr(_harness, "run_script", run_script)
    monkeypatch.setattr(_harness, "peers_at_best", lambda path, quick: {("rnn_step", "torch"): (2.0, "default")})
    monkeypatch.setattr(bench, "_variant_installed", lambda suffix: True)
    results, alone = bench.run_all(["rnn_step"], full=False, log=lambda m: None)
    assert sorted(results) == ["rnn_step", "rnn_step_mkl", "rnn_step_onednn"]
    assert [calls.count(e) for e in ({}, {"FLUIDLITE_BLAS": "onednn"}, {"FLUIDLITE_BLAS": "mkl"})] == [2, 2, 2]  # both orders
    assert alone["rnn_step_onednn"] == {("rnn_step_onednn", "torch"): (2.0, "default")}
    rows = {label: cells for label, _, cells in bench.target_rows(results, alone)}
    assert rows["LSTM step / torch nn.LSTM"]["fluidlite first"] == (2.0, 0.8)
    assert rows["LSTM step, FLUIDLITE_BLAS=onednn (opt-in) / torch nn.LSTM"]["torch first"] == (1.5, 0.6)
    assert rows["LSTM step, FLUIDLITE_BLAS=mkl (opt-in) / torch nn.LSTM"]["torch first"] == (1.75, 0.7)


def test_a_peer_alone_is_its_fastest_process_as_fluidlite_is_and_runs_between_them(monkeypatch):
    """With --repeat N, fluidlite keeps its fastest of N processes per order; the peer alone gets N
    processes per thread setting too, one of each after every round of both orders, and keeps the
    fastest."""
    from fluidlite import bench
    from fluidlite.benchmarks import _harness as harness

    times = iter([9.0, 12.0, 6.0, 11.0, 7.0, 10.0])  # default threads, one thread, default, one, ...
    calls = []

    def run_script(path, args, env=None):
        calls.append(args)
        if "--peers-only" in args:
            return {"name": "mlp_step", "peers_ms": {"numpy": next(times)}}
        return {"name": "mlp_step", "peers_ms": {"fluidlite": 5.0, "numpy": 8.0}}

    monkeypatch.setattr(harness, "run_script", run_script)
    monkeypatch.setattr(bench, "_variant_installed", lambda suffix: False)  # no FLUIDLITE_BLAS=mkl runs
    results, alone = bench.run_all(["mlp_step"], full=True, log=lambda m: None, repeat=3)
    assert ["--peers-only" in a for a in calls] == [False, False, True, True] * 3
    assert alone["mlp_step"] == {("mlp_step", "numpy"): (6.0, "default")}
