"""matmul, lookup_table and dropout through the OpTest harness, plus their layers."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from op_test import build_op, check_forward, check_op, run_op

rng = np.random.default_rng(0)


def _np_matmul(tx, ty, alpha):
    def ref(X, Y):
        a = X.swapaxes(-1, -2) if tx and X.ndim > 1 else X
        b = Y.swapaxes(-1, -2) if ty and Y.ndim > 1 else Y
        return (alpha * np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(X.dtype)
    return ref


MATMUL_CASES = [
    ((3, 4), (4, 5), False, False, 1.0),
    ((4, 3), (4, 5), True, False, 2.0),
    ((3, 4), (5, 4), False, True, 1.0),
    ((4, 3), (5, 4), True, True, -0.5),
    ((2, 3, 4), (2, 4, 5), False, False, 1.0),
    ((2, 1, 4, 3), (3, 5, 4), True, True, 1.5),  # batch dims broadcast to [2, 3]
    ((3, 4), (2, 4, 5), False, False, 1.0),  # a plain matrix against a batch
    ((4,), (2, 4, 5), False, False, 1.0),  # 1-D X: a row vector, its dim dropped
    ((2, 3, 4), (4,), False, False, 1.0),  # 1-D Y: a column vector
    ((4,), (4,), False, False, 1.0),  # dot product, shape ()
]


@pytest.mark.parametrize("xs,ys,tx,ty,alpha", MATMUL_CASES)
def test_matmul(xs, ys, tx, ty, alpha):
    x, y = rng.standard_normal(xs), rng.standard_normal(ys)
    check_op("matmul", lambda dt: {"X": x.astype(dt), "Y": y.astype(dt)}, _np_matmul(tx, ty, alpha),
             attrs={"transpose_X": tx, "transpose_Y": ty, "alpha": alpha}, wrt=("X", "Y"))


def test_matmul_large_batch_parallel_kernel_matches_numpy():
    x, y = rng.standard_normal((256, 16, 16)), rng.standard_normal((16, 16))  # 256 matrices, 2**20 multiply-adds
    r = rng.standard_normal((256, 16, 16))
    program, ins, outs = build_op("matmul", {"X": x, "Y": y}, {"alpha": 0.5})
    block = program.global_block()
    rv = block.create_var(name="r", shape=r.shape, dtype="float64", is_data=True)
    gx, gy = fl.gradients([outs["Out"]], [ins["X"][0], ins["Y"][0]], target_gradients=[rv])
    out, dx, dy = fl.Executor().run(program, feed={"in_X_0": x, "in_Y_0": y, "r": r}, fetch_list=[outs["Out"], gx, gy])
    np.testing.assert_allclose(out, 0.5 * x @ y, rtol=1e-12)
    np.testing.assert_allclose(dx, 0.5 * r @ y.T, rtol=1e-12)
    np.testing.assert_allclose(dy, 0.5 * np.einsum("bmk,bmn->kn", x, r), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((6, 5, 4), (6, 7, 4)), ((3, 130, 90), (3, 100, 90))])  # tiny / not tiny
def test_batched_products_with_a_transposed_operand_match_numpy(shapes, dtype):
    """bmm copies a tiny b^T before multiplying (faster in OpenBLAS); both ways against float64 NumPy,
    serial and threaded, with and without a transposed a, and with a broadcast b."""
    from fluidlite.kernels import nn as K

    gen = np.random.default_rng(5)
    (na, m, k), (nb, n, _) = shapes
    a, b = gen.standard_normal((na, m, k)).astype(dtype), gen.standard_normal((nb, n, k)).astype(dtype)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    idx = np.arange(na)
    want = 0.5 * np.einsum("bmk,bnk->bmn", a.astype(np.float64), b.astype(np.float64))
    at = np.ascontiguousarray(a.transpose(0, 2, 1))
    for kernel in (K.bmm, K.bmm_parallel):
        alpha = dtype(0.5)
        np.testing.assert_allclose(kernel(a, b, idx, idx, False, True, alpha), want, **tol)
        np.testing.assert_allclose(kernel(at, b, idx, idx, True, True, alpha), want, **tol)
        one = np.zeros(na, np.int64)  # every matrix of a against b[0]
        np.testing.assert_allclose(kernel(a, b, idx, one, False, True, alpha),
                                   0.5 * np.einsum("bmk,nk->bmn", a.astype(np.float64), b[0].astype(np.float64)), **tol)


def test_matmul_infer_with_batch_dim_and_layer():
    x = layers.data("x", [3, 4])
    y = layers.data("y", [4, 5], append_batch_size=False)
    out = layers.matmul(x, y, transpose_y=False, alpha=2.0)
    assert out.shape == (-1, 3, 5) and out.dtype == np.float32
    t = layers.matmul(x, x, transpose_x=True)
    assert t.shape == (-1, 4, 4)
    xv, yv = rng.standard_normal((2, 3, 4)).astype("float32"), rng.standard_normal((4, 5)).astype("float32")
    got, = fl.Executor().run(feed={"x": xv, "y": yv}, fetch_list=[out])
    np.testing.assert_allclose(got, 2 * xv @ yv, rtol=1e-5)


def test_matmul_errors_name_op_slots_and_shapes():
    block = fl.default_main_program().global_block()
    x = layers.data("x", [3, 4])
    y = layers.data("y", [5, 6], append_batch_size=False)
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"matmul.*inner.*'x'.*\[-1, 3, 4\].*'y'.*\[5, 6\]"):
        layers.matmul(x, y)
    a = block.create_var(name="a", shape=[2, 3, 4], dtype="float32")
    b = block.create_var(name="b", shape=[3, 4, 5], dtype="float32")
    with pytest.raises(ValueError, match=r"matmul.*broadcast.*'a'.*\[2, 3, 4\]"):
        layers.matmul(a, b)
    c = block.create_var(name="c", shape=[4, 5], dtype="float64")
    with pytest.raises(ValueError, match="matmul.*dtypes differ"):
        layers.matmul(a, c)
    assert len(block.ops) == n_ops


# ---------------------------------------------------------------- lookup_table

@pytest.mark.parametrize("ids_shape,pad", [((4, 1), -1), ((2, 3), 2), ((5,), 0)])
def test_lookup_table(ids_shape, pad):
    w = rng.standard_normal((6, 3))
    ids = rng.integers(0, 6, ids_shape).astype(np.int64)
    ids.reshape(-1)[0] = max(pad, 1)  # make sure the padding row (if any) is read

    def ref(W, Ids):
        lead = Ids.shape[:-1] if Ids.shape[-1] == 1 and Ids.ndim > 1 else Ids.shape
        out = W[Ids.reshape(-1)].copy()
        out[Ids.reshape(-1) == pad] = 0
        return out.reshape(lead + (3,))

    check_op("lookup_table", lambda dt: {"W": w.astype(dt), "Ids": ids}, ref, attrs={"padding_idx": pad}, wrt=("W",))


def test_lookup_table_grad_scatter_adds_repeated_ids_and_skips_padding():
    w = rng.standard_normal((5, 2))
    ids = np.array([[1], [3], [1], [0]], np.int64)
    program, ins, outs = build_op("lookup_table", {"W": w, "Ids": ids}, {"padding_idx": 0})
    gw, = fl.gradients([outs["Out"]], [ins["W"][0]])
    got, = fl.Executor().run(program, feed={"in_W_0": w, "in_Ids_0": ids}, fetch_list=[gw])
    np.testing.assert_array_equal(got, np.array([[0, 0], [2, 2], [0, 0], [1, 1], [0, 0]], np.float64))


def test_embedding_layer_out_of_range_id_raises_clearly():
    ids = layers.data("ids", [1], dtype="int64")
    emb = layers.embedding(ids, size=[4, 3], padding_idx=-1)
    assert emb.shape == (-1, 3) and fl.default_main_program().global_block().ops[-1].attrs["padding_idx"] == 3
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    got, = exe.run(feed={"ids": np.array([[0], [3]], np.int64)}, fetch_list=[emb])
    assert np.all(got[1] == 0) and np.any(got[0] != 0)
    with pytest.raises(Exception, match=r"id 7 in Ids='ids' is outside \[0, 4\)"):
        exe.run(feed={"ids": np.array([[1], [7]], np.int64)}, fetch_list=[emb])
    with pytest.raises(ValueError, match="padding_idx"):
        layers.embedding(ids, size=[4, 3], padding_idx=4)


def test_lookup_table_infer_errors():
    block = fl.default_main_program().global_block()
    w = block.create_var(name="w", shape=[5, 3], dtype="float32")
    fids = block.create_var(name="fids", shape=[-1, 1], dtype="float32")
    with pytest.raises(ValueError, match=r"lookup_table.*Ids must be int64.*'fids'.*\[-1, 1\]"):
        block.append_op("lookup_table", {"W": w, "Ids": fids}, {"Out": "o"})
    ids = block.create_var(name="ids", shape=[-1, 7, 1], dtype="int64")
    with pytest.raises(ValueError, match=r"padding_idx=5 is outside"):
        block.append_op("lookup_table", {"W": w, "Ids": ids}, {"Out": "o"}, {"padding_idx": 5})
    op = block.append_op("lookup_table", {"W": w, "Ids": ids}, {"Out": "o"})
    assert block.var("o").shape == (-1, 7, 3) and op.type == "lookup_table"


# ---------------------------------------------------------------- dropout

def _dropout_program(p, impl, seed, shape=(50, 40), dtype="float32"):
    x = layers.data("x", list(shape), dtype=dtype, append_batch_size=False)
    x.stop_gradient = False
    program = fl.default_main_program()
    helper_out = layers.dropout(x, p, seed=seed, dropout_implementation=impl)
    mask = program.global_block().ops[-1].output("Mask")[0]
    return x, helper_out, mask


@pytest.mark.parametrize("impl", ["downgrade_in_infer", "upscale_in_train"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_train_forward_and_grad(impl, dtype):
    p = 0.3
    x, out, mask = _dropout_program(p, impl, seed=11, dtype=dtype)
    block = fl.default_main_program().global_block()
    r = block.create_var(name="r", shape=out.shape, dtype=dtype, is_data=True)
    gx, = fl.gradients([out], [x], target_gradients=[r])
    xv = rng.uniform(0.5, 1.5, (50, 40)).astype(dtype)
    rv = rng.standard_normal((50, 40)).astype(dtype)
    o, m, g = fl.Executor().run(feed={"x": xv, "r": rv}, fetch_list=[out, mask, gx])
    assert o.dtype == m.dtype == g.dtype == dtype
    assert set(np.unique(m)) <= {0, 1} and abs(1 - m.mean() - p) < 0.06
    scale = 1 / (1 - p) if impl == "upscale_in_train" else 1.0
    np.testing.assert_allclose(o, xv * m * scale, rtol=1e-6)
    np.testing.assert_allclose(g, rv * m * scale, rtol=1e-6)


def test_dropout_seed_reproducible_per_plan_but_varies_by_step():
    def masks(seed, steps=2):
        main = fl.Program()
        with fl.program_guard(main, fl.Program()):
            _, out, mask = _dropout_program(0.5, "downgrade_in_infer", seed, shape=(200,))
        exe = fl.Executor()
        xv = np.ones(200, np.float32)
        return [exe.run(main, feed={"x": xv}, fetch_list=[mask])[0] for _ in range(steps)]

    a, b = masks(7), masks(7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # a new mask every step
    assert not np.array_equal(a[0], masks(8)[0])
    c = masks(0)
    assert not np.array_equal(c[0], c[1])


@pytest.mark.parametrize("impl", ["downgrade_in_infer", "upscale_in_train"])
def test_dropout_is_test_op(impl):
    x = rng.standard_normal((3, 4))
    factor = 1.0 if impl == "upscale_in_train" else 0.75
    check_op("dropout", lambda dt: {"X": x.astype(dt)}, lambda X: (X * factor).astype(X.dtype),
             attrs={"dropout_prob": 0.25, "is_test": True, "dropout_implementation": impl})


def test_dropout_clone_for_test_is_deterministic_and_scaled():
    x = layers.data("x", [30])
    h = layers.dropout(x, 0.4, seed=3)
    y = layers.scale(h, 2.0)
    test_program = fl.default_main_program().clone(for_test=True)
    xv = rng.standard_normal((5, 30)).astype("float32")
    exe = fl.Executor()
    r1, = exe.run(test_program, feed={"x": xv}, fetch_list=[y])
    r2, = exe.run(test_program, feed={"x": xv}, fetch_list=[y])
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(r1, 2.0 * 0.6 * xv, rtol=1e-6)
    train, = exe.run(feed={"x": xv}, fetch_list=[y])
    assert np.mean(train == 0) > 0.2  # the original still drops


def test_dropout_bad_attrs():
    x = layers.data("x", [3])
    with pytest.raises(ValueError, match=r"dropout.*'dropout_prob'=1.5.*\[0, 1\)"):
        layers.dropout(x, 1.5)
    with pytest.raises(ValueError, match="dropout.*dropout_implementation"):
        layers.dropout(x, 0.5, dropout_implementation="sideways")
    i = layers.data("i", [3], dtype="int64")
    with pytest.raises(ValueError, match=r"dropout.*float.*'i'"):
        layers.dropout(i, 0.5)


def test_dropout_infer_keeps_batch_dim():
    out = layers.dropout(layers.data("x", [2, 3], dtype="float64"), 0.1)
    assert out.shape == (-1, 2, 3) and out.dtype == np.float64
    assert run_op("dropout", {"X": np.ones((2, 2))}, {"dropout_prob": 0.0})["Out"].sum() == 4
    check_forward("dropout", {"X": np.ones((2, 2))}, lambda X: X, {"dropout_prob": 0.0})
