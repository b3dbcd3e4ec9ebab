"""Static checks on kernels/: rules that keep Numba kernels correct."""
import ast
import pathlib

KERNELS = pathlib.Path(__file__).resolve().parent.parent / "kernels"


def _is_parallel(decorator) -> bool:
    return isinstance(decorator, ast.Call) and any(
        k.arg == "parallel" and isinstance(k.value, ast.Constant) and k.value.value for k in decorator.keywords)


def _parallel_tuple_unpacks(tree):
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and any(_is_parallel(d) for d in fn.decorator_list):
            for node in ast.walk(fn):
                if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
                        and isinstance(node.value, ast.Tuple)
                        and any(isinstance(e, ast.Call) and getattr(e.func, "attr", "") == "reshape"
                                for e in node.value.elts)):
                    yield fn.name, node.lineno


def test_no_tuple_unpacked_views_in_parallel_kernels():
    # Numba 0.68 with parallel=True silently miscompiles `a, b, c, d = x.reshape(-1), ...`
    # (wrong results, no error); one view per statement compiles correctly.
    bad = [f"{path.name}:{line} in {name}" for path in sorted(KERNELS.glob("*.py"))
           for name, line in _parallel_tuple_unpacks(ast.parse(path.read_text()))]
    assert not bad, "unpack reshape views one per line in parallel kernels: " + ", ".join(bad)


def test_the_lint_can_fail():
    src = "@njit(cache=True, parallel=True)\ndef f(x, y):\n    a, b = x.reshape(-1), y.reshape(-1)\n"
    assert list(_parallel_tuple_unpacks(ast.parse(src))) == [("f", 3)]


def test_every_kernel_uses_numpy_error_semantics():
    # Numba's default error model raises ZeroDivisionError on x / 0 (and checks every division,
    # which stops vectorization); kernels follow NumPy: x / 0 is inf or nan.
    bad = []
    for path in sorted(KERNELS.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef):
                for d in fn.decorator_list:
                    if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "njit" and not any(
                            k.arg == "error_model" and getattr(k.value, "value", None) == "numpy" for k in d.keywords):
                        bad.append(f"{path.name}:{fn.name}")
    assert not bad, f"add error_model='numpy' to: {bad}"
