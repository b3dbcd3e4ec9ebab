"""The memory plan of a step (compiler/memory.py) and `fluidlite show --memory`."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import cli, layers
from fluidlite.compiler import CompileOptions


def _chain(width=1000):
    x = layers.data(name="x", shape=[width], dtype="float32")
    return layers.sigmoid(layers.scale(layers.tanh(x), scale=2.0))


@pytest.mark.parametrize("batch", [1, 4])
def test_peak_is_two_live_activations_of_a_chain_without_buffer_reuse(batch):
    out = _chain()
    exe = fl.Executor(compile_options=CompileOptions(disabled={"alias", "fuse"}))
    mem = exe.compile(feed={"x": np.zeros((batch, 1000), np.float32)}, fetch_list=[out]).memory()
    one = batch * 1000 * 4
    assert mem.peak_bytes == 2 * one  # an op's input and its output, never three at once
    assert mem.feed_bytes == one and mem.persistable_bytes == 0
    assert [t[2] for t in mem.timeline] == [2 * one] * 3


def test_buffer_reuse_lowers_the_live_bytes_after_the_fed_input():
    out = _chain()
    exe = fl.Executor(compile_options=CompileOptions(disabled={"fuse"}))
    mem = exe.compile(feed={"x": np.zeros((2, 1000), np.float32)}, fetch_list=[out]).memory()
    one = 2 * 1000 * 4
    assert mem.peak_bytes == 2 * one and mem.peak_step == 0  # the feed is never overwritten
    assert [t[2] for t in mem.timeline][1:] == [one, one]  # scale and sigmoid write into their dead input


def test_a_value_stays_alive_while_a_view_of_it_is_read():
    x = layers.data(name="x", shape=[1000], dtype="float32")
    viewed = layers.reshape(layers.tanh(x), [-1, 1000])  # tanh's result's name dies here, its buffer does not
    out = layers.elementwise_add(viewed, layers.sigmoid(x))
    exe = fl.Executor(compile_options=CompileOptions(disabled={"alias", "fuse"}))
    mem = exe.compile(feed={"x": np.zeros((2, 1000), np.float32)}, fetch_list=[out]).memory()
    one = 2 * 1000 * 4
    assert [(t[1], t[2]) for t in mem.timeline] == [("tanh", 2 * one), ("reshape", 2 * one), ("sigmoid", 3 * one),
                                                    ("elementwise_add", 3 * one)]


def test_a_fused_chain_is_one_step_and_keeps_no_intermediate():
    out = _chain()
    mem = fl.Executor().compile(feed={"x": np.zeros((2, 1000), np.float32)}, fetch_list=[out]).memory()
    assert [(t[1], t[2]) for t in mem.timeline] == [("tanh+scale+sigmoid", 2 * 2 * 1000 * 4)]


def test_training_step_counts_parameters_apart():
    x = layers.data(name="x", shape=[8], dtype="float32")
    loss = layers.mean(layers.fc(x, size=16, act="relu"))
    fl.optimizer.SGD(0.1).minimize(loss)
    mem = fl.Executor().compile(feed={"x": np.zeros((3, 8), np.float32)}, fetch_list=[loss]).memory()
    assert mem.persistable_bytes >= (8 * 16 + 16) * 4
    assert mem.peak_bytes >= 3 * 16 * 4


def test_show_memory_cli(tmp_path, capsys):
    _chain()
    path = tmp_path / "prog.json"
    fl.io.save_program(fl.default_main_program(), str(path))
    assert cli.main(["show", "--memory", str(path), "--batch", "4", "--fetch", "sigmoid_0.tmp_0"]) == 0
    out = capsys.readouterr().out
    assert "peak live bytes of a step: 32,000" in out and "<- peak" in out and "tanh" in out
    assert cli.main(["show", "--memory", str(path), "--batch", "0"]) == 1
    assert cli.main(["show", str(path)]) == 0
    assert "tanh(X=x)" in capsys.readouterr().out
