"""fluidlite's thread pools: no process-wide side effects; Numba's TBB layer, whose threads also run the
kernels' products (split), or the workqueue, whose idle threads sleep, where TBB is missing."""
import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os
before = dict(os.environ)
import numpy as np
import fluidlite as fl
from fluidlite import layers
from fluidlite.ops import common
common.PARALLEL_MIN = 1 << 16
x = layers.data(name="x", shape=[1 << 19], dtype="float32", append_batch_size=False)
y = layers.relu(x)   # large enough for the prange kernel
exe = fl.Executor()
out, = exe.run(feed={"x": np.full(1 << 19, -1.0, np.float32)}, fetch_list=[y])
import numba
print(json.dumps({"env_changed": sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)),
                  "layer": numba.threading_layer(), "ok": bool((out == 0).all())}))
"""


def _probe(extra_env=None, prelude=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_THREADING", "OMP_"))}
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, "-c", prelude + PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_and_run_set_no_environment_variable_and_use_the_tbb_pool():
    r = _probe()
    assert r == {"env_changed": [], "layer": "tbb", "ok": True}


def test_without_tbb_the_workqueue_runs_and_products_are_not_split():
    hide_tbb = ("from importlib import metadata\n_files = metadata.files\n"
                "def files(name):\n"
                "    if name == 'tbb':\n"
                "        raise metadata.PackageNotFoundError(name)\n"
                "    return _files(name)\n"
                "metadata.files = files\n")
    r = _probe(prelude=hide_tbb)
    assert r == {"env_changed": [], "layer": "workqueue", "ok": True}


def test_the_parallel_threshold_follows_the_pool(monkeypatch):
    import fluidlite._threads as T
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", None)
    monkeypatch.setattr(T, "_pool_parts", 2)
    assert T.pool_on() and common.parallel_min() == T.POOL_PARALLEL_MIN == 1 << 16
    monkeypatch.setattr(T, "_pool_parts", 0)
    assert not T.pool_on() and common.parallel_min() == T.QUEUE_PARALLEL_MIN == 1 << 23
    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)  # a test's own threshold wins
    assert common.parallel_min() == 4096 and common.parallel_size(4096) and not common.parallel_size(4095)


def test_a_layer_the_user_chose_is_kept():
    r = _probe({"NUMBA_THREADING_LAYER": "omp"})
    assert r["layer"] == "omp" and r["env_changed"] == [] and r["ok"]


def test_torch_imported_first_changes_nothing():
    pytest.importorskip("torch")
    r = _probe(prelude="import torch\n")
    assert r == {"env_changed": [], "layer": "tbb", "ok": True}


@pytest.mark.parametrize("layer", ["workqueue", "tbb"])
def test_two_executors_in_two_threads_do_not_abort(layer):
    code = """
import threading, numpy as np, fluidlite as fl
from fluidlite import layers
from fluidlite.ops import common
common.PARALLEL_MIN = 1 << 16  # the prange kernels, from both threads
x = layers.data(name="x", shape=[1 << 19], dtype="float32", append_batch_size=False)
y = layers.scale(layers.relu(x), scale=2.0)
feed = {"x": np.full(1 << 19, 1.0, np.float32)}
errors = []
def work():
    exe = fl.Executor()
    for _ in range(20):
        out, = exe.run(feed=feed, fetch_list=[y])
        if not (out == 2).all():
            errors.append("wrong")
threads = [threading.Thread(target=work) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
import numba
print(numba.threading_layer(), len(errors))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_THREADING", "OMP_"))}
    if layer == "workqueue":
        env["NUMBA_THREADING_LAYER"] = "workqueue"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [layer, "0"]


def test_free_cores_counts_other_jobs_and_the_guard_limits_then_restores(monkeypatch):
    import numba

    from fluidlite import _threads as T

    monkeypatch.setattr(T, "_cores", lambda: 2)
    assert [T.free_cores(o) for o in (0.0, 0.4, 0.6, 1.0, 5.0)] == [2, 2, 1, 1, 1]
    monkeypatch.delenv("FLUIDLITE_FIXED_THREADS", raising=False)
    before = numba.get_num_threads()
    guard = T.RunGuard()
    guard._libs, guard._others = [], lambda: 1.0
    with guard:
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_other_load_averages_cpu_time_and_leaves_out_this_process(monkeypatch):
    """Other processes' CPU time per second of wall time: a blip of a process (30 ms in a second) and
    this process's own threads do not count, a steady job does; the load average is not read."""
    from fluidlite import _threads as T

    monkeypatch.setattr(T, "_cores", lambda: 2)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (2.3, 2.2, 2.0))
    monkeypatch.delenv("FLUIDLITE_FIXED_THREADS", raising=False)
    hz = T._TICKS_PER_S
    # (all CPUs' busy ticks, this process's ticks) after each second: this process busy on both cores
    # throughout, plus another job's blip, a steady job for two seconds, nothing
    other = [0, 0.03, 1.0, 1.0, 0.0]
    own = [0, 2.0, 2.0, 2.0, 2.0]
    ticks = iter([(round(hz * sum(other[:i + 1]) + hz * sum(own[:i + 1])), round(hz * sum(own[:i + 1])))
                  for i in range(len(other))])
    clock = iter(range(len(other)))
    guard = T.RunGuard()
    guard._libs, guard._others = [], T.OtherLoad(read=lambda: next(ticks), clock=lambda: float(next(clock)))
    seen = []
    for now in range(len(other)):
        guard._check(float(now))
        seen.append(guard._limit)
    assert seen == [0, 0, 1, 1, 0]


def test_other_load_sees_another_busy_process():
    """Read from /proc: a child spinning for a second shows as at least half a core."""
    import subprocess
    import time

    from fluidlite import _threads as T

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc here: the guard reads no load and never limits")
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.monotonic() + 1.6\n"
                              "while time.monotonic() < t: pass"])
    try:
        time.sleep(0.3)  # the child's start-up is done
        load = T.OtherLoad()
        load()
        time.sleep(1.0)
        assert load() >= 0.5
    finally:
        child.wait(timeout=30)


def test_fixed_threads_keeps_the_counts_on_a_busy_machine(monkeypatch):
    """FLUIDLITE_FIXED_THREADS=1: no load-adaptive limit, so a run's BLAS/prange thread counts (and with
    them the last bits of some products) do not follow the machine's load."""
    import numba

    import fluidlite._threads as T

    monkeypatch.setattr(T, "_cores", lambda: 2)
    before = numba.get_num_threads()
    for fixed, want in (("1", before), ("0", 1)):
        monkeypatch.setenv("FLUIDLITE_FIXED_THREADS", fixed)
        guard = T.RunGuard()
        guard._libs, guard._others = [], lambda: 1.0
        with guard:
            assert numba.get_num_threads() == want
        assert numba.get_num_threads() == before


def test_busy_machine_limits_the_kernels_blas_during_a_run_only_and_no_other_copy(monkeypatch):
    """The kernels' products run on one BLAS (kernels/blas.py: NumPy's OpenBLAS, else SciPy's): it is limited
    while a plan runs on a busy machine and gets its thread count back afterwards; any other BLAS copy in
    the process (SciPy's, next to NumPy's) is not touched."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401  (a second OpenBLAS copy in the process)

    import fluidlite._threads as T
    from fluidlite.kernels import blas

    libs = T._kernel_blas()
    assert libs and all(blas.BACKEND in lib.filepath for lib in libs), [lib.filepath for lib in libs]
    others = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
              if lib.user_api == "blas" and lib.filepath not in {m.filepath for m in libs}]
    monkeypatch.setattr(T, "_cores", lambda: 2)
    monkeypatch.delenv("FLUIDLITE_FIXED_THREADS", raising=False)
    guard = T.RunGuard()
    guard._others = lambda: 1.0
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = {lib.filepath: lib.get_num_threads() for lib in libs + others}
        with guard:
            assert all(lib.get_num_threads() == 1 for lib in libs)
            assert all(lib.get_num_threads() == before[lib.filepath] for lib in others)
        assert {lib.filepath: lib.get_num_threads() for lib in libs + others} == before


def test_thread_trial_keeps_whichever_setting_ran_faster(monkeypatch):
    """Runs under the choice, then a trial of RUNS runs on the other setting once EVERY_S has passed
    and BASE runs are in: the trial wins only by a clear margin (GAIN); right after a switch the next
    trial comes as soon as BASE runs are in, and can switch back."""
    from fluidlite._threads import ThreadTrial

    monkeypatch.setattr(ThreadTrial, "EVERY_S", 5.0)  # these runs are short: EVERY_S sets the pace
    base, runs = ThreadTrial.BASE, ThreadTrial.RUNS
    now = [0.0]
    trial = ThreadTrial(clock=lambda: now[0])

    def run(seconds_all, seconds_one, count):
        settings = []
        for _ in range(count):
            one = trial.wants_one_thread()
            settings.append(one)
            trial.record(seconds_one if one else seconds_all)
            now[0] += 1.0
        return settings

    assert run(0.010, 0.005, base) == [False] * base  # clock 0 .. base - 1 >= EVERY_S: a trial next
    assert run(0.010, 0.005, runs) == [True] * runs and trial.one_thread  # 5 ms < 0.85 * 10 ms
    # just switched: the trial of all threads comes once BASE runs are in; 4 ms < 0.85 * 5 ms: back
    assert run(0.004, 0.005, base) == [True] * (base - runs) + [False] * runs
    assert not trial.one_thread
    # switched back: tried again soon; one slow run on one thread ends that trial at once
    assert run(0.004, 0.006, base - runs + 2) == [False] * (base - runs) + [True, False]
    # from now on EVERY_S apart (5 runs after that trial); 9 ms against 10 is not a clear win
    assert run(0.010, 0.009, 4 + runs + 1) == [False] * 4 + [True] * runs + [False]
    assert not trial.one_thread


def test_thread_trials_of_a_slow_plan_take_a_small_share_of_its_time():
    from fluidlite._threads import ThreadTrial

    now = [0.0]
    trial = ThreadTrial(clock=lambda: now[0])
    trial_runs = 0
    for _ in range(400):
        trial_runs += trial.wants_one_thread()
        trial.record(0.9 if trial.wants_one_thread() else 1.0)  # a second a run; one thread a little faster
        now[0] += 1.0
    assert 0 < trial_runs <= ThreadTrial.SHARE * 400 + ThreadTrial.RUNS


def test_thread_trial_leaves_quick_plans_alone():
    from fluidlite._threads import ThreadTrial

    now = [0.0]
    trial = ThreadTrial(clock=lambda: now[0])
    for _ in range(50):
        assert not trial.wants_one_thread()
        trial.record(ThreadTrial.MIN_S / 2)
        now[0] += 1.0


def test_guard_runs_a_plan_on_one_thread_while_its_trial_says_so(monkeypatch):
    import numba

    from fluidlite import _threads as T

    monkeypatch.setattr(T, "_cores", lambda: 2)
    monkeypatch.delenv("FLUIDLITE_FIXED_THREADS", raising=False)
    before = numba.get_num_threads()
    guard = T.RunGuard()
    guard._libs, guard._others = [], lambda: 0.0
    guard._trial_of("plan").one_thread = True
    with guard.using("plan"):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with guard.using("other plan"):
        assert numba.get_num_threads() == before
    with guard:  # no plan named: no trial
        assert numba.get_num_threads() == before
    monkeypatch.setenv("FLUIDLITE_FIXED_THREADS", "1")
    guard._next_check = 0.0
    with guard.using("plan"):
        assert numba.get_num_threads() == before


def test_executor_times_each_run_for_its_plans_trial():
    import numpy as np

    import fluidlite as fl
    from fluidlite import layers

    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data("x", [4], dtype="float32")
        y = layers.relu(x)
    exe = fl.Executor()
    for _ in range(2):
        exe.run(main, feed={"x": np.ones((3, 4), np.float32)}, fetch_list=[y])
    trials = list(exe._guard._trials.values())
    if os.environ.get("FLUIDLITE_FIXED_THREADS", "") not in ("", "0") or len(os.sched_getaffinity(0)) < 2:
        assert trials == []
    else:
        assert len(trials) == 1 and len(trials[0]._recent) == 2 and all(t > 0 for t in trials[0]._recent)


def test_guard_forgets_the_oldest_plans_trial_beyond_its_limit(monkeypatch):
    from fluidlite import _threads as T

    monkeypatch.setattr(T.RunGuard, "MAX_TRIALS", 3)
    guard = T.RunGuard()
    first = guard._trial_of("a")
    for key in "bcd":
        guard._trial_of(key)
    assert list(guard._trials) == ["b", "c", "d"] and guard._trial_of("b") is guard._trials["b"]
    assert guard._trial_of("a") is not first  # a fresh trial for a plan seen again
