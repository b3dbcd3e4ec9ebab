"""The streaming-store clip kernels (kernels/clip_stream.py, kernels/stream.py) against float64 NumPy
references, at every alignment of the output, and the ops choosing them above the cache size."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

import fluidlite as fl
from fluidlite import _memory
from fluidlite.kernels import clip_stream as KS
from fluidlite.kernels.stream import PAGE, PAGES, line_elements, line_head, stream_line
from fluidlite.ops import clip_ops
from fluidlite.ops.clip_ops import address_table, chunk_table

DTYPES = [np.float32, np.float64]


def _at_offset(n, dtype, off):
    """n elements of `dtype` starting `off` elements after a 64-byte boundary."""
    raw = np.full(n + off + 64, -7.0, dtype)
    head = (-raw.ctypes.data) % 64 // raw.itemsize
    return raw[head + off:head + off + n]


@pytest.mark.parametrize("dtype", DTYPES)
def test_line_head_and_line_elements(dtype):
    lanes = 64 // np.dtype(dtype).itemsize
    for off in range(lanes):
        a = _at_offset(40, dtype, off)
        h = line_head(a)
        assert h == (lanes - off) % lanes and (a[h:].ctypes.data % 64 == 0)
    assert line_head(_at_offset(3, dtype, 1)) == 3  # no line boundary inside
    odd = np.zeros(8 * 40 + 1, np.uint8)[1:].view(dtype)  # elements never start a line
    assert line_head(odd) == odd.size
    assert njit(lambda a: line_elements(a))(odd) == lanes


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_into_streamed_matches_numpy_at_every_alignment(dtype):
    rng = np.random.default_rng(1)
    lo, hi = dtype(-0.5), dtype(0.75)
    # sizes around a line, a buffer, the pages written in turn, and a parallel work item (KS.ITEM elements)
    turn = PAGES * PAGE // np.dtype(dtype).itemsize
    for n in (0, 1, 15, 17, 100, turn - 1, 2 * turn + 19, KS.ITEM + 37):
        x = rng.standard_normal(n).astype(dtype)
        if n > 3:
            x[:3] = [np.nan, np.inf, -np.inf]
        want = np.clip(x.astype(np.float64), float(lo), float(hi)).astype(dtype)  # NaN stays NaN
        for off in (0, 1, 5) if n < 1000 else (3,):
            out = _at_offset(n, dtype, off)
            assert KS.clip_into_streamed(x, out, lo, hi) is out
            np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_scale_streamed_matches_numpy_with_aliased_and_zeroed_outputs(dtype):
    rng = np.random.default_rng(2)
    turn = PAGES * PAGE // np.dtype(dtype).itemsize
    shapes = [(300, 7), (5,), (1000,), (3, 4), (2 * turn + 77,)]
    xs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    outs = [_at_offset(int(np.prod(s)), dtype, 3).reshape(s) for s in shapes]
    outs[1] = xs[1]  # one output is its input: scaled in place
    pristine = xs[1].copy()
    s = dtype(0.3)
    want = [(x.astype(np.float64) * float(s)).astype(dtype) for x in xs]  # the float32 product rounds once
    like, sizes = np.empty(0, dtype), tuple(int(np.prod(sh)) for sh in shapes)
    _, addrs = address_table(xs, sizes, like)
    _, out_addrs = address_table(outs, sizes, like)
    for item in (512, KS.ITEM):  # work items shorter than the pages written in turn, and longer
        np.copyto(xs[1], pristine)  # scaled in place by the pass before
        for o in outs[2:]:
            o.fill(-7.0)
        KS.multi_scale_streamed(addrs, out_addrs, like, *chunk_table(shapes, item), s, False)
        for o, w in zip(outs, want):
            np.testing.assert_array_equal(o, w)
    KS.multi_scale_streamed(addrs, out_addrs, like, *chunk_table(shapes, 512), s, True)
    assert all(not o.any() for o in outs)


def test_stream_line_refuses_mixed_or_integer_dtypes():
    store = njit(lambda d, s: stream_line(d, 0, s, 0))
    for dst, src in ((np.float32, np.float64), (np.int32, np.int32)):
        with pytest.raises(TypingError):
            store(np.zeros(16, dst), np.zeros(16, src))


def _program(dtype, n, in_place):
    main = fl.Program()
    b = main.global_block()
    g = b.create_var(name="g", shape=(n,), dtype=dtype, persistable=True)
    outs = {k: g if in_place else b.create_var(name=k, shape=(n,), dtype=dtype, persistable=True)
            for k in ("by_value", "by_norm", "global")}
    b.append_op("clip", {"X": g}, {"Out": outs["by_value"]}, {"min": -0.5, "max": 0.5})
    b.append_op("clip_by_norm", {"X": g}, {"Out": outs["by_norm"]}, {"max_norm": 1.0})
    b.append_op("global_norm", {"X": [g]}, {"Out": "norm"})
    b.append_op("scale_by_global_norm", {"X": [g], "GlobalNorm": "norm"}, {"Out": [outs["global"]]}, {"clip_norm": 1.0})
    return main


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_stream_separate_outputs_above_the_threshold_only(dtype, monkeypatch):
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    n = common.PARALLEL_MIN + 7  # the large (parallel) path of clip_by_norm
    calls = []
    for name in ("clip_into_streamed", "multi_scale_streamed"):
        kernel = getattr(KS, name)
        monkeypatch.setattr(KS, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    monkeypatch.setattr(clip_ops, "STREAM_MIN_BYTES", 0)
    g = np.random.default_rng(3).standard_normal(n).astype(dtype) * 0.01
    g64 = g.astype(np.float64)
    scope, exe = fl.Scope(), fl.Executor()
    scope.var("g").get_tensor().set(g)
    main = _program(dtype, n, in_place=False)
    exe.run(main, scope=scope)
    first = scope.get_array("by_value").ctypes.data
    exe.run(main, scope=scope)  # into the scope's old arrays now
    assert scope.get_array("by_value").ctypes.data == first
    norm = np.sqrt((g64 ** 2).sum())
    np.testing.assert_array_equal(scope.get_array("by_value"), np.clip(g64, -0.5, 0.5).astype(dtype))
    rtol = 1e-6 if dtype == "float32" else 1e-13
    for k in ("by_norm", "global"):
        np.testing.assert_allclose(scope.get_array(k), g64 / max(norm, 1.0), rtol=rtol)
    assert sorted(calls) == ["clip_into_streamed"] * 2 + ["multi_scale_streamed"] * 4
    calls.clear()
    exe.run(_program(dtype, n, in_place=True), scope=scope)  # Out is X: nothing to gain from streaming
    assert calls == []
    monkeypatch.setattr(clip_ops, "STREAM_MIN_BYTES", n * np.dtype(dtype).itemsize)  # not above it
    fl.Executor().run(main, scope=scope)  # a new plan, lowered with this threshold
    assert calls == []


def _cache_dir(root, caches):
    for i, (size, cpus) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "size").write_text(size + "\n")
        (d / "shared_cpu_list").write_text(cpus + "\n")
    return str(root)


def test_streaming_threshold_is_three_quarters_of_one_cpus_share_of_the_largest_cache(tmp_path):
    caches = [("48K", "0"), ("2048K", "0"), ("491520K", "0-1")]  # a VM's: 180 MiB by the rule, capped
    assert _memory.stream_min_bytes(_cache_dir(tmp_path / "vm", caches)) == 32 << 20
    caches = [("48K", "0"), ("2048K", "0"), ("40M", "0-1")]
    assert _memory.stream_min_bytes(_cache_dir(tmp_path / "small", caches)) == (40 << 20) // 2 * 3 // 4
    caches = [("32K", "0"), ("1M", "0"), ("32M", "0-7,16-23")]
    assert _memory.stream_min_bytes(_cache_dir(tmp_path / "host", caches)) == (32 << 20) // 16 * 3 // 4
    (tmp_path / "empty").mkdir()
    assert _memory.stream_min_bytes(str(tmp_path / "empty")) == 12 << 20  # no sysfs: a default
    assert _memory.stream_min_bytes() >= 1 << 20  # this machine's
