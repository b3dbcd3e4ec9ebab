"""Every ```python block in README.md and docs/*.md runs (blocks of one file share a namespace, in order)."""
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_examples_run(path, tmp_path):
    blocks = BLOCK.findall(path.read_text())
    namespace = {"__name__": f"doc_{path.stem}"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples that write files write them here
    try:
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{path.name}, python block {i} failed: {type(exc).__name__}: {exc}\n{code}") from exc
    finally:
        os.chdir(cwd)


def test_every_doc_has_an_example():
    for path in DOCS:
        assert BLOCK.search(path.read_text()), f"{path.name} has no runnable ```python example"
