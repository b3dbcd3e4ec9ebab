"""Kernels called in place (output = input, as plans call every update) take their own loop
(kernels/inplace.py): it must give the bits of a call with separate outputs, and both must match NumPy."""
import numpy as np
import pytest

from fluidlite.kernels import adaptive, clip, optim
from fluidlite.kernels.inplace import same_buffer

SHAPE = (25, 39)  # 2-D like most parameters; 975 elements, not a multiple of any vector width
# the prange twins in float32 only: their loops are the serial ones' (compiling each costs ~1 s)
CASES = [(np.float32, False), (np.float64, False), (np.float32, True)]


def _arrays(dtype, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(dtype) for _ in range(count)]


def _kernel(module, name, parallel):
    return getattr(module, name + ("_parallel" if parallel else ""))


def _twice(call, inputs, n_out):
    """(results with separate outputs, results in place on copies of the first n_out inputs)."""
    separate = call(*inputs, *[np.empty_like(a) for a in inputs[:n_out]])
    own = [a.copy() for a in inputs]
    in_place = call(*own, *own[:n_out])
    for a, b in zip(in_place, own[:n_out]):
        assert a is b, "an in-place call must return its input arrays"
    return [np.asarray(a) for a in separate], [np.asarray(a) for a in in_place]


def _same_bits(separate, in_place):
    for a, b in zip(separate, in_place):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype,parallel", CASES)
def test_sgd_in_place(dtype, parallel):
    p, g = _arrays(dtype, 2)
    lr = np.array([0.05], dtype)
    kernel = _kernel(optim, "sgd", parallel)
    separate, in_place = _twice(lambda p_, g_, out: (kernel(p_, g_, lr, out),), [p, g], 1)
    _same_bits(separate, in_place)
    np.testing.assert_allclose(in_place[0], p.astype(np.float64) - 0.05 * g, rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype,parallel", CASES)
def test_momentum_in_place(dtype, parallel, nesterov):
    p, v, g = _arrays(dtype, 3)
    lr, mu = np.array([0.05], dtype), dtype(0.9)
    kernel = _kernel(optim, "momentum", parallel)
    separate, in_place = _twice(lambda p_, v_, g_, po, vo: kernel(p_, g_, v_, lr, mu, nesterov, po, vo), [p, v, g], 2)
    _same_bits(separate, in_place)
    vel = 0.9 * v.astype(np.float64) + g
    step = g + 0.9 * vel if nesterov else vel
    np.testing.assert_allclose(in_place[1], vel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_place[0], p - 0.05 * step, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coeff", [0.0, 0.01])
@pytest.mark.parametrize("dtype,parallel", CASES)
def test_adam_in_place(dtype, parallel, coeff):
    p, m1, g = _arrays(dtype, 3)
    m2 = np.abs(_arrays(dtype, 1, seed=1)[0])
    b1p, b2p = np.array([0.9 ** 3], dtype), np.array([0.999 ** 3], dtype)
    lr = np.array([1e-3], dtype)
    kernel = _kernel(optim, "adam", parallel)

    def call(p_, m1_, m2_, b1_, b2_, g_, po, m1o, m2o, b1o, b2o):
        return kernel(p_, g_, lr, m1_, m2_, b1_, b2_, 0.9, 0.999, 1e-8, coeff, po, m1o, m2o, b1o, b2o)

    separate, in_place = _twice(call, [p, m1, m2, b1p, b2p, g], 5)
    _same_bits(separate, in_place)
    a = 0.9 * m1.astype(np.float64) + 0.1 * g
    b = 0.999 * m2.astype(np.float64) + 0.001 * g.astype(np.float64) ** 2
    rate = 1e-3 * np.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)
    want = p * (1 - 1e-3 * coeff) - rate * a / (np.sqrt(b) + 1e-8)
    np.testing.assert_allclose(in_place[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_place[1], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_place[3], [0.9 ** 4], rtol=1e-6)


@pytest.mark.parametrize("dtype,parallel", CASES)
def test_rmsprop_in_place(dtype, parallel):
    p, mom, g = _arrays(dtype, 3)
    ms = np.abs(_arrays(dtype, 1, seed=1)[0])
    lr = np.array([0.01], dtype)
    rho, eps, mu = dtype(0.9), dtype(1e-6), dtype(0.5)
    kernel = _kernel(adaptive, "rmsprop", parallel)
    separate, in_place = _twice(lambda p_, ms_, mom_, g_, po, mso, momo: kernel(p_, g_, ms_, mom_, lr, rho, eps, mu,
                                                                               po, mso, momo), [p, ms, mom, g], 3)
    _same_bits(separate, in_place)
    ms_new = 0.9 * ms.astype(np.float64) + 0.1 * g.astype(np.float64) ** 2
    mom_new = 0.5 * mom + 0.01 * g / np.sqrt(ms_new + 1e-6)
    np.testing.assert_allclose(in_place[1], ms_new, rtol=1e-5)
    np.testing.assert_allclose(in_place[0], p - mom_new, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,parallel", CASES)
def test_adagrad_in_place(dtype, parallel):
    p, g = _arrays(dtype, 2)
    m = np.abs(_arrays(dtype, 1, seed=1)[0])
    lr, eps = np.array([0.01], dtype), dtype(1e-6)
    kernel = _kernel(adaptive, "adagrad", parallel)
    separate, in_place = _twice(lambda p_, m_, g_, po, mo: kernel(p_, g_, m_, lr, eps, po, mo), [p, m, g], 2)
    _same_bits(separate, in_place)
    m_new = m.astype(np.float64) + g.astype(np.float64) ** 2
    np.testing.assert_allclose(in_place[1], m_new, rtol=1e-6)
    np.testing.assert_allclose(in_place[0], p - 0.01 * g / (np.sqrt(m_new) + 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,parallel", CASES)
def test_clip_in_place(dtype, parallel):
    (x,) = _arrays(dtype, 1)
    x[::7, ::5] = np.nan
    kernel = _kernel(clip, "clip_into", parallel)
    lo, hi = dtype(-0.5), dtype(0.7)
    separate, in_place = _twice(lambda x_, out: (kernel(x_, out, lo, hi),), [x], 1)
    _same_bits(separate, in_place)
    np.testing.assert_array_equal(in_place[0], np.clip(x, lo, hi))  # NumPy keeps NaN too


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_in_place(dtype):
    (x,) = _arrays(dtype, 1)
    s = dtype(0.37)
    separate, in_place = _twice(lambda x_, out: (clip.scale_into(x_, out, s),), [x], 1)
    _same_bits(separate, in_place)
    np.testing.assert_array_equal(in_place[0], x * s)  # one rounding, as NumPy's


def test_half_in_place_takes_the_general_loop():
    # Param in place but a separate velocity output: the in-place loop must not be taken
    p, v, g = _arrays(np.float32, 3)
    lr, mu = np.array([0.05], np.float32), np.float32(0.9)
    p1, v_out = p.copy(), np.empty_like(v)
    optim.momentum(p1, g, v, lr, mu, False, p1, v_out)
    vel = mu * v + g
    np.testing.assert_array_equal(v_out, vel)
    np.testing.assert_array_equal(p1, p - lr[0] * vel)
    assert not np.shares_memory(v_out, v)


def test_same_buffer():
    a = np.zeros(8)
    assert same_buffer(a, a) and same_buffer(a, a.reshape(2, 4)) and same_buffer(a, a[:4])
    assert not same_buffer(a, a.copy()) and not same_buffer(a, a[1:])


@pytest.mark.parametrize("n,kernel", [(4095, "sgd"), (4096, "sgd_parallel")])
def test_updates_take_two_threads_from_parallel_min(n, kernel, monkeypatch):
    import fluidlite as fl
    from fluidlite.ops import common

    monkeypatch.setattr(common, "PARALLEL_MIN", 4096)
    calls = []
    for name in ("sgd", "sgd_parallel"):
        real = getattr(optim, name)
        monkeypatch.setattr(optim, name, lambda *a, _k=real, _n=name: (calls.append(_n), _k(*a))[1])
    main = fl.Program()
    block = main.global_block()
    p, g, lr = (block.create_var(name=k, shape=[s], dtype="float32", persistable=True)
                for k, s in (("p", n), ("g", n), ("lr", 1)))
    block.append_op("sgd", {"Param": p, "Grad": g, "LearningRate": lr}, {"ParamOut": p})
    scope = fl.Scope()
    want = np.arange(n, dtype=np.float32)
    for name, value in (("p", want.copy()), ("g", np.ones(n, np.float32)), ("lr", np.array([0.5], np.float32))):
        scope.set_array(name, value)
    fl.Executor().run(main, scope=scope)
    assert calls == [kernel]
    np.testing.assert_array_equal(scope.get_array("p"), want - np.float32(0.5))
