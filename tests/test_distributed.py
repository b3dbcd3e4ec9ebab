"""fluidlite.distributed: the graph it builds (one process) and data-parallel training under
`mpirun -n 2` (three launches of tests/dist_worker.py, a few seconds each)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from fluidlite.distributed import comm
from fluidlite.framework import ROLE_GRAD_CLIP

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
TOL = 1e-10


@pytest.fixture
def single():
    """A fresh single-process world (the test process was not started by mpirun)."""
    assert not comm.launched_by_mpi()
    saved = vars(comm.WORLD).copy()
    comm.WORLD.__init__()
    yield
    vars(comm.WORLD).update(saved)


def _model(n_params=2, clip=None, dtype="float32", bucket_size_mb=25.0, **kw):
    x = layers.data(name="x", shape=[4], dtype=dtype)
    y = layers.data(name="y", shape=[1], dtype=dtype)
    h = x
    for _ in range(n_params // 2 - 1):
        h = layers.fc(h, size=4, act="tanh")
    loss = layers.mean(layers.square_error_cost(layers.fc(h, size=1), y))
    opt = fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1), bucket_size_mb=bucket_size_mb, **kw)
    _, pg = opt.minimize(loss, grad_clip=clip)
    return loss, opt, pg


# ---- one process ---------------------------------------------------------------------------------

def test_init_without_mpirun_is_rank_0_of_1(single):
    with pytest.raises(fl.distributed.DistributedError, match="init"):
        fl.distributed.rank()
    fl.distributed.init()
    assert (fl.distributed.rank(), fl.distributed.world_size()) == (0, 1)


def test_distributed_optimizer_without_init_says_so(single):
    with pytest.raises(fl.distributed.DistributedError, match=r"fl.distributed.init\(\) first"):
        fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1))


def test_bad_arguments(single):
    fl.distributed.init()
    with pytest.raises(ValueError, match="reduce"):
        fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1), reduce="max")
    with pytest.raises(ValueError, match="bucket_size_mb"):
        fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1), bucket_size_mb=-1)
    with pytest.raises(TypeError):
        fl.distributed.DistributedOptimizer("sgd")
    with pytest.raises(ValueError, match="timeout"):
        fl.distributed.init(timeout=0)


@pytest.mark.parametrize("clip", [fl.clip.GradientClipByGlobalNorm(1.0), fl.clip.GradientClipByValue(0.1),
                                  fl.clip.GradientClipAdaptive(0.01), fl.clip.GradientClipAutoClip()])
def test_allreduce_comes_after_backward_and_before_every_clip(single, clip):
    fl.distributed.init()
    loss, opt, pg = _model(4, clip)
    ops = loss.block.ops
    kinds = [op.type for op in ops]
    last_allreduce = max(i for i, t in enumerate(kinds) if t == "allreduce")
    first_clip = min(i for i, op in enumerate(ops) if op.role == ROLE_GRAD_CLIP)
    last_grad = max(i for i, op in enumerate(ops) if op.role == "backward" and op.type != "allreduce")
    assert last_grad < min(i for i, t in enumerate(kinds) if t == "allreduce") <= last_allreduce < first_clip
    reduced = {n for op in opt.allreduce_ops for n in op.output("Out")}
    assert reduced == {fl.grad_var_name(p.name) for p, _ in pg}
    assert all(op.role == "backward" and op.attrs["reduce"] == "mean" for op in opt.allreduce_ops)
    assert "= allreduce[reduce='mean'" in str(loss.block.program)
    fl.verify(loss.block.program)


def test_backward_then_apply_gradients_also_reduces(single):
    fl.distributed.init()
    x = layers.data(name="x", shape=[4], dtype="float32")
    loss = layers.mean(layers.fc(x, size=1))
    opt = fl.distributed.DistributedOptimizer(fl.optimizer.SGD(0.1))
    pg = opt.backward(loss)
    assert loss.block.ops[-1].type == "allreduce" and set(loss.block.ops[-1].input("X")) == {g.name for _, g in pg}
    opt.apply_gradients(pg)
    assert loss.block.ops[-1].type == "sgd" and opt.learning_rate_name is not None


def test_gradients_are_bucketed(single):
    fl.distributed.init()
    _, opt, pg = _model(200)  # 200 small gradients
    assert len(pg) == 200 and len(opt.allreduce_ops) == 1
    assert len(opt.allreduce_ops[0].input("X")) == 200
    with fl.program_guard(fl.Program(), fl.Program()), fl.unique_name.guard():
        _, opt, _ = _model(200, bucket_size_mb=20 * 16 * 4 / 2**20)  # 20 4x4 float32 weights: 1280 bytes
        sizes = [len(op.input("X")) for op in opt.allreduce_ops]  # 16 weight + bias pairs (80 bytes each)
        assert sizes == [32] * 6 + [8], sizes
    with fl.program_guard(fl.Program(), fl.Program()), fl.unique_name.guard():
        _, opt, _ = _model(20, bucket_size_mb=0)  # one allreduce per gradient
        assert len(opt.allreduce_ops) == 20


def test_buckets_keep_one_dtype():
    block = fl.Program().global_block()
    a = block.create_var(name="a", shape=(3,), dtype="float32")
    b = block.create_var(name="b", shape=(3,), dtype="float64")
    c = block.create_var(name="c", shape=(3,), dtype="float64")
    assert [[v.name for v in k] for k in fl.distributed.buckets([a, b, c], 1e6)] == [["a"], ["b", "c"]]
    assert [[v.name for v in k] for k in fl.distributed.buckets([b, c], 24)] == [["b"], ["c"]]


def test_allreduce_has_its_own_colour_in_graphviz(single):
    fl.distributed.init()
    loss, _, _ = _model(2, fl.clip.GradientClipByGlobalNorm(1.0))
    dot = fl.graphviz.to_dot(loss.block.program)
    line = next(ln for ln in dot.splitlines() if 'optype="allreduce"' in ln)
    colour = fl.graphviz.TYPE_COLORS["allreduce"]
    assert colour in line and colour not in fl.graphviz.ROLE_COLORS.values()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_worker_trains_like_the_plain_optimizer(single, dtype):
    fl.distributed.init()
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((8, 4)).astype(dtype), "y": rng.standard_normal((8, 1)).astype(dtype)}
    results = []
    for distributed in (True, False):
        main, startup = fl.Program(), fl.Program()
        with fl.program_guard(main, startup), fl.unique_name.guard(), fl.scope_guard(fl.Scope()):
            x = layers.data(name="x", shape=[4], dtype=dtype)
            y = layers.data(name="y", shape=[1], dtype=dtype)
            loss = layers.mean(layers.square_error_cost(layers.fc(layers.fc(x, 4, act="tanh"), 1), y))
            opt = fl.optimizer.Adam(0.1)
            opt = fl.distributed.DistributedOptimizer(opt) if distributed else opt
            opt.minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(0.1))
            exe = fl.Executor()
            exe.run(startup)
            start = start if results else {k: v.copy() for k, v in fl.global_scope().arrays.items()}
            fl.global_scope().arrays.update({k: v.copy() for k, v in start.items()})
            assert fl.distributed.broadcast_persistables(main)
            for _ in range(3):
                exe.run(main, feed=feed)
            results.append(fl.fetch_var("fc_0.w_0"))
    np.testing.assert_array_equal(results[0], results[1])


def test_checkpoint_helpers_in_one_process(single, tmp_path):
    fl.distributed.init()
    loss, _, _ = _model(2)
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    fl.distributed.save_persistables(str(tmp_path / "ck"))
    w = fl.fetch_var("fc_0.w_0")
    fl.global_scope().var("fc_0.w_0").get_tensor().set(np.zeros_like(w))
    fl.distributed.load_persistables(str(tmp_path / "ck"))
    np.testing.assert_array_equal(fl.fetch_var("fc_0.w_0"), w)


def test_launcher_finds_mpiexec_and_rejects_a_missing_script():
    from fluidlite.distributed import launch

    cmd = launch.command(2, "train.py", ["--lr", "1"], hostfile="hosts")
    assert os.path.basename(cmd[0]) in ("mpiexec", "mpirun", "mpiexec.hydra") and os.access(cmd[0], os.X_OK)
    assert cmd[1:5] == ["-n", "2", "-f", "hosts"] and cmd[-3:] == ["train.py", "--lr", "1"]
    assert launch.main(["-n", "2", "no_such_script.py"]) == 2


# ---- two workers (mpirun -n 2) -------------------------------------------------------------------

def _mpirun(*args, timeout=240, env=None):
    cmd = [comm.find_mpiexec(), "-n", "2", sys.executable, WORKER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = _mpirun("check", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_workers_on_half_batches_match_one_process_on_the_whole_batch(two_workers):
    r0, r1 = two_workers
    kinds = [k for k in r0 if "params" in r0[k] and "norms" in r0[k]]
    assert {"none", "global_norm", "global_inf_norm", "norm", "value", "agc", "autoclip", "zclip",
            "per_example_dp", "per_example_dp_unseeded"} <= set(kinds)
    for kind in kinds:
        assert r0[kind]["diff"] < TOL and r1[kind]["diff"] < TOL, kind
        assert r0[kind]["params"] == r1[kind]["params"], kind  # bitwise the same on both workers
        if kind != "none":  # each clip is active: without it the parameters end elsewhere
            assert r0[kind]["effect"] > 1e-6, kind
    assert r0["momentum_unbucketed"]["diff"] < TOL


def test_the_global_norm_is_identical_on_every_rank(two_workers):
    r0, r1 = two_workers
    for kind in ("global_norm", "global_inf_norm", "autoclip", "zclip"):
        assert r0[kind]["norms"] == r1[kind]["norms"] and len(r0[kind]["norms"]) == 4, kind
        np.testing.assert_allclose(r0[kind]["norms"], r0[kind]["ref_norms"], rtol=1e-12)


def test_uneven_shards_are_weighted_by_batch_size(two_workers):
    r0, r1 = two_workers
    assert r0["uneven_weighted"]["diff"] < TOL and r1["uneven_weighted"]["diff"] < TOL
    mm = r0["uneven_mean_of_means"]  # weight_by_batch=False: DDP's mean of the shards' means
    for n, value in mm["params"].items():
        np.testing.assert_allclose(value, (np.array(mm["shard0"][n]) + np.array(mm["shard1"][n])) / 2, atol=TOL)


def test_a_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(two_workers):
    for r in two_workers:
        assert r["skip"] == {"unchanged": True, "skipped": [1]}


def test_checkpoint_by_rank_0_resumes_identically(two_workers):
    assert all(r["resume"]["same"] for r in two_workers)


def test_dropout_masks_differ_between_workers_and_between_steps(two_workers):
    r0, r1 = (r["dropout"] for r in two_workers)
    for step in range(2):
        for k in range(2):  # seeded, unseeded
            assert r0["shared"][step][k] != r1["shared"][step][k], (step, k)
    assert r0["shared"][0] != r0["shared"][1]  # a new mask every step
    assert r0["shared"][0][0] == r0["alone"][0][0]  # rank 0 draws what one process draws (seeded)


def test_differing_programs_raise_naming_the_first_mismatch(two_workers):
    for r in two_workers:
        assert "rank 1 differs from rank 0's" in r["mismatch"] and "f64[5,6]" in r["mismatch"] \
            and "f64[5,7]" in r["mismatch"]


def test_a_hung_worker_makes_the_others_fail_naming_it():
    start = time.monotonic()
    proc = _mpirun("hang", env={"DIST_TEST_TIMEOUT": "2"}, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "timed out after 2 s: rank(s) [1] did not reach it" in proc.stdout + proc.stderr
    assert "rank 0 step 1" in proc.stdout and "rank 0 step 2" not in proc.stdout
    assert elapsed < 60  # not the 120 s the hung worker sleeps


def test_launch_names_a_killed_worker():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fluidlite", "launch", "-n", "2", "--timeout", "30", WORKER, "kill"],
                          capture_output=True, text=True, timeout=120, cwd=HERE)
    assert proc.returncode != 0
    assert "worker rank 1 " in proc.stderr and "terminated" in proc.stderr, proc.stdout + proc.stderr
    assert "rank 0 step 2" not in proc.stdout
    assert time.monotonic() - start < 60  # hydra stops the others at once; 60 s leaves room for a loaded machine
