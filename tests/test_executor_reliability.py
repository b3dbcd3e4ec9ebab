"""Executor edge cases: empty batches, masked feeds, the LRU plan cache, threads under Numba's workqueue."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import executor as executor_module
from fluidlite import layers


def _net():
    x = layers.data(name="x", shape=[3])
    loss = layers.mean(layers.fc(x, size=2))
    fl.optimizer.SGD(0.1).minimize(loss)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    return exe, loss


def test_batch_size_zero_is_refused_naming_the_feed_and_leaves_the_scope_alone():
    exe, loss = _net()
    before = {k: v.copy() for k, v in fl.global_scope().arrays.items()}
    with pytest.raises(ValueError, match=r"feed 'x'.*batch size 0"):
        exe.run(feed={"x": np.zeros((0, 3), "float32")}, fetch_list=[loss])
    after = fl.global_scope().arrays
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_a_masked_array_feed_is_refused():
    exe, loss = _net()
    masked = np.ma.masked_array(np.ones((2, 3), "float32"), mask=[[0, 1, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match=r"feed 'x' is a masked array"):
        exe.run(feed={"x": masked}, fetch_list=[loss])
    out, = exe.run(feed={"x": masked.filled(0.0)}, fetch_list=[loss])  # filled, it runs
    assert np.isfinite(out).all()


def _cold_program(k):
    program = fl.Program()
    with fl.program_guard(program, fl.Program()):
        layers.scale(layers.data(name="c", shape=[3]), scale=float(k))
    return program


def test_the_plan_cache_evicts_the_least_recently_used_plan(monkeypatch):
    monkeypatch.setattr(executor_module, "_MAX_PLANS", 4)
    exe, loss = _net()
    built = []
    real = executor_module.Plan

    class Counting(real):
        def __init__(self, *a, **k):
            built.append(a[0])
            super().__init__(*a, **k)
    monkeypatch.setattr(executor_module, "Plan", Counting)
    hot = np.ones((2, 3), "float32")
    for k in range(2, 40):  # one hot plan used every other step among many cold ones (other programs)
        exe.run(feed={"x": hot}, fetch_list=[loss])
        exe.run(_cold_program(k), feed={"c": np.ones((2, 3), "float32")})
    assert sum(1 for p in built if p is fl.default_main_program()) == 1  # FIFO rebuilt it every 4 plans
    assert len(exe._plans) == 4
    assert all(hit[0] in exe._plans.values() for hit in exe._bound.values())  # evicted plans are not kept alive


def test_two_executors_in_two_threads_survive_the_workqueue_layer_with_clips(tmp_path):
    script = textwrap.dedent("""
        import threading, numpy as np, fluidlite as fl, numba
        from fluidlite import layers
        from fluidlite.ops import common
        common.PARALLEL_MIN = 1 << 16  # the parallel kernels at a size that runs fast
        main, startup = fl.Program(), fl.Program()
        with fl.program_guard(main, startup):
            x = layers.data("x", [512])
            loss = layers.mean(layers.clip(layers.fc(x, 512, act="relu"), -0.5, 0.5))
            fl.optimizer.SGD(0.01).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
        xs = np.random.rand(1100, 512).astype("float32")   # above the parallel-kernel size
        def work(results, i):
            exe, scope = fl.Executor(), fl.Scope()
            exe.run(startup, scope=scope)
            results[i] = [exe.run(main, feed={"x": xs}, fetch_list=[loss], scope=scope)[0] for _ in range(4)]
        results = [None, None]
        ts = [threading.Thread(target=work, args=(results, i)) for i in range(2)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert all(r is not None and len(r) == 4 for r in results)
        print("layer", numba.threading_layer())
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer workqueue" in proc.stdout


def test_a_new_batch_size_reuses_the_plan_and_other_executors_its_compiled_code():
    exe, loss = _net()
    plans = [exe.compile(feed={"x": np.ones((b, 3), "float32")}, fetch_list=[loss]) for b in (2, 5)]
    assert plans[0] is plans[1]  # the batch size is symbolic (tests/test_symbolic_batch.py)
    other = fl.Executor().compile(feed={"x": np.ones((5, 3), "float32")}, fetch_list=[loss])
    assert other is not plans[0] and other.source == plans[0].source
    assert plans[0]._step.__code__ is other._step.__code__  # compiled once
    with pytest.raises(ValueError, match="feed 'x'"):  # errors still name the failing plan's op and feed
        exe.run(feed={"x": np.ones((5, 4), "float32")}, fetch_list=[loss])
