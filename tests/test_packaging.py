"""`pip install .` (not editable) ships every package of the source tree: pyproject lists them all."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fluidlite").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from pyproject.toml [tool.setuptools] packages: {found - listed}"
    for name, folder in config["package-dir"].items():
        assert (ROOT / folder / "__init__.py").exists(), f"{name} maps to {folder}, which is not a package"
