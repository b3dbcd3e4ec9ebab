"""Clip ops (OpTest) and gradient clip objects against NumPy references written here."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluidlite as fl
from fluidlite.ops import common
from fluidlite.ops.clip_ops import address_table, chunk_table
from fluidlite import clip as C
from fluidlite import layers
from op_test import check_forward, check_op, run_op

rng = np.random.default_rng(1)
INF = float("inf")
PARALLEL_MIN = 1 << 19  # these tests' two-thread threshold: the parallel kernels at sizes that test fast


@pytest.fixture(autouse=True)
def _small_parallel_min(monkeypatch):
    monkeypatch.setattr(common, "PARALLEL_MIN", PARALLEL_MIN)


def away_from(x, *bounds, gap=0.05):
    """x with values within `gap` of a bound moved away (finite differences need a smooth point)."""
    for b in bounds:
        near = np.abs(x - b) < gap
        x[near] += 2 * gap
    return x


# ---- ops -----------------------------------------------------------------------------------------

def test_clip_op():
    x = away_from(rng.uniform(-2, 2, (4, 5)), -0.5, 0.8)
    check_op("clip", lambda dt: {"X": x.astype(dt)}, lambda X: np.clip(X, -0.5, 0.8), {"min": -0.5, "max": 0.8})


def test_clip_keeps_nan_saturates_inf_and_large_parallel_kernel():
    x = np.array([np.nan, np.inf, -np.inf, 0.3, -3.0], np.float32)
    out = run_op("clip", {"X": x}, {"min": -1.0, "max": 1.0})["Out"]
    np.testing.assert_array_equal(out, np.array([np.nan, 1, -1, 0.3, -1], np.float32))
    big = rng.standard_normal(PARALLEL_MIN).astype(np.float32)
    check_forward("clip", {"X": big}, lambda X: np.clip(X, np.float32(-0.1), np.float32(0.2)), {"min": -0.1, "max": 0.2})


def test_clip_grad_passes_inside_and_at_the_bounds():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    d = np.arange(1.0, 6.0)
    block = fl.default_main_program().global_block()
    xv = block.create_var(name="x", shape=[5], dtype="float64", is_data=True, stop_gradient=False)
    dv = block.create_var(name="d", shape=[5], dtype="float64", is_data=True)
    out = layers.clip(xv, -1.0, 1.0)
    g, = fl.gradients([out], [xv], target_gradients=[dv])
    got, = fl.Executor().run(feed={"x": x, "d": d}, fetch_list=[g])
    np.testing.assert_array_equal(got, [0, 2, 3, 4, 0])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipping active / inactive
def test_clip_by_norm_op(max_norm):
    x = rng.standard_normal((3, 4))

    def ref(X):
        n = np.sqrt(np.sum(X.astype(np.float64) ** 2))
        return (X * (max_norm / max(n, max_norm))).astype(X.dtype)

    check_op("clip_by_norm", lambda dt: {"X": x.astype(dt)}, ref, {"max_norm": max_norm})


def test_clip_by_norm_inf_norm_op():
    x = rng.standard_normal((3, 4))
    check_op("clip_by_norm", lambda dt: {"X": x.astype(dt)},
             lambda X: (X * (0.5 / max(np.abs(X).max(), 0.5))).astype(X.dtype), {"max_norm": 0.5, "norm_type": INF},
             dtypes=("float64",))


@pytest.mark.parametrize("norm_type", [2.0, INF])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_by_norm_on_a_large_tensor_runs_the_parallel_passes(norm_type, max_norm):
    x = rng.standard_normal((PARALLEL_MIN // 64 + 3, 64))
    x[5, 7] = 9.0
    n = np.abs(x).max() if norm_type == INF else np.sqrt(np.sum(x * x))
    want = x * (max_norm / max(n, max_norm))
    for dt in ("float32", "float64"):
        check_forward("clip_by_norm", {"X": x.astype(dt)}, lambda X: want.astype(X.dtype),
                      {"max_norm": max_norm, "norm_type": norm_type})
    # in place on a persistable gradient
    main, scope = fl.Program(), fl.Scope()
    g = main.global_block().create_var(name="g", shape=x.shape, dtype="float64", persistable=True)
    main.global_block().append_op("clip_by_norm", {"X": g}, {"Out": g}, {"max_norm": max_norm, "norm_type": norm_type})
    scope.var("g").get_tensor().set(x)
    held = np.asarray(scope.var("g").get_tensor(), copy=False)
    fl.Executor().run(main, scope=scope)
    np.testing.assert_allclose(held, want, rtol=1e-12)
    x[0, 0] = np.nan
    assert np.isnan(run_op("clip_by_norm", {"X": x}, {"max_norm": max_norm, "norm_type": norm_type})["Out"]).all()


def test_global_norm_op_and_gradient():
    xs = [rng.standard_normal((2, 3)), rng.standard_normal(4), rng.standard_normal((1, 2, 2))]
    ref = lambda X: np.array([np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in X))], X[0].dtype)  # noqa: E731
    check_op("global_norm", lambda dt: {"X": [a.astype(dt) for a in xs]}, ref)
    check_op("global_norm", lambda dt: {"X": [a.astype(dt) for a in xs]},
             lambda X: np.array([max(np.abs(a).max() for a in X)], X[0].dtype), {"norm_type": INF},
             dtypes=("float64",))


@pytest.mark.parametrize("clip_norm", [0.7, 50.0])  # active / inactive
def test_scale_by_global_norm_op(clip_norm):
    x, gn = rng.standard_normal((2, 3)), np.array([2.3])
    check_op("scale_by_global_norm", lambda dt: {"X": [x.astype(dt)], "GlobalNorm": gn.astype(dt)},
             lambda X, GlobalNorm: (X[0] * (clip_norm / max(float(GlobalNorm[0]), clip_norm))).astype(X[0].dtype),
             {"clip_norm": clip_norm}, wrt=("X", "GlobalNorm"))


@pytest.mark.parametrize("rows", [400, 1200])  # below and above PARALLEL_MIN in all: serial and parallel kernels
@pytest.mark.parametrize("norm_type", [2.0, INF])
def test_multi_tensor_ops_on_many_chunks_non_contiguous_and_in_place(rows, norm_type):
    big = rng.standard_normal((rows, 500))  # several work items
    xs = [big, big.T[::2].copy(), rng.standard_normal(3), np.zeros((0, 4))]  # one empty
    assert (sum(a.size for a in xs) >= PARALLEL_MIN) == (rows > 1000)
    if norm_type == INF:
        xs[2][1] = 40.0  # the maximum sits in a small tensor
        norm = max(float(np.abs(a).max(initial=0)) for a in xs)
    else:
        norm = math.sqrt(sum(float(np.sum(a * a)) for a in xs))
    attrs = {"norm_type": norm_type}
    main = fl.Program()
    block = main.global_block()
    ins = [block.create_var(name=f"x{i}", shape=a.shape, dtype="float64", is_data=True) for i, a in enumerate(xs)]
    block.append_op("global_norm", {"X": ins}, {"Out": "norm"}, attrs)
    block.append_op("scale_by_global_norm", {"X": ins, "GlobalNorm": "norm"},
                    {"Out": [f"o{i}" for i in range(len(xs))]}, {"clip_norm": 2.0})
    got = fl.Executor().run(main, feed={v.name: a for v, a in zip(ins, xs)},
                            fetch_list=["norm"] + [f"o{i}" for i in range(len(xs))], scope=fl.Scope())
    np.testing.assert_allclose(got[0], [norm], rtol=1e-12)
    for o, a in zip(got[1:], xs):
        np.testing.assert_allclose(o, a * (2.0 / norm), rtol=1e-12)

    # persistable gradients are rescaled in place, in the scope's own arrays
    main, scope = fl.Program(), fl.Scope()
    block = main.global_block()
    gs = [block.create_var(name=f"g{i}", shape=a.shape, dtype="float64", persistable=True) for i, a in enumerate(xs)]
    for g, a in zip(gs, xs):
        scope.var(g.name).get_tensor().set(a)
    held = [np.asarray(scope.var(g.name).get_tensor(), copy=False) for g in gs]
    block.append_op("global_norm", {"X": gs}, {"Out": "norm"}, attrs)
    block.append_op("scale_by_global_norm", {"X": gs, "GlobalNorm": "norm"}, {"Out": gs}, {"clip_norm": 2.0})
    fl.Executor().run(main, scope=scope)
    for h, a in zip(held, xs):
        np.testing.assert_allclose(h, a * (2.0 / norm), rtol=1e-12)


def test_address_table_copies_non_contiguous_arrays_only_and_checks_sizes():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4).T[::2]
    like = np.empty(0)
    arrays, addrs = address_table((a, b, np.array(5.0)), (6, 6, 1), like)
    assert arrays[0] is a and arrays[2].shape == () and not b.flags.c_contiguous
    assert arrays[1].flags.c_contiguous and (arrays[1] == b).all()
    assert list(addrs) == [x.__array_interface__["data"][0] for x in arrays]
    with pytest.raises(ValueError, match=r"float64\[2, 3\].*expects 7 elements"):
        address_table((a,), (7,), like)  # the kernel would read past the array
    with pytest.raises(ValueError, match=r"float32\[2, 3\].*float64"):
        address_table((a.astype(np.float32),), (6,), like)


@pytest.mark.parametrize("size", [1000, PARALLEL_MIN + 1000])
@pytest.mark.parametrize("norm_type", [2.0, INF])
def test_global_norm_is_nan_when_any_element_is_nan_serial_and_parallel(size, norm_type):
    xs = [np.ones(size), np.ones(5)]
    xs[0][size - 7] = np.nan  # deep inside the last work item
    got = run_op("global_norm", {"X": xs}, {"norm_type": norm_type})["Out"]
    assert np.isnan(got).all()


@given(st.lists(st.integers(0, 40), max_size=8), st.integers(1, 16))
def test_chunk_table_covers_every_element_once_in_equal_work_items(sizes, chunk):
    tid, start, stop, parts = chunk_table([(n,) for n in sizes], chunk)
    seen = [np.zeros(n, int) for n in sizes]
    for t, a, b in zip(tid, start, stop):
        assert a < b
        seen[t][a:b] += 1
    assert all((s == 1).all() for s in seen)
    work = [int(np.sum(stop[p:q] - start[p:q])) for p, q in zip(parts[:-1], parts[1:])]
    assert all(w == chunk for w in work[:-1]) and (not work or 0 < work[-1] <= chunk)
    assert parts[0] == 0 and parts[-1] == len(tid)


def test_layer_clip_by_global_norm_forward_and_gradient():
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(4)
    block = fl.default_main_program().global_block()
    va = block.create_var(name="a", shape=a.shape, dtype="float64", is_data=True, stop_gradient=False)
    vb = block.create_var(name="b", shape=b.shape, dtype="float64", is_data=True, stop_gradient=False)
    (ca, cb), norm = layers.clip_by_global_norm([va, vb], clip_norm=1.0)
    loss = layers.mean(layers.sums([layers.mean(ca), layers.mean(cb)]))
    ga, gb = fl.gradients([loss], [va, vb])
    exe = fl.Executor()

    def f(a, b):
        n = np.sqrt(np.sum(a ** 2) + np.sum(b ** 2))
        s = 1.0 / max(n, 1.0)
        return (a * s).mean() + (b * s).mean(), n, a * s, b * s

    got = exe.run(feed={"a": a, "b": b}, fetch_list=[loss, norm, ca, cb, ga, gb])
    want = f(a, b)
    for k in range(4):
        np.testing.assert_allclose(np.ravel(got[k]), np.ravel(want[k]), rtol=1e-12)
    for arr, grad, other in ((a, got[4], b), (b, got[5], a)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += 1e-6
            lo[idx] -= 1e-6
            args_hi = (hi, other) if arr is a else (other, hi)
            args_lo = (lo, other) if arr is a else (other, lo)
            num[idx] = (f(*args_hi)[0] - f(*args_lo)[0]) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-9)


def test_adaptive_clip_op():
    w, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w[:, 1] *= 100  # a unit with a large weight norm: not clipped

    def ref(Param, X, clipping=0.1, eps=1e-3):
        if X.ndim < 2:
            p2, g2 = Param.reshape(1, -1), X.reshape(1, -1)
        else:
            p2, g2 = Param.reshape(-1, X.shape[-1]), X.reshape(-1, X.shape[-1])
        pn = np.maximum(np.sqrt((p2.astype(np.float64) ** 2).sum(0)), eps) * clipping
        gn = np.sqrt((g2.astype(np.float64) ** 2).sum(0))
        s = np.where(gn > pn, pn / np.where(gn > 0, gn, 1), 1.0)
        return (g2 * s).reshape(X.shape).astype(X.dtype)

    check_op("adaptive_clip", lambda dt: {"Param": w.astype(dt), "X": g.astype(dt)}, ref, {"clipping": 0.1}, wrt=())
    v, gv = rng.standard_normal(5), rng.standard_normal(5) * 10
    check_forward("adaptive_clip", {"Param": v, "X": gv}, ref, {"clipping": 0.1})
    bad = g.copy()
    bad[0, 0] = np.inf
    assert np.isnan(run_op("adaptive_clip", {"Param": w, "X": bad}, {"clipping": 0.1})["Out"]).all()
    # a weight big enough for the parallel kernel, its rows not a multiple of the 64 row blocks
    wl, gl = rng.standard_normal((PARALLEL_MIN // 256 + 37, 256)), rng.standard_normal((PARALLEL_MIN // 256 + 37, 256))
    wl[:, :100] *= 100  # units that are not clipped beside ones that are
    for dt in ("float32", "float64"):
        check_forward("adaptive_clip", {"Param": wl.astype(dt), "X": gl.astype(dt)}, ref, {"clipping": 0.1})
    gl[-1, 3] = np.nan
    assert np.isnan(run_op("adaptive_clip", {"Param": wl, "X": gl}, {"clipping": 0.1})["Out"]).all()


def test_op_errors_name_op_and_vars():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[-1, 3], dtype="float32")
    i = block.create_var(name="i", shape=[3], dtype="int64")
    n = len(block.ops)
    with pytest.raises(ValueError, match=r"clip.*min <= max.*'x'.*\[-1, 3\]"):
        block.append_op("clip", {"X": x}, {"Out": "o"}, {"min": 1.0, "max": 0.0})
    with pytest.raises(ValueError, match="clip_by_norm.*max_norm"):
        block.append_op("clip_by_norm", {"X": x}, {"Out": "o"}, {"max_norm": 0.0})
    with pytest.raises(ValueError, match="global_norm.*float.*'i'"):
        block.append_op("global_norm", {"X": [x, i]}, {"Out": "o"})
    y = block.create_var(name="y", shape=[2, 3], dtype="float32")
    with pytest.raises(ValueError, match=r"adaptive_clip.*one shape.*'y'.*\[2, 3\]"):
        block.append_op("adaptive_clip", {"Param": y, "X": block.create_var(name="z", shape=[3], dtype="float32")},
                        {"Out": "o"})
    assert len(block.ops) == n and "o" not in block.vars


def test_infer_keeps_batch_dim_and_dtype():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=[-1, 3], dtype="float64")
    assert layers.clip(x, -1, 1).shape == (-1, 3) and layers.clip(x, -1, 1).dtype == np.float64
    assert layers.clip_by_norm(x, 1.0).shape == (-1, 3)
    (c,), norm = layers.clip_by_global_norm([x], 2.0)
    assert c.shape == (-1, 3) and norm.shape == (1,) and norm.dtype == np.float64


# ---- clip objects ------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: C.ErrorClipByValue(max=-1.0), lambda: C.ErrorClipByValue(max=1.0, min=2.0),
    lambda: C.ErrorClipByValue(max=float("nan")), lambda: C.GradientClipByValue(1.0, min=float("nan")),
    lambda: C.GradientClipByValue(max=0.0, min=0.5), lambda: C.GradientClipByNorm(0.0),
    lambda: C.GradientClipByNorm(-1.0), lambda: C.GradientClipByGlobalNorm(0.0),
    lambda: C.GradientClipByGlobalNorm(float("nan")), lambda: C.GradientClipByNorm(1.0, norm_type=3),
    lambda: C.GradientClipAdaptive(clipping=0.0), lambda: C.GradientClipAutoClip(percentile=101),
])
def test_bad_arguments_raise_when_made(make):
    with pytest.raises(ValueError):
        make()


def test_min_defaults_to_minus_max():
    assert (C.ErrorClipByValue(2.0).min, C.GradientClipByValue(3).min) == (-2.0, -3.0)


def clip_grads(grads, default=None, clips=None, need_clip=(), dtype="float64", fetch_extra=()):
    """Build params with the given gradients fed as data; returns (clipped arrays by name, program, pairs)."""
    main, startup = fl.Program(), fl.Program()
    clips = clips or {}
    with fl.program_guard(main, startup):
        block = main.global_block()
        pairs = []
        for name, g in grads.items():
            p = block.create_parameter(g.shape, dtype, name=name,
                                       attr=fl.ParamAttr(gradient_clip=clips.get(name), need_clip=name not in need_clip))
            pairs.append((p, block.create_var(name=name + "@GRAD", shape=g.shape, dtype=dtype, is_data=True)))
        out = C._minimize_clip(pairs, default)
    exe = fl.Executor()
    exe.run(startup)
    extra = [f(main) for f in fetch_extra]
    vals = exe.run(main, feed={n + "@GRAD": g.astype(dtype) for n, g in grads.items()},
                   fetch_list=[g for _, g in out] + extra)
    return dict(zip(grads, vals)), vals[len(grads):], out


def ref_global(gs, c):
    n = math.sqrt(sum(float(np.sum(g ** 2)) for g in gs))
    return [g * (c / max(n, c)) for g in gs], n


def test_by_value_and_by_norm_per_gradient():
    a, b = rng.standard_normal((3, 4)) * 3, rng.standard_normal(5) * 0.01
    got, _, _ = clip_grads({"a": a, "b": b}, C.GradientClipByValue(0.5, -0.2))
    np.testing.assert_array_equal(got["a"], np.clip(a, -0.2, 0.5))
    np.testing.assert_array_equal(got["b"], np.clip(b, -0.2, 0.5))
    got, _, _ = clip_grads({"a": a, "b": b}, C.GradientClipByNorm(1.0))
    np.testing.assert_allclose(got["a"], a / np.linalg.norm(a), rtol=1e-12)  # above: scaled to norm 1
    np.testing.assert_array_equal(got["b"], b)  # below: untouched


@pytest.mark.parametrize("c", [0.5, 1e3])
def test_global_norm_above_and_below_with_fetchable_norm(c):
    gs = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(6), "z": np.zeros((2, 2))}
    clip = C.GradientClipByGlobalNorm(c)
    got, (norm,), _ = clip_grads(gs, clip, fetch_extra=[lambda p: C.global_norm_var(program=p)])
    want, n = ref_global(list(gs.values()), c)
    for k, w in zip(gs, want):
        np.testing.assert_allclose(got[k], w, rtol=1e-12)
    np.testing.assert_allclose(norm, [n], rtol=1e-12)
    assert not got["z"].any()  # a zero gradient stays zero
    assert C.global_norm_var(program=fl.default_main_program()) is None  # nothing remembered by the clip object


def test_all_zero_gradients_stay_zero_without_nan():
    for clip in (C.GradientClipByGlobalNorm(1.0), C.GradientClipByNorm(1.0)):
        got, _, _ = clip_grads({"a": np.zeros(3), "b": np.zeros((2, 2))}, clip, dtype="float32")
        assert all(np.array_equal(g, np.zeros_like(g)) for g in got.values())


def test_one_huge_gradient_among_small_ones():
    gs = {"a": np.full(4, 1e-3), "b": np.full(3, 1e30), "c": rng.standard_normal(5) * 1e-2}
    got, _, _ = clip_grads(gs, C.GradientClipByGlobalNorm(1.0))
    want, _ = ref_global(list(gs.values()), 1.0)
    for k, w in zip(gs, want):
        np.testing.assert_allclose(got[k], w, rtol=1e-12)
    assert abs(np.linalg.norm(np.concatenate([g.ravel() for g in got.values()])) - 1.0) < 1e-12


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_makes_the_norm_clips_group_nan_and_value_clip_saturates(bad):
    a, b, other = rng.standard_normal(4), rng.standard_normal(3), rng.standard_normal(2)
    a[1] = bad
    clips = {"other": C.GradientClipByGlobalNorm(1.0, group_name="g2")}
    got, _, _ = clip_grads({"a": a, "b": b, "other": other}, C.GradientClipByGlobalNorm(1.0), clips)
    assert np.isnan(got["a"]).all() and np.isnan(got["b"]).all()
    np.testing.assert_allclose(got["other"], ref_global([other], 1.0)[0][0], rtol=1e-12)  # other group unharmed
    got, _, _ = clip_grads({"a": a}, C.GradientClipByNorm(1.0), dtype="float32")
    assert np.isnan(got["a"]).all()
    got, _, _ = clip_grads({"a": a}, C.GradientClipByValue(0.5))
    want = np.clip(a, -0.5, 0.5)
    np.testing.assert_array_equal(got["a"], want)  # NaN stays NaN, +-Inf saturate


def test_groups_are_independent_and_conflicting_clip_norms_raise():
    gs = {"a": rng.standard_normal(4) * 3, "b": rng.standard_normal(3) * 3, "c": rng.standard_normal(5) * 3}
    clips = {"a": C.GradientClipByGlobalNorm(1.0, "g1"), "b": C.GradientClipByGlobalNorm(1.0, "g1"),
             "c": C.GradientClipByGlobalNorm(0.5, "g2")}
    got, _, _ = clip_grads(gs, clips=clips)
    want_ab, _ = ref_global([gs["a"], gs["b"]], 1.0)
    np.testing.assert_allclose(got["a"], want_ab[0], rtol=1e-12)
    np.testing.assert_allclose(got["b"], want_ab[1], rtol=1e-12)
    np.testing.assert_allclose(got["c"], ref_global([gs["c"]], 0.5)[0][0], rtol=1e-12)
    clips["b"] = C.GradientClipByGlobalNorm(2.0, "g1")
    with pytest.raises(ValueError, match="g1"):
        clip_grads(gs, clips=clips)


def test_need_clip_false_is_neither_clipped_nor_counted():
    gs = {"a": rng.standard_normal(4) * 3, "frozen": np.full(3, 100.0), "b": rng.standard_normal(2) * 3}
    got, (norm,), _ = clip_grads(gs, C.GradientClipByGlobalNorm(1.0), need_clip={"frozen"},
                                 fetch_extra=[lambda p: C.global_norm_var(program=p)])
    np.testing.assert_array_equal(got["frozen"], gs["frozen"])
    want, n = ref_global([gs["a"], gs["b"]], 1.0)
    np.testing.assert_allclose(norm, [n], rtol=1e-12)
    np.testing.assert_allclose(got["a"], want[0], rtol=1e-12)


def test_own_clip_wins_over_grad_clip_and_params_are_not_mutated():
    gs = {"a": rng.standard_normal(4) * 3, "b": rng.standard_normal(3) * 3, "c": rng.standard_normal(2) * 3}
    got, (norm,), out = clip_grads(gs, C.GradientClipByGlobalNorm(1.0), clips={"b": C.GradientClipByValue(0.1)},
                                   fetch_extra=[lambda p: C.global_norm_var(program=p)])
    np.testing.assert_array_equal(got["b"], np.clip(gs["b"], -0.1, 0.1))
    want, n = ref_global([gs["a"], gs["c"]], 1.0)  # b counts in no other group
    np.testing.assert_allclose(norm, [n], rtol=1e-12)
    np.testing.assert_allclose(got["c"], want[1], rtol=1e-12)
    assert out[0][0].gradient_clip_attr is None  # grad_clip was resolved, not stored on the parameter


def test_set_gradient_clip_and_append_gradient_clip_ops():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        block = main.global_block()
        ps = [block.create_parameter([3], "float64", name=n) for n in ("p", "q")]
        frozen = block.create_parameter([3], "float64", name="f", attr=fl.ParamAttr(trainable=False))
        clip = C.GradientClipByNorm(1.0)
        C.set_gradient_clip(clip)
        assert [p.gradient_clip_attr for p in ps] == [clip, clip] and frozen.gradient_clip_attr is None
        C.set_gradient_clip(C.GradientClipByValue(1.0), param_list=["q"])
        assert isinstance(ps[1].gradient_clip_attr, C.GradientClipByValue)
        pairs = [(p, block.create_var(name=p.name + "@GRAD", shape=[3], dtype="float64", is_data=True)) for p in ps]
        out = C.append_gradient_clip_ops(pairs)
    assert [g.name for _, g in out] == ["p@GRAD@CLIP", "q@GRAD@CLIP"]
    assert [op.type for op in block.ops] == ["clip_by_norm", "clip"]
    assert all(op.role == "grad_clip" for op in block.ops)
    with pytest.raises(TypeError):
        C.set_gradient_clip("not a clip")


def test_inf_norm_global_and_per_gradient():
    gs = {"a": rng.standard_normal(4) * 3, "b": rng.standard_normal(3)}
    got, _, _ = clip_grads(gs, C.GradientClipByGlobalNorm(0.5, norm_type=INF))
    m = max(np.abs(g).max() for g in gs.values())
    for k in gs:
        np.testing.assert_allclose(got[k], gs[k] * 0.5 / m, rtol=1e-12)
    got, _, _ = clip_grads(gs, C.GradientClipByNorm(0.5, norm_type=INF))
    np.testing.assert_allclose(got["b"], gs["b"] * 0.5 / max(np.abs(gs["b"]).max(), 0.5), rtol=1e-12)


def test_skip_nonfinite_zeroes_gradients_counts_and_flags():
    a = rng.standard_normal(4)
    a[0] = np.nan
    clip = C.GradientClipByGlobalNorm(1.0, skip_nonfinite=True)
    got, (count, found), out = clip_grads({"a": a, "b": rng.standard_normal(3)}, clip,
                                          fetch_extra=[lambda p: C.skipped_steps_var(p), lambda p: p.global_block().var(
                                              C.FOUND_NONFINITE)])
    assert not got["a"].any() and not got["b"].any()
    assert count.tolist() == [1] and found.tolist() == [True]
    assert C.update_gate(out) == C.FOUND_NONFINITE
    assert C.update_gate([(p, g) for p, g in out][:0] + [(out[0][0], out[0][1])]) == C.FOUND_NONFINITE
    _, _, plain = clip_grads({"a": a}, C.GradientClipByGlobalNorm(1.0))
    assert C.update_gate(plain) is None


def test_autoclip_uses_the_percentile_of_the_norm_history():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        block = main.global_block()
        p = block.create_parameter([3], "float64", name="p")
        g = block.create_var(name="p@GRAD", shape=[3], dtype="float64", is_data=True)
        clip = C.GradientClipAutoClip(percentile=25, history_size=4)
        (_, out), = C._minimize_clip([(p, g)], clip)
    exe = fl.Executor()
    exe.run(startup)
    seen = []
    for step, scale in enumerate([1.0, 5.0, 2.0, np.nan, 0.5, 8.0, 3.0]):
        grad = np.array([scale, 0.0, 0.0])
        got, = exe.run(main, feed={"p@GRAD": grad}, fetch_list=[out])
        n = abs(scale)
        if np.isfinite(n):
            seen.append(n)
            c = np.percentile(seen[-4:], 25)
            np.testing.assert_allclose(got, grad * (c / max(n, c)), rtol=1e-12, err_msg=f"step {step}")
        else:
            assert np.isnan(got).all()
    count = fl.fetch_var("autoclip@AUTOCLIP_COUNT")
    assert count.tolist() == [6]


# ---- the two bookkeeping ops behind skip_nonfinite and AutoClip, checked directly --------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_count_nonfinite_op_flags_and_counts(dtype):
    for norms, bad in [([1.0, 2.0], False), ([1.0, np.inf], True), ([np.nan, 3.0], True)]:
        got = run_op("count_nonfinite", {"X": [np.array([v], dtype) for v in norms], "Count": np.array([4])},
                     outputs=("Found", "CountOut"))
        np.testing.assert_array_equal(got["Found"], [bad])
        np.testing.assert_array_equal(got["CountOut"], [4 + bad])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_autoclip_threshold_op_matches_numpy_percentile(dtype):
    history = np.array([3.0, 1.0, 4.0, 0.0], dtype)
    for norm, count, seen in [(2.0, 3, [3.0, 1.0, 4.0, 2.0]), (5.0, 6, [3.0, 1.0, 5.0, 0.0]),
                              (np.nan, 2, [3.0, 1.0])]:
        got = run_op("autoclip_threshold", {"Norm": np.array([norm], dtype), "History": history,
                                            "Count": np.array([count])}, {"percentile": 30.0},
                     outputs=("ClipNorm", "HistoryOut", "CountOut"))
        np.testing.assert_allclose(got["ClipNorm"], [np.percentile(np.array(seen), 30.0)], rtol=1e-6)
        assert got["ClipNorm"].dtype == dtype
        np.testing.assert_array_equal(got["CountOut"], [count + np.isfinite(norm)])


def test_bookkeeping_ops_reject_bad_inputs_at_build_time():
    block = fl.default_main_program().global_block()
    norm = block.create_var(name="n", shape=[1], dtype="float32")
    hist = block.create_var(name="h", shape=[8], dtype="float32")
    bad_count = block.create_var(name="c", shape=[1], dtype="float32")
    with pytest.raises(ValueError, match="autoclip_threshold.*Count.*'c'"):
        block.append_op("autoclip_threshold", {"Norm": norm, "History": hist, "Count": bad_count},
                        {"ClipNorm": "cn", "HistoryOut": "h", "CountOut": "c"})
    with pytest.raises(ValueError, match="percentile"):
        block.append_op("autoclip_threshold", {"Norm": norm, "History": hist, "Count": bad_count},
                        {"ClipNorm": "cn", "HistoryOut": "h", "CountOut": "c"}, {"percentile": 150.0})
    assert "cn" not in block.vars
