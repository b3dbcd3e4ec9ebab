"""docs/api.md stays true: every public layer is listed, and every Layers row marked yes/differs with
fluidlite spelling it the same names only layers that exist."""
import pathlib
import re

import fluidlite as fl

DOC = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
NOT_LAYERS = {"LayerHelper", "check_variable"}


def test_every_public_layer_is_in_the_table():
    public = [n for n in dir(fl.layers) if not n.startswith("_") and n not in NOT_LAYERS
              and callable(getattr(fl.layers, n)) and getattr(getattr(fl.layers, n), "__module__", "").startswith(
                  "fluidlite.layers")]
    missing = [n for n in public if f"`{n}" not in DOC]
    assert not missing, f"layers missing from docs/api.md: {missing}"


def test_rows_marked_yes_name_existing_layers():
    section = DOC.split("## Layers", 1)[1].split("\n## ", 1)[0]
    absent = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 5 or cells[3] not in ("yes", "differs") or cells[2] != "same":
            continue
        absent += [n for n in re.findall(r"`(\w+)", cells[1]) if not hasattr(fl.layers, n)]
    assert not absent, f"docs/api.md says these layers exist, but fluidlite.layers has none of them: {absent}"


def test_every_layer_docstring_names_its_paddle_counterpart():
    layers = [n for n in dir(fl.layers) if not n.startswith("_") and n not in NOT_LAYERS
              and callable(getattr(fl.layers, n)) and getattr(getattr(fl.layers, n), "__module__", "").startswith(
                  "fluidlite.layers")]
    missing = [n for n in layers if "Paddle Fluid: " not in (getattr(fl.layers, n).__doc__ or "")]
    assert not missing, f"layers whose docstring does not name their Paddle counterpart: {missing}"
    assert "`fluid.layers.conv2d`" in fl.layers.conv2d.__doc__
    assert "fluid.clip.GradientClipByGlobalNorm" in fl.layers.clip_by_global_norm.__doc__
