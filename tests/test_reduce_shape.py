"""reduce_sum/reduce_mean and the shape ops: reshape, concat, split, transpose, assign."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from op_test import check_forward, check_op

rng = np.random.default_rng(3)
X234 = rng.standard_normal((2, 3, 4))


def _np_reduce(fn, dim, keep):
    def ref(X):
        axis = None if dim is None else tuple(dim)
        out = np.asarray(fn(X, axis=axis, keepdims=keep))
        return (out if out.ndim else out.reshape(1)).astype(X.dtype)

    return ref


@pytest.mark.parametrize("op,fn", [("reduce_sum", np.sum), ("reduce_mean", np.mean), ("reduce_max", np.max),
                                   ("reduce_min", np.min)])
@pytest.mark.parametrize("dim,keep", [(None, False), (None, True), ([0], False), ([1], True), ([-1], False),
                                      ([0, 2], False), ([0, 2], True), ([1, 2], False), ([0, 1, 2], False)])
def test_reduce(op, fn, dim, keep):
    attrs = {"dim": dim or [], "keep_dim": keep, "reduce_all": dim is None}
    check_op(op, lambda dt: {"X": X234.astype(dt)}, _np_reduce(fn, dim, keep), attrs=attrs)


def test_reduce_all_shape_is_one_and_mean_value():
    x = layers.data(name="x", shape=[3, 4], dtype="float32")
    s, m = layers.reduce_sum(x), layers.reduce_mean(x, dim=[-1], keep_dim=True)
    assert s.shape == (1,) and m.shape == (-1, 3, 1)
    xs = rng.standard_normal((2, 3, 4)).astype(np.float32)
    got_s, got_m = fl.Executor().run(feed={"x": xs}, fetch_list=[s, m])
    np.testing.assert_allclose(got_s, [xs.sum()], rtol=1e-5)
    np.testing.assert_allclose(got_m, xs.mean(-1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("dim,keep,out", [([1], False, (-1, 4)), ([0], False, (3, 4)), (None, False, (1,)),
                                          ([1], True, (-1, 1, 4)), ([-1, -2], False, (-1,)), (None, True, (1, 1, 1))])
def test_reduce_infer_with_batch_dim(dim, keep, out):
    for dt in ("float32", "float64"):
        x = layers.data(name=f"x{dt}", shape=[3, 4], dtype=dt)
        for layer in (layers.reduce_sum, layers.reduce_mean, layers.reduce_max, layers.reduce_min):
            o = layer(x, dim=dim, keep_dim=keep)
            assert o.shape == out and o.dtype == np.dtype(dt)


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_max"])
@pytest.mark.parametrize("dim,msg", [([3], "out of range"), ([-4], "out of range"), ([0, -3], "repeats")])
def test_reduce_bad_dims(op, dim, msg):
    block = fl.default_main_program().global_block()
    x = block.create_var(name="xr", shape=[-1, 3, 4], dtype="float32")
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=rf"{op}.*{msg}.*'xr' shape=\[-1, 3, 4\]"):
        block.append_op(op, {"X": x}, {"Out": "o"}, {"dim": dim})
    assert len(block.ops) == n_ops and "o" not in block.vars


# --- reshape ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,want", [([4, 6], (4, 6)), ([-1, 8], (3, 8)), ([0, 0, 2, 2], (2, 3, 2, 2)),
                                        ([0, -1], (2, 12)), ([24], (24,))])
def test_reshape(shape, want):
    check_op("reshape", lambda dt: {"X": X234.astype(dt)}, lambda X: X.reshape(want), attrs={"shape": shape})


@pytest.mark.parametrize("xs,shape,out", [((-1, 6), [-1, 2, 3], (-1, 2, 3)), ((-1, 6), [0, 2, 3], (-1, 2, 3)),
                                          ((2, 6), [-1, 4], (3, 4)), ((-1, 6), [-1], (-1,)),
                                          ((-1, 2, 3), [0, 6], (-1, 6)), ((-1, 6), [12, 3], (12, 3))])
def test_reshape_infer(xs, shape, out):
    block = fl.default_main_program().global_block()
    x = block.create_var(name="x", shape=xs, dtype="float64")
    o = layers.reshape(x, shape)
    assert o.shape == out and o.dtype == np.float64


@pytest.mark.parametrize("xs,shape,msg", [((2, 6), [5, -1], "divide"), ((2, 6), [-1, -1], "more than one"),
                                          ((-1, 6), [4, 5], "counts differ"), ((2, 3), [0, 0, 0], "does not have"),
                                          ((2, 6), [3, 5], "counts differ"), ((2, 6), [-2, 6], "must be")])
def test_reshape_errors(xs, shape, msg):
    block = fl.default_main_program().global_block()
    x = block.create_var(name="xq", shape=xs, dtype="float32")
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=rf"reshape.*{msg}.*'xq' shape={list(xs)}".replace("[", r"\[")):
        block.append_op("reshape", {"X": x}, {"Out": "o"}, {"shape": shape})
    assert len(block.ops) == n_ops and "o" not in block.vars


def test_reshape_error_at_run_time_with_fed_batch():
    x = layers.data(name="x", shape=[6], dtype="float32")
    o = layers.reshape(x, [-1, 4])
    with pytest.raises(ValueError, match="reshape"):
        fl.Executor().run(feed={"x": np.zeros((3, 6), np.float32)}, fetch_list=[o])


def test_reshape_view_and_source_both_readable():
    x = layers.data(name="x", shape=[6], dtype="float32")
    x.stop_gradient = False
    r = layers.reshape(x, [-1, 2, 3])
    y = layers.relu(x) + layers.reshape(layers.exp(r), [-1, 6])
    dx, = fl.gradients([y], [x])
    xs = rng.standard_normal((2, 6)).astype(np.float32)
    got_r, got_y, got_dx = fl.Executor().run(feed={"x": xs}, fetch_list=[r, y, dx])
    np.testing.assert_array_equal(got_r, xs.reshape(2, 2, 3))
    np.testing.assert_allclose(got_y, np.maximum(xs, 0) + np.exp(xs), rtol=1e-6)
    np.testing.assert_allclose(got_dx, (xs > 0) + np.exp(xs), rtol=1e-6)


# --- concat / split --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = {0: [(1, 3, 2), (2, 3, 2), (1, 3, 2)], 1: [(2, 1, 2), (2, 3, 2), (2, 2, 2)],
              -1: [(2, 3, 1), (2, 3, 2), (2, 3, 3)]}[axis]
    xs = [rng.standard_normal(s) for s in shapes]
    check_op("concat", lambda dt: {"X": [a.astype(dt) for a in xs]}, lambda X: np.concatenate(X, axis),
             attrs={"axis": axis})


def test_concat_gradient_for_some_inputs_only():
    a, b, c = (layers.data(name=n, shape=[k], dtype="float64") for n, k in (("a", 2), ("b", 3), ("c", 1)))
    out = layers.concat([a, b, c], axis=1)
    assert out.shape == (-1, 6)
    g = layers.data(name="g", shape=[6], dtype="float64")
    da, dc = fl.gradients([out], [a, c], target_gradients=[g])
    gs = rng.standard_normal((4, 6))
    feed = {"a": np.zeros((4, 2)), "b": np.zeros((4, 3)), "c": np.zeros((4, 1)), "g": gs}
    got_a, got_c = fl.Executor().run(feed=feed, fetch_list=[da, dc])
    np.testing.assert_array_equal(got_a, gs[:, :2])
    np.testing.assert_array_equal(got_c, gs[:, 5:])


def test_concat_infer_and_errors():
    block = fl.default_main_program().global_block()
    a = block.create_var(name="ca", shape=[-1, 3], dtype="float32")
    b = block.create_var(name="cb", shape=[-1, 2], dtype="float32")
    assert layers.concat([a, b], axis=1).shape == (-1, 5)
    assert layers.concat([a, a], axis=0).shape == (-1, 3)
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"concat.*'cb' is \[-1, 2\].*'ca' is \[-1, 3\]"):
        block.append_op("concat", {"X": [a, b]}, {"Out": "o"}, {"axis": 0})
    with pytest.raises(ValueError, match=r"concat.*axis=2 is out of range"):
        block.append_op("concat", {"X": [a, b]}, {"Out": "o"}, {"axis": 2})
    assert len(block.ops) == n_ops and "o" not in block.vars


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("parts,dim,sizes", [(3, 1, [2, 2, 2]), ([1, -1, 2], 1, [1, 3, 2]), (2, 0, [2, 2]),
                                             ([4, 2], -1, [4, 2])])
def test_split_forward_and_gradient(dtype, parts, dim, sizes):
    x = layers.data(name="x", shape=[4, 6] if dim != 1 else [3, 6], dtype=dtype, append_batch_size=False)
    x.stop_gradient = False
    outs = layers.split(x, parts, dim=dim)
    assert [o.shape[dim] for o in outs] == sizes
    # gradient only through the first and last parts: the middle ones contribute zeros
    gvars = [layers.data(name=f"g{k}", shape=list(outs[k].shape), dtype=dtype, append_batch_size=False)
             for k in (0, len(outs) - 1)]
    dx, = fl.gradients([outs[0], outs[-1]], [x], target_gradients=gvars)
    xs = rng.standard_normal(x.shape).astype(dtype)
    gs = [rng.standard_normal(o.shape).astype(dtype) for o in (outs[0], outs[-1])]
    got = fl.Executor().run(feed={"x": xs, "g0": gs[0], f"g{len(outs) - 1}": gs[1]}, fetch_list=outs + [dx])
    want = np.split(xs, np.cumsum(sizes)[:-1], axis=dim)
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, w)
    want_dx = np.zeros_like(xs)
    idx = [slice(None)] * 2
    idx[dim] = slice(0, sizes[0])
    want_dx[tuple(idx)] = gs[0]
    idx[dim] = slice(xs.shape[dim] - sizes[-1], None)
    want_dx[tuple(idx)] += gs[1] if len(sizes) > 1 else 0
    np.testing.assert_array_equal(got[-1], want_dx)


def test_split_infer_and_errors():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="xs", shape=[-1, 6], dtype="float32")
    assert [o.shape for o in layers.split(x, 3)] == [(-1, 2)] * 3
    assert [o.shape for o in layers.split(x, [1, -1])] == [(-1, 1), (-1, 5)]
    assert [o.shape for o in layers.split(x, 2, dim=0)] == [(-1, 6)] * 2
    n_ops, n_vars = len(block.ops), len(block.vars)
    with pytest.raises(ValueError, match=r"split.*size 6 does not split into 4.*'xs' shape=\[-1, 6\]"):
        layers.split(x, 4)
    with pytest.raises(ValueError, match=r"split.*sum to 5"):
        layers.split(x, [2, 3])
    with pytest.raises(ValueError, match=r"split.*at most one -1"):
        layers.split(x, [-1, -1])
    assert len(block.ops) == n_ops and len(block.vars) == n_vars


# --- transpose / assign ----------------------------------------------------------------------------------

@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 0, 1), (0, 1, 2), (2, 1, 0)])
def test_transpose(perm):
    check_op("transpose", lambda dt: {"X": X234.astype(dt)}, lambda X: np.transpose(X, perm), attrs={"axis": perm})


@pytest.mark.parametrize("shape, perm", [((70, 45), (1, 0)), ((3, 40, 37), (2, 1, 0)), ((2, 33, 3, 65), (0, 3, 2, 1))])
def test_transpose_larger_than_a_tile(shape, perm):
    """Moving the last axis copies in 32 x 32 tiles: full and partial tiles, several per matrix."""
    x = rng.standard_normal(shape)
    check_forward("transpose", {"X": x}, lambda X: np.transpose(X, perm), attrs={"axis": perm})


def test_transpose_of_attention_heads_copies_rows():
    """[B, T, H, dh] -> [B, H, T, dh] and back (the last axis stays: a contiguous inner loop), also on a view."""
    x = rng.standard_normal((2, 5, 3, 4))
    check_op("transpose", lambda dt: {"X": x.astype(dt)}, lambda X: X.transpose(0, 2, 1, 3),
             attrs={"axis": (0, 2, 1, 3)})
    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        v = layers.data("v", [5, 12], dtype="float64")
        heads = layers.transpose(layers.reshape(v, [0, 0, 3, 4]), [0, 2, 1, 3])
        back = layers.reshape(layers.transpose(heads, [0, 2, 1, 3]), [0, 0, 12])
    xs = rng.standard_normal((2, 5, 12))
    h, b = fl.Executor().run(main, feed={"v": xs}, fetch_list=[heads, back])
    np.testing.assert_array_equal(h, xs.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(b, xs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, perm", [((4, 9, 3, 33), (0, 2, 1, 3)), ((3, 40, 37), (2, 0, 1)), ((2, 33, 3, 65), (0, 3, 2, 1)),
                                         ((70, 45), (1, 0)), ((3, 100), (1, 0))])
def test_transpose_parallel_twin_matches_numpy(monkeypatch, shape, perm, dtype):
    """Above the parallel threshold the (d2, d3) blocks go to threads in 32-row tiles (`permute4_parallel`):
    keeping the last axis (rows) or moving it (tiles), a 2-D transpose (one block, ragged tiles) too,
    against NumPy, bit for bit; the serial kernel gives the same."""
    from fluidlite.kernels import shape as K
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 64)
    x = rng.standard_normal(shape).astype(dtype)
    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        v = layers.data("v", list(shape), dtype=np.dtype(dtype).name, append_batch_size=False)
        t = layers.transpose(v, list(perm))
    got, = fl.Executor().run(main, feed={"v": x}, fetch_list=[t])
    np.testing.assert_array_equal(got, np.transpose(x, perm))
    dims = (1,) * (4 - len(shape)) + tuple(shape[p] for p in perm)
    strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    st = (0,) * (4 - len(shape)) + tuple(strides[p] for p in perm)
    serial, threaded = K.permute4(x, *dims, *st), K.permute4_parallel(x, *dims, *st)
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_array_equal(threaded.reshape(np.transpose(x, perm).shape), np.transpose(x, perm))


@pytest.mark.parametrize("perm", [(0, 3, 1, 2, 4), (4, 0, 3, 1, 2)])
def test_transpose_of_rank_5_keeping_or_moving_the_last_axis(perm):
    """Ranks above 4 take the general kernels (rows, or element by element)."""
    x = rng.standard_normal((2, 3, 1, 2, 3))
    check_forward("transpose", {"X": x}, lambda X: np.transpose(X, perm), attrs={"axis": perm})


def test_transpose_infer_and_errors():
    block = fl.default_main_program().global_block()
    x = block.create_var(name="xt", shape=[-1, 3, 4], dtype="float32")
    assert layers.transpose(x, [2, 0, 1]).shape == (4, -1, 3)
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"transpose.*not a permutation.*'xt' shape=\[-1, 3, 4\]"):
        layers.transpose(x, [0, 0, 1])
    with pytest.raises(ValueError, match=r"transpose.*not a permutation"):
        layers.transpose(x, [1, 0])
    assert len(block.ops) == n_ops


def test_assign():
    check_op("assign", lambda dt: {"X": X234.astype(dt)}, lambda X: X.copy())
    x = layers.data(name="x", shape=[3], dtype="float32")
    assert layers.assign(x).shape == (-1, 3)
    with pytest.raises(TypeError, match="assign"):
        layers.assign("not a tensor")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reduce_max_splits_the_gradient_among_ties_and_propagates_nan(dtype):
    x = layers.data(name="x", shape=[4], dtype=dtype, stop_gradient=False)
    m = layers.reduce_max(x, dim=1)
    g = layers.data(name="g", shape=[], dtype=dtype)
    dx, = fl.gradients([m], [x], target_gradients=[g])
    xs = np.array([[1, 3, 3, 0], [np.nan, 1, 2, 3], [5, 5, 5, 5]], dtype)
    out, grad = fl.Executor().run(feed={"x": xs, "g": np.array([2, 1, 3], dtype)}, fetch_list=[m, dx])
    np.testing.assert_array_equal(out, np.array([3, np.nan, 5], dtype))
    np.testing.assert_array_equal(grad[0], [0, 1, 1, 0])
    np.testing.assert_array_equal(grad[2], [0.75] * 4)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_flatten(axis):
    want = (int(np.prod(X234.shape[:axis])), int(np.prod(X234.shape[axis:])))
    check_op("flatten", lambda dt: {"X": X234.astype(dt)}, lambda X: X.reshape(want), attrs={"axis": axis})


def test_flatten_infer_and_errors():
    x = layers.data(name="x", shape=[3, 4, 5], dtype="float64")
    assert layers.flatten(x).shape == (-1, 60) and layers.flatten(x, axis=2).shape == (-1, 20)
    assert layers.flatten(x, axis=0).shape == (1, -1) and layers.flatten(x, axis=4).shape == (-1, 1)
    assert layers.flatten(x).dtype == np.float64
    with pytest.raises(ValueError, match=r"flatten.*axis=5 must be in \[0, 4\].*'x' shape=\[-1, 3, 4, 5\]"):
        layers.flatten(x, axis=5)
