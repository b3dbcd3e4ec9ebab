"""Graphviz runs with a timeout and never outlives us: a fake, slow `dot` on PATH stands in for it."""
import os
import signal
import subprocess
import sys
import time

import pytest

import fluidlite as fl
from fluidlite import childproc, cli, graphviz, io, layers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PDEATHSIG")


@pytest.fixture
def slow_dot(tmp_path, monkeypatch):
    """A `dot` that records its pid, then sleeps for a minute; returns the pid file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "dot.pid"
    script = bin_dir / "dot"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return pid_file


def _alive(pid) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _program():
    x = layers.data(name="x", shape=[3])
    layers.mean(layers.fc(x, size=2))
    return fl.default_main_program()


def test_timeout_stops_dot(tmp_path, slow_dot):
    t0 = time.monotonic()
    with pytest.raises(graphviz.RenderTimeout, match="within 1 s") as info:
        graphviz.draw(_program(), tmp_path / "g.png", timeout=1)
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, RuntimeError) and "timeout" in str(info.value)
    pid = int(slow_dot.read_text())
    assert not _alive(pid)
    assert (tmp_path / "g.dot").exists() and not (tmp_path / "g.png").exists()


def test_run_returns_output_and_rejects_slow_children():
    code, out, err = childproc.run([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], timeout=30)
    assert (code, out.strip(), err) == (3, b"hi", b"")
    with pytest.raises(childproc.ChildTimeout):
        childproc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


_PARENT = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if our launcher ignored SIGINT
import fluidlite as fl
from fluidlite import layers
x = layers.data(name="x", shape=[3])
layers.mean(layers.fc(x, size=2))
fl.graphviz.draw(fl.default_main_program(), sys.argv[1], timeout=None)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_dot_dies_with_its_parent(tmp_path, slow_dot, how):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "g.svg")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: slow_dot.exists() and slow_dot.read_text().strip(), 60), "dot never started"
        pid = int(slow_dot.read_text())
        assert _alive(pid)
        parent.send_signal(how)
        parent.wait(timeout=30)
        assert _wait_for(lambda: not _alive(pid), 5), f"dot (pid {pid}) outlived its parent ({how!r})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_cli_timeout_and_budget(tmp_path, slow_dot, capsys):
    path = tmp_path / "p.json"
    io.save_program(_program(), path)
    assert cli.main(["dot", str(path), "-o", str(tmp_path / "g.svg"), "--timeout", "0.5"]) == 1
    assert "did not finish" in capsys.readouterr().err
    assert not _alive(int(slow_dot.read_text()))
    assert cli.main(["dot", str(path), "--collapse", "none", "--max-nodes", "3"]) == 1
    err = capsys.readouterr().err
    assert "max_nodes=3" in err and "--max-nodes 0" in err
    assert cli.main(["dot", str(path), "--collapse", "none", "--max-nodes", "0"]) == 0
    assert capsys.readouterr().out.startswith("digraph")
