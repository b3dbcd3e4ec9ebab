"""fluidlite/_pool.py: Numba's parallel loops on fluidlite's resident workers while a plan runs."""
import os
import threading
import time

import numba
import numpy as np
import pytest
from numba import njit, prange

from fluidlite import _blas, _pool, _threads

pytestmark = pytest.mark.skipif(not _pool._ctrl[_pool.ALIVE], reason="the pool runs on Linux x86-64 under TBB")


@njit(parallel=True)
def _sum(x):
    total = 0.0
    for i in prange(x.size):  # a reduction: its partial sums are indexed by get_thread_id()
        total += x[i]
    return total


@njit(parallel=True)
def _ids(out, x):
    sums = np.zeros(out.size)
    for p in prange(out.size):
        for v in x:  # long enough for a worker to come (kept: the sums are returned)
            sums[p] += v
        out[p] = numba.get_thread_id()
    return sums


@njit(parallel=True)
def _nested(x, out):
    for r in prange(x.shape[0]):
        out[r] = _sum(x[r])  # a parallel loop inside a parallel loop


@pytest.fixture
def in_plan():
    """Products split as while a plan runs: the pool takes the loops."""
    before = _blas.split_products()
    _blas.split_products(_threads._pool_parts)
    yield
    _blas.split_products(before)


def _loops():
    return _pool._ctrl[_pool.LOOPS]


def test_loops_of_a_plan_run_on_the_pool_with_thread_ids_for_reductions(in_plan):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_003)
    before = _loops()
    for _ in range(20):
        assert _sum(x) == pytest.approx(np.sum(x), rel=1e-12)
    assert _loops() - before == 20
    seen, long = set(), np.ones(2_000_000)
    for _ in range(20):  # shares of ~2 ms: a worker comes before the caller is done with its own (if it can)
        ids = np.full(numba.get_num_threads(), -1, np.int64)
        _ids(ids, long)
        assert ids.min() >= 0 and ids.max() < numba.get_num_threads()
        seen.update(ids.tolist())
    assert len(seen) > 1  # the caller (0) and at least one worker


def test_loops_outside_plans_stay_on_tbb():
    x = np.arange(50_000, dtype=np.float64)
    before = _loops()
    assert _sum(x) == np.sum(x)
    assert _loops() == before


def test_a_loop_nested_in_a_loop_runs_inline(in_plan):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4001))
    out = np.zeros(6)
    done = threading.Event()

    def run():
        _nested(x, out)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "nested parallel loops deadlocked"
    np.testing.assert_allclose(out, x.sum(axis=1), rtol=1e-12)


def test_two_threads_at_once_one_on_the_pool_one_on_tbb(in_plan):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(70_001 + i) for i in range(2)]
    wrong = []

    def run(x):
        for _ in range(200):
            if abs(_sum(x) - np.sum(x)) > 1e-9 * np.abs(x).sum():
                wrong.append(x.size)

    threads = [threading.Thread(target=run, args=(x,), daemon=True) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "concurrent parallel loops deadlocked"
    assert not wrong


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_runs_its_loops_on_tbb(in_plan):
    x = np.arange(30_000, dtype=np.float64)
    _sum(x)  # compiled in the parent
    pid = os.fork()
    if pid == 0:  # the child: no workers; must neither hang nor miscount
        code = 0 if (_sum(x) == np.sum(x) and not _pool._ctrl[_pool.ALIVE]) else 1
        os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("a forked child's parallel loop hung")


def _cpu_seconds(native_id):
    with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_workers_sleep(in_plan):
    _sum(np.ones(70_000))  # the workers just ran a loop
    time.sleep(0.2)  # longer than their spin
    worker = _pool._threads[0].native_id
    before = _cpu_seconds(worker)
    time.sleep(0.5)
    assert _cpu_seconds(worker) - before < 0.1  # a spinning worker would take ~0.5 s here


_MANY_WORKERS = r"""
import numpy as np, numba
from numba import njit, prange
from fluidlite import _blas, _pool
assert _pool._ctrl[_pool.WORKERS] == 3, _pool._ctrl[_pool.WORKERS]
_blas.split_products(2)

@njit(parallel=True)
def bump(out):
    for i in prange(out.size):
        out[i] += 1.0  # a share run twice would count twice

@njit(parallel=True)
def total(x):
    s = 0.0
    for i in prange(x.size):
        s += x[i]
    return s

out = np.zeros(1001)
x = np.random.default_rng(0).standard_normal(4099)
before = _pool._ctrl[_pool.LOOPS]
for k in range(3000):
    numba.set_num_threads(2 + k % 3)  # loops of 2, 3 and 4 threads: some workers sit some loops out
    bump(out)
    assert abs(total(x) - x.sum()) < 1e-9
assert (out == 3000).all(), np.unique(out)
assert _pool._ctrl[_pool.LOOPS] - before == 6000
print("ok")
"""


def _child_prints_ok(script, **env):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_three_workers_run_each_share_once_whatever_the_thread_count():
    _child_prints_ok(_MANY_WORKERS, NUMBA_NUM_THREADS="4")


def test_a_worker_that_never_comes_leaves_its_share_to_the_caller(in_plan):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(90_001)
    held = [_pool.HELD + _pool.LINE * w for w in range(_pool._ctrl[_pool.WORKERS])]
    result, ids = [], np.full(numba.get_num_threads(), -1, np.int64)

    def run():
        result.append(_sum(x))
        _ids(ids, x)

    for slot in held:
        _pool._ctrl[slot] = 1
    try:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "a loop waited for a worker that never came"
    finally:
        for slot in held:
            _pool._ctrl[slot] = 0
    assert result[0] == pytest.approx(np.sum(x), rel=1e-12)
    assert (ids == 0).all()  # every share ran on the caller


def test_fluidlite_pool_tbb_leaves_every_loop_to_tbb():
    script = ("import numpy as np, fluidlite as fl\n"
              "from fluidlite import layers, _pool\n"
              "x = layers.data('x', [4])\n"
              "y = layers.reduce_sum(layers.relu(x))\n"
              "v = np.arange(-8, 8, dtype=np.float32).reshape(4, 4)\n"
              "out, = fl.Executor().run(feed={'x': v}, fetch_list=[y])\n"
              "assert np.isclose(out, np.maximum(v, 0).sum()), out\n"
              "assert _pool._ctrl[_pool.ALIVE] == 0 and not _pool._threads\n"
              "print('ok')\n")
    _child_prints_ok(script, FLUIDLITE_POOL="tbb")
