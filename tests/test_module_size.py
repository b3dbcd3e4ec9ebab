"""Small modules, one concept each: no framework or kernel module grows past the line budget."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUDGET = 400


def test_modules_stay_within_the_line_budget():
    modules = sorted(ROOT.glob("fluidlite/**/*.py")) + sorted(ROOT.glob("kernels/*.py"))
    assert modules
    too_long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > BUDGET}
    assert not too_long, f"split these modules (budget {BUDGET} lines): {too_long}"
