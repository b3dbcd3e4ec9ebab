"""examples/dp_digits.py runs small: private and plain models learn, and epsilon is reported."""
import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "dp_digits.py"


def test_dp_digits_runs_small(capsys):
    spec = importlib.util.spec_from_file_location("dp_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--epochs", "2"])
    assert result["plain"] > 0.5 and result["private"] > 0.3  # ten classes: chance is 0.1
    assert 0 < result["epsilon"] < 100 and result["steps"] == 2 * (1438 // 64)
    assert "epsilon=" in capsys.readouterr().out
