"""Run by tests/test_distributed.py under `mpirun -n 2` (not collected by pytest).

`python dist_worker.py check OUTDIR`: every scenario; each rank writes OUTDIR/rank<r>.json.
`python dist_worker.py kill|hang`: rank 1 dies (SIGKILL) or hangs at step 2; rank 0 keeps training.
"""
import json
import os
import signal
import sys
import time

import numpy as np

import fluidlite as fl
from fluidlite import layers

fl.distributed.init()
RANK, SIZE = fl.distributed.rank(), fl.distributed.world_size()
DTYPE = "float64"
B, D = 8, 5
DATA = np.random.default_rng(7).standard_normal((6, B, D + 1))  # 6 steps of a batch of 8 rows


def build(clip=None, opt="sgd", distributed=True, hidden=6, **dist_kw):
    main, startup = fl.Program(), fl.Program()
    main.random_seed = startup.random_seed = 3  # the same start on every run: each clip's effect is fixed
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[D], dtype=DTYPE)
        y = layers.data(name="y", shape=[1], dtype=DTYPE)
        h = layers.fc(x, size=hidden, act="tanh")
        loss = layers.mean(layers.square_error_cost(layers.fc(h, size=1), y))
        inner = {"sgd": lambda: fl.optimizer.SGD(0.5), "adam": lambda: fl.optimizer.Adam(0.05),
                 "momentum": lambda: fl.optimizer.Momentum(0.3, 0.9)}[opt]()
        o = fl.distributed.DistributedOptimizer(inner, **dist_kw) if distributed else inner
        _, pg = o.minimize(loss, grad_clip=clip)
    return main, startup, loss, [p.name for p, _ in pg]


def feed(step, rows):
    d = DATA[step][rows]
    return {"x": np.ascontiguousarray(d[:, :D]), "y": np.ascontiguousarray(d[:, D:])}


def shard(n=B, split=None):
    cut = n // 2 if split is None else split
    if SIZE == 1:
        return slice(0, n)
    return slice(0, cut) if RANK == 0 else slice(cut, n)


def train(main, scope, steps, rows, fetch=(), start=0, poison=None):
    exe, seen = fl.Executor(), []
    with fl.scope_guard(scope):
        for s in range(start, start + steps):
            f = feed(s, rows)
            if poison == s:
                f["x"][0, 0] = np.inf
            seen.append([v.tolist() for v in exe.run(main, feed=f, fetch_list=list(fetch))])
    return seen


def params(scope, names):
    return {n: np.array(scope.var(n).get_tensor()) for n in names}


def pair(clip, opt="sgd", split=None, steps=4, norm=None, **dist_kw):
    """Distributed run on this rank's shard vs one process on the whole batch from the same start."""
    main, startup, loss, names = build(clip, opt, **dist_kw)
    scope = fl.Scope()
    with fl.scope_guard(scope):
        fl.Executor().run(startup)
        fl.distributed.broadcast_persistables(main, scope)
    ref_main, _, _, _ = build(clip, opt, distributed=False)
    ref_scope = fl.Scope()
    start = {k: v.copy() for k, v in scope.arrays.items()}
    ref_scope.arrays.update({k: v.copy() for k, v in start.items()})
    fetch = [norm] if norm is not None and main.global_block().has_var(norm) else []
    got = train(main, scope, steps, shard(split=split), fetch)
    want = train(ref_main, ref_scope, steps, slice(0, B), fetch)
    if clip is not None:  # the same run without the clip: the clip must change the result
        plain_main, _, _, _ = build(None, opt, distributed=False)
        plain = fl.Scope()
        plain.arrays.update({k: v.copy() for k, v in start.items()})
        train(plain_main, plain, steps, slice(0, B))
        effect = max(float(np.max(np.abs(a - b))) for a, b in zip(params(plain, names).values(),
                                                                    params(ref_scope, names).values()))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params(scope, names).values(),
                                                                params(ref_scope, names).values()))
    result = {"diff": diff, "effect": effect if clip is not None else 0.0, "norms": got, "ref_norms": want, "params": {k: v.tolist() for k, v in params(scope, names).items()}}
    if split is not None and not dist_kw.get("weight_by_batch", True):  # each shard alone, from the same start
        for key, rows in (("shard0", slice(0, split)), ("shard1", slice(split, B))):
            alone = fl.Scope()
            alone.arrays.update({k: v.copy() for k, v in start.items()})
            train(ref_main, alone, steps, rows)
            result[key] = {k: v.tolist() for k, v in params(alone, names).items()}
    return result


def clip_kinds():
    c = fl.clip
    kinds = {"none": None, "global_norm": c.GradientClipByGlobalNorm(0.05),
             "global_inf_norm": c.GradientClipByGlobalNorm(0.02, norm_type=float("inf")),
             "norm": c.GradientClipByNorm(0.05), "value": c.GradientClipByValue(0.01),
             "agc": c.GradientClipAdaptive(0.01), "autoclip": c.GradientClipAutoClip(percentile=0)}  # clip to the smallest norm so far
    if hasattr(c, "GradientClipZScore"):  # ZClip: warm up on one step, then clip a norm above a fast mean
        kinds["zclip"] = c.GradientClipZScore(alpha=0.1, warmup_steps=1, z_thresh=0.01)
    if hasattr(c, "GradientClipPerExample"):  # DP-SGD: per-worker clipped sums, noise drawn once
        kinds["per_example_dp"] = c.GradientClipPerExample(l2_norm_clip=0.3, noise_multiplier=0.7, seed=5)
        # unseeded: the noise streams' keys come from rank 0's startup run through broadcast_persistables
        kinds["per_example_dp_unseeded"] = c.GradientClipPerExample(l2_norm_clip=0.3, noise_multiplier=0.7)
    return kinds


def check(outdir):
    out = {}
    for name, clip in clip_kinds().items():
        norm = None if clip is None or not hasattr(clip, "group_name") else clip.group_name + "@GLOBAL_NORM"
        r = pair(clip, opt="adam" if name == "autoclip" else "sgd", norm=norm)
        out[name] = {k: r[k] for k in ("diff", "effect", "norms", "ref_norms", "params")}
    out["momentum_unbucketed"] = {"diff": pair(fl.clip.GradientClipByGlobalNorm(0.05), "momentum",
                                               bucket_size_mb=0)["diff"]}
    out["uneven_weighted"] = {"diff": pair(None, split=5)["diff"]}
    # DDP's mean of means: one SGD step is the mean of the two shards' own steps
    r = pair(None, split=5, steps=1, weight_by_batch=False)
    out["uneven_mean_of_means"] = {k: r[k] for k in ("params", "shard0", "shard1")}
    # a non-finite gradient on rank 1 only: every rank skips the step
    main, startup, loss, names = build(fl.clip.GradientClipByGlobalNorm(1.0, skip_nonfinite=True))
    scope = fl.Scope()
    with fl.scope_guard(scope):
        fl.Executor().run(startup)
        fl.distributed.broadcast_persistables(main, scope)
    train(main, scope, 1, shard())
    before = params(scope, names)
    train(main, scope, 1, shard(), start=1, poison=1 if RANK == 1 else None)
    after = params(scope, names)
    out["skip"] = {"unchanged": all(np.array_equal(before[n], after[n]) for n in names),
                   "skipped": np.array(scope.var(fl.clip.skipped_steps_var(main).name).get_tensor()).tolist()}
    # checkpoint at step 2 by rank 0, resume in a fresh scope: the same parameters as running on
    main, startup, loss, names = build(fl.clip.GradientClipByGlobalNorm(0.05), "adam")
    scope, resumed = fl.Scope(), fl.Scope()
    with fl.scope_guard(scope):
        fl.Executor().run(startup)
        fl.distributed.broadcast_persistables(main, scope)
        train(main, scope, 2, shard())
        fl.distributed.save_persistables(os.path.join(outdir, "ckpt"), main, scope)
        train(main, scope, 2, shard(), start=2)
    with fl.scope_guard(resumed):
        fl.Executor().run(startup)
        fl.distributed.load_persistables(os.path.join(outdir, "ckpt"), main, resumed)
        train(main, resumed, 2, shard(), start=2)
    out["resume"] = {"same": all(np.array_equal(a, b) for a, b in zip(params(scope, names).values(),
                                                                        params(resumed, names).values()))}
    out["dropout"] = dropout_masks()
    # different programs: both ranks get an error naming the first mismatch
    main, startup, _, _ = build(hidden=6 if RANK == 0 else 7)
    with fl.scope_guard(fl.Scope()):
        fl.Executor().run(startup)
        try:
            fl.distributed.broadcast_persistables(main)
            out["mismatch"] = "no error"
        except fl.distributed.DistributedError as exc:
            out["mismatch"] = str(exc)
    with open(os.path.join(outdir, f"rank{RANK}.json"), "w") as f:
        json.dump(out, f)


def dropout_masks():
    """Two steps' dropout masks (seeded and unseeded) after broadcast_persistables, and rank 0's alone."""
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[64], dtype=DTYPE)
        layers.dropout(x, 0.5, seed=7)
        layers.dropout(x, 0.5)
        masks = [op.output("Mask")[0] for op in main.global_block().ops if op.type == "dropout"]
    ones = {"x": np.ones((4, 64), DTYPE)}

    def run(broadcast):
        scope, exe = fl.Scope(), fl.Executor()
        exe.run(startup, scope=scope)
        if broadcast:
            fl.distributed.broadcast_persistables(main, scope)
        return [[m.astype(int).ravel().tolist() for m in exe.run(main, feed=ones, fetch_list=masks, scope=scope)]
                for _ in range(2)]
    return {"shared": run(True), "alone": run(False)}


def fail(mode):
    main, startup, loss, _ = build(fl.clip.GradientClipByGlobalNorm(0.05))
    exe = fl.Executor()
    exe.run(startup)
    fl.distributed.broadcast_persistables(main)
    for step in range(6):
        if step == 2:  # kernels are compiled and cached by now: a short deadline from here on
            fl.distributed.init(timeout=float(os.environ.get("DIST_TEST_TIMEOUT", "300")))
        if RANK == 1 and step == 2:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)
        exe.run(main, feed=feed(step, shard()), fetch_list=[loss])
        print(f"rank {RANK} step {step}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        fail(sys.argv[1])
