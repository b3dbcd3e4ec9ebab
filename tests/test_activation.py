"""Activations: relu, sigmoid, exp, log, square, sqrt, abs, softmax."""
import math

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers
from op_test import check_forward, check_op

rng = np.random.default_rng(2)


def _away_from_zero(shape):
    x = rng.standard_normal(shape)
    return np.sign(x) * (0.2 + np.abs(x))


def _positive(shape):
    return 0.3 + rng.random(shape) * 2


UNARY = {
    "relu": (lambda X: np.maximum(X, 0), _away_from_zero),
    "sigmoid": (lambda X: 1 / (1 + np.exp(-X)), _away_from_zero),
    "exp": (np.exp, _away_from_zero),
    "log": (np.log, _positive),
    "square": (np.square, _away_from_zero),
    "sqrt": (np.sqrt, _positive),
    "abs": (np.abs, _away_from_zero),
}


@pytest.mark.parametrize("op", list(UNARY))
def test_unary_forward_and_grad(op):
    ref, make = UNARY[op]
    x = make((3, 4))
    check_op(op, lambda dt: {"X": x.astype(dt)}, lambda X: ref(X).astype(X.dtype))


def test_sigmoid_is_stable_for_large_inputs():
    x = np.array([-800.0, -50.0, 0.0, 50.0, 800.0], np.float32)
    check_forward("sigmoid", {"X": x}, lambda X: (0.5 * (1 + np.tanh(X.astype(np.float64) / 2))).astype(X.dtype))


def _grad_of(op, x, **kw):
    v = layers.data(name="x", shape=list(x.shape), dtype=str(x.dtype), append_batch_size=False)
    v.stop_gradient = False
    out = getattr(layers, op)(v, **kw)
    g = layers.data(name="g", shape=list(x.shape), dtype=str(x.dtype), append_batch_size=False)
    dx, = fl.gradients([out], [v], target_gradients=[g])
    return dx, out


@pytest.mark.parametrize("op", ["relu", "abs"])
def test_gradient_at_zero_is_zero(op):
    x = np.array([-1.0, 0.0, 2.0])
    dx, _ = _grad_of(op, x)
    got, = fl.Executor().run(feed={"x": x, "g": np.ones(3)}, fetch_list=[dx])
    np.testing.assert_array_equal(got, [0.0 if op == "relu" else -1.0, 0.0, 1.0])


def _softmax_ref(axis):
    def ref(X):
        e = np.exp(X - X.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(X.dtype)

    return ref


@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax(axis):
    x = rng.standard_normal((2, 3, 4))
    check_op("softmax", lambda dt: {"X": x.astype(dt)}, _softmax_ref(axis), attrs={"axis": axis})


def test_softmax_is_stable_for_large_logits():
    x = (rng.standard_normal((3, 5)) * 10 + 1000).astype(np.float32)
    out = check_forward("softmax", {"X": x}, _softmax_ref(-1))["Out"]
    assert np.isfinite(out).all()


def test_softmax_row_kernels_serial_and_parallel_agree_bit_for_bit_and_with_numpy():
    """The forward's twins agree bit for bit; both and the (serial) gradient agree with NumPy."""
    from fluidlite.kernels.softmax import softmax_grad_rows, softmax_rows, softmax_rows_parallel

    x = (rng.standard_normal((700, 9)) * 30).astype(np.float32)  # exp spans most of float32's range
    g = rng.standard_normal((700, 9)).astype(np.float32)
    out = softmax_rows(x, 700, 9)
    np.testing.assert_array_equal(softmax_rows_parallel(x, 700, 9), out)
    np.testing.assert_allclose(out, _softmax_ref(-1)(x.astype(np.float64)), rtol=1e-5, atol=1e-30)
    dx = softmax_grad_rows(out, g, 700, 9)
    o64 = out.astype(np.float64)
    want = o64 * (g - (g * o64).sum(-1, keepdims=True))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-6)


_ADDRESS_SWEEP = """
import numpy as np
from fluidlite.kernels.softmax import softmax_rows
rng = np.random.default_rng(0)
x0 = rng.standard_normal((3, 9)).astype(np.float32)
first, spacers, other_bits = softmax_rows(x0, 3, 9), [], 0
for size in rng.integers(1, 64, 3000):  # input and output land at many distances from each other
    spacers.append(np.empty(size, np.float32))
    x = x0.copy()
    other_bits += not np.array_equal(softmax_rows(x, 3, 9), first)
print(other_bits)
"""


def test_softmax_rows_do_not_depend_on_where_the_arrays_live():
    """The fastmath row kernel once summed in an order that followed the distance between its input and
    output arrays (about 10 of these 3000 calls gave other last bits); a fresh process has a known heap."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _ADDRESS_SWEEP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "0"


@pytest.mark.parametrize("op", list(UNARY) + ["softmax"])
def test_infer_keeps_batch_dim_and_dtype(op):
    for dt in ("float32", "float64"):
        x = layers.data(name=f"x_{dt}", shape=[3, 4], dtype=dt)
        out = getattr(layers, op)(x)
        assert out.shape == (-1, 3, 4) and out.dtype == np.dtype(dt)


def test_errors_name_op_and_variable():
    block = fl.default_main_program().global_block()
    xi = block.create_var(name="xi", shape=[-1, 3], dtype="int64")
    xf = block.create_var(name="xf", shape=[-1, 3], dtype="float32")
    n_ops = len(block.ops)
    with pytest.raises(ValueError, match=r"relu.*X.*float.*'xi'"):
        block.append_op("relu", {"X": xi}, {"Out": "o"})
    with pytest.raises(ValueError, match=r"softmax.*axis=2.*'xf' shape=\[-1, 3\]"):
        block.append_op("softmax", {"X": xf}, {"Out": "o"}, {"axis": 2})
    with pytest.raises(TypeError, match="softmax.*axis"):
        block.append_op("softmax", {"X": xf}, {"Out": "o"}, {"axis": "last"})
    assert len(block.ops) == n_ops and "o" not in block.vars


def test_fc_with_relu_activation():
    x = layers.data(name="x", shape=[4], dtype="float32")
    h = layers.fc(x, size=3, act="relu")
    exe = fl.Executor()
    exe.run(fl.default_startup_program())
    xs = rng.standard_normal((5, 4)).astype(np.float32)
    out, = exe.run(feed={"x": xs}, fetch_list=[h])
    w = fl.fetch_var(fl.default_main_program().global_block().all_parameters()[0].name)
    np.testing.assert_allclose(out, np.maximum(xs @ w, 0), rtol=1e-5, atol=1e-6)


def test_large_parallel_kernels_agree_with_numpy(monkeypatch):
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 19)  # (1024, 512) takes the prange kernels
    x = rng.standard_normal((1024, 512)).astype(np.float32)
    g = rng.standard_normal((1024, 512)).astype(np.float32)
    dx, out = _grad_of("sigmoid", x)
    got_out, got_dx = fl.Executor().run(feed={"x": x, "g": g}, fetch_list=[out, dx])
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got_out, s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_dx, g * s * (1 - s), rtol=1e-4, atol=1e-6)
    sm = check_forward("softmax", {"X": x}, _softmax_ref(-1))["Out"]
    np.testing.assert_allclose(sm.sum(-1), 1, rtol=1e-5)


def _gelu_ref(approximate):
    def ref(X):
        x = X.astype(np.float64)
        if approximate:
            y = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
        return y.astype(X.dtype)

    return ref


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_forward_and_grad(approximate):
    x = rng.standard_normal((3, 5)) * 2
    check_op("gelu", lambda dt: {"X": x.astype(dt)}, _gelu_ref(approximate), attrs={"approximate": approximate})


@pytest.mark.parametrize("alpha", [0.02, 0.3])
def test_leaky_relu_forward_and_grad(alpha):
    x = _away_from_zero((3, 4))
    check_op("leaky_relu", lambda dt: {"X": x.astype(dt)}, lambda X: np.where(X > 0, X, alpha * X).astype(X.dtype),
             attrs={"alpha": alpha})


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_gelu_leaky_relu_layers_infer_batch_dim(dt):
    x = layers.data(name="x", shape=[3, 4], dtype=dt)
    for out in (layers.gelu(x), layers.gelu(x, approximate=True), layers.leaky_relu(x, alpha=0.1)):
        assert out.shape == (-1, 3, 4) and out.dtype == np.dtype(dt)
    ops = fl.default_main_program().global_block().ops
    assert [op.attrs.get("approximate", op.attrs.get("alpha")) for op in ops] == [False, True, 0.1]


def test_gelu_leaky_relu_errors_name_op_and_variable():
    xi = layers.data(name="xi", shape=[3], dtype="int64")
    xf = layers.data(name="xf", shape=[3], dtype="float32")
    with pytest.raises(ValueError, match=r"gelu.*X.*float.*'xi'"):
        layers.gelu(xi)
    with pytest.raises(ValueError, match=r"leaky_relu.*X.*float.*'xi'"):
        layers.leaky_relu(xi)
    with pytest.raises(TypeError, match="gelu.*approximate"):
        layers.gelu(xf, approximate="yes")
    with pytest.raises(TypeError, match="leaky_relu.*alpha"):
        layers.leaky_relu(xf, alpha="big")



@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_softmax_rows_max_through_ordered_bits_keeps_nan_inf_and_sign_cases(dt):
    """The row max is an integer max over the floats' bits: negative rows, -0.0, huge magnitudes,
    and rows holding NaN or +-inf must come out as NumPy's softmax does (NaN rows all NaN)."""
    x = np.array([[1, 2, 3, 4], [-4, -3, -2, -1], [-0.0, 0.0, -0.0, -1], [1000, 999, -1000, 0],
                  [-5e30, -6e30, -7e30, -4e30], [-np.inf, 0, -np.inf, 1], [np.nan, 1, 2, 3],
                  [1, 2, -np.nan, 3], [np.inf, 1, 2, 3], [-np.inf] * 4], dt)

    def ref(X):
        with np.errstate(invalid="ignore"):
            return _softmax_ref(-1)(X.astype(np.float64)).astype(dt)

    out = check_forward("softmax", {"X": x}, ref)["Out"]
    assert np.all(out[:6].argmax(-1) == [3, 3, 0, 0, 3, 3]) and np.isnan(out[6:]).all()
