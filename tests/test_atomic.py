"""A failed append_backward / gradients / minimize leaves the programs exactly as they were."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def _net():
    x = layers.data(name="x", shape=[4])
    h = layers.fc(x, size=5, act="tanh")
    h2 = layers.fc(h, size=3, act="tanh")
    return h, h2, layers.mean(h2)


def _state(program):
    """Everything a failed edit could leave behind, as plain values."""
    return (str(program), program._version, [list(b.ops) for b in program.blocks],
            [dict(b.vars) for b in program.blocks],
            [(v.name, v.shape, v.dtype, v.op) for v in program.list_vars()])


def _names_state():
    return dict(fl.unique_name._generator.counters)


def _failing_callback(after):
    calls = []

    def cb(block, context):
        calls.append(context.op.type)
        if len(calls) == after:
            raise RuntimeError("callback failed")
    return cb


@pytest.mark.parametrize("after", [1, 3, 6])
def test_a_raising_callback_leaves_the_program_as_it_was(after):
    h, h2, loss = _net()
    main, startup = fl.default_main_program(), fl.default_startup_program()
    before, sbefore, names = _state(main), _state(startup), _names_state()
    with pytest.raises(RuntimeError, match="callback failed"):
        fl.append_backward(loss, callback=_failing_callback(after))
    assert _state(main) == before and _state(startup) == sbefore and _names_state() == names
    fl.verify(main)
    pairs = fl.append_backward(loss)  # the retry builds the plain names
    assert all(not g.name.endswith("@1") and "@GRAD@" not in g.name for _, g in pairs)
    assert not any("@GRAD@1" in n for n in main.global_block().vars)


def test_a_bad_error_clip_fails_minimize_without_a_trace():
    h, h2, loss = _net()
    main, startup = fl.default_main_program(), fl.default_startup_program()
    h.error_clip = 0.5  # a float, not an ErrorClipByValue
    before, sbefore, names = _state(main), _state(startup), _names_state()
    opt = fl.optimizer.Adam(0.01)
    with pytest.raises(TypeError, match="error_clip"):
        opt.minimize(loss, callback=fl.clip.error_clip_callback,
                     grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    assert _state(main) == before and _state(startup) == sbefore and _names_state() == names
    assert opt.learning_rate_var is None
    h.error_clip = fl.clip.ErrorClipByValue(0.5)
    opt.minimize(loss, callback=fl.clip.error_clip_callback, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    fl.verify(main)
    assert not any("@GRAD@1" in n for n in main.global_block().vars)
    exe = fl.Executor()
    scope = fl.Scope()
    exe.run(startup, scope=scope)
    out, = exe.run(main, feed={"x": np.ones((2, 4), "float32")}, fetch_list=[loss], scope=scope)
    assert np.isfinite(out).all()


def test_a_failure_after_backward_in_minimize_undoes_backward_too(monkeypatch):
    h, h2, loss = _net()
    main = fl.default_main_program()
    before, names = _state(main), _names_state()
    opt = fl.optimizer.SGD(0.1)

    def boom(*a, **k):
        raise ValueError("clip refused")
    monkeypatch.setattr(opt, "apply_optimize", boom)
    with pytest.raises(ValueError, match="clip refused"):
        opt.minimize(loss)
    assert _state(main) == before and _names_state() == names


def test_a_plan_cached_before_a_failed_edit_stays_valid():
    h, h2, loss = _net()
    main, startup = fl.default_main_program(), fl.default_startup_program()
    exe, scope = fl.Executor(), fl.Scope()
    exe.run(startup, scope=scope)
    feed = {"x": np.ones((2, 4), "float32")}
    first, = exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
    version = main._version
    with pytest.raises(RuntimeError):
        fl.append_backward(loss, callback=_failing_callback(2))
    assert main._version == version
    again, = exe.run(main, feed=feed, fetch_list=[loss], scope=scope)
    np.testing.assert_array_equal(first, again)


def test_gradients_is_atomic_too():
    h, h2, loss = _net()
    main = fl.default_main_program()
    before = _state(main)
    with pytest.raises(TypeError):
        fl.gradients([loss, h2], [h], target_gradients=[None, "not a variable"])  # after one seed op
    assert _state(main) == before
