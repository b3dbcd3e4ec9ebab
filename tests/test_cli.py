import importlib.util
import os
import shutil
import subprocess
import sys
import types

import pytest

import fluidlite as fl
from fluidlite import cli, io, layers

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")


@pytest.fixture
def program_json(tmp_path):
    x = layers.data(name="x", shape=[4])
    h = x
    for _ in range(3):
        h = layers.fc(h, size=3, act="tanh", bias_attr=False)
    layers.mean(h)
    path = tmp_path / "prog.json"
    io.save_program(fl.default_main_program(), path)
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_dot_writes_file(program_json, tmp_path, capsys):
    out = tmp_path / "out.dot"
    assert cli.main(["dot", str(program_json), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph") and text.count('kind="op"') == 7
    assert "wrote" in capsys.readouterr().out


def test_dot_to_stdout_with_options(program_json, capsys):
    assert cli.main(["dot", str(program_json)]) == 0
    full = capsys.readouterr().out
    assert cli.main(["dot", str(program_json), "--collapse", "--no-legend"]) == 0
    folded = capsys.readouterr().out
    assert folded.count('kind="group"') == 3 and "legend" not in folded
    assert cli.main(["dot", str(program_json), "--around", "mean_0.tmp_0", "--hops", "2",
                     "--highlight", "mean", "--rankdir", "LR"]) == 0
    near = capsys.readouterr().out
    assert near.count('kind="op"') == 1 and 'rankdir="LR"' in near and 'highlighted="true"' in near
    assert near.count(' kind="var"') == 2 < folded.count(' kind="var"') < full.count(' kind="var"')


@needs_dot
def test_dot_renders_svg(program_json, tmp_path):
    out = tmp_path / "out.svg"
    assert cli.main(["dot", str(program_json), "-o", str(out), "--block", "0"]) == 0
    assert out.read_text().lstrip().startswith("<?xml") and (tmp_path / "out.dot").exists()


def test_show_prints_program(program_json, capsys):
    assert cli.main(["show", str(program_json)]) == 0
    assert capsys.readouterr().out.strip() == str(io.load_program(program_json))


@pytest.mark.parametrize("argv_tail, message", [
    (["missing.json"], "No such file"),
    (["{bad}"], "not valid JSON"),
    (["{prog}", "--block", "5"], "--block 5"),
    (["{prog}", "--around", "ghost"], "ghost"),
    (["{prog}", "-o", "{tmp}/x.gif"], ".svg"),
    (["{prog}", "--hops", "many"], "invalid int"),
])
def test_bad_input_gives_one_line_error(program_json, tmp_path, capsys, argv_tail, message):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv = ["dot"] + [a.format(prog=program_json, bad=bad, tmp=tmp_path) for a in argv_tail]
    assert cli.main(argv) != 0
    assert message in _one_line_error(capsys)


def test_unknown_command_and_no_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "frobnicate" in _one_line_error(capsys)
    assert cli.main([]) == 2
    _one_line_error(capsys)


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("dot", "show", "demo", "bench"):
        assert command in out


@pytest.mark.parametrize("name", ["demo", "bench"])
def test_passthrough_commands(name, capsys, monkeypatch):
    module_name = f"fluidlite.{name}"
    if importlib.util.find_spec(module_name) is None:
        assert cli.main([name, "--x"]) == 2
        assert _one_line_error(capsys).strip() == f"fluidlite: {name} is not available yet"
    seen = []
    fake = types.ModuleType(module_name)
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, module_name, fake)
    assert cli.main([name, "--steps", "5", "-v", "--help"]) == 3
    assert seen == [["--steps", "5", "-v", "--help"]]
    fake.main = lambda argv: None
    assert cli.main([name]) == 0

    def broken(argv):
        raise ValueError("bad\nsteps")
    fake.main = broken
    assert cli.main([name]) == 1
    assert "bad steps" in _one_line_error(capsys)


def test_python_dash_m_help():
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "fluidlite", "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0
    assert all(c in res.stdout for c in ("dot", "demo", "bench"))


def test_python_dash_m_error_has_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fluidlite", "dot", str(tmp_path / "none.json")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1
