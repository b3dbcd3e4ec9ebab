"""A NumPy reference interpreter for fluidlite's core op set, written from the op docs, not from kernels/.

`run(block, feed)` evaluates a block's forward ops in float64 and returns every value; `fd_grads` takes
central finite differences of `mean`-reduced targets through it. The fuzz harness
(tests/test_fuzz_programs.py) compares the executor against both. Only forward rules live here: the
gradients come from differencing, so nothing is shared with the kernels or the gradient rules.
"""
import math

import numpy as np


def _paddle_y(x, y, axis):
    """Y broadcast against X as Paddle does: axis -1 aligns trailing dims, else Y's dims start at `axis`."""
    if axis == -1 or y.ndim == x.ndim:
        return y
    return y.reshape((1,) * axis + y.shape + (1,) * (x.ndim - axis - y.ndim))


def _elementwise(fn):
    return lambda ins, a: fn(ins["X"][0], _paddle_y(ins["X"][0], ins["Y"][0], a["axis"]))


def _mul(ins, a):
    x, y = ins["X"][0], ins["Y"][0]
    kx, ky = a["x_num_col_dims"], a["y_num_col_dims"]
    x2 = x.reshape(math.prod(x.shape[:kx]), -1)
    y2 = y.reshape(math.prod(y.shape[:ky]), -1)
    return (x2 @ y2).reshape(x.shape[:kx] + y.shape[ky:])


def _reduce(fn):
    def run(ins, a):
        x = ins["X"][0]
        dims = tuple(range(x.ndim)) if a["reduce_all"] or not a["dim"] else tuple(d % x.ndim for d in a["dim"])
        return fn(x, axis=dims, keepdims=a["keep_dim"])
    return run


def _softmax(ins, a):
    x = ins["X"][0]
    e = np.exp(x - x.max(axis=a["axis"], keepdims=True))
    return e / e.sum(axis=a["axis"], keepdims=True)


def _clip_by_norm(ins, a):
    x = ins["X"][0]
    norm = np.abs(x).max() if a["norm_type"] == math.inf else math.sqrt((x * x).sum())
    return x * a["max_norm"] / max(norm, a["max_norm"])


def _gelu(ins, a):
    x = ins["X"][0]
    if a["approximate"]:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _scale(ins, a):
    x = ins["X"][0]
    return a["scale"] * x + a["bias"] if a["bias_after_scale"] else a["scale"] * (x + a["bias"])


RULES = {
    "elementwise_add": _elementwise(np.add), "elementwise_sub": _elementwise(np.subtract),
    "elementwise_mul": _elementwise(np.multiply), "elementwise_div": _elementwise(np.divide),
    "elementwise_max": _elementwise(np.maximum),
    "relu": lambda ins, a: np.maximum(ins["X"][0], 0),
    "tanh": lambda ins, a: np.tanh(ins["X"][0]),
    "sigmoid": lambda ins, a: 1 / (1 + np.exp(-ins["X"][0])),
    "square": lambda ins, a: ins["X"][0] ** 2,
    "exp": lambda ins, a: np.exp(ins["X"][0]),
    "leaky_relu": lambda ins, a: np.where(ins["X"][0] > 0, ins["X"][0], a["alpha"] * ins["X"][0]),
    "gelu": _gelu,
    "scale": _scale,
    "clip": lambda ins, a: np.clip(ins["X"][0], a["min"], a["max"]),
    "clip_by_norm": _clip_by_norm,
    "mul": _mul,
    "matmul": lambda ins, a: a["alpha"] * np.matmul(np.swapaxes(ins["X"][0], -1, -2) if a["transpose_X"] else ins["X"][0],
                                                  np.swapaxes(ins["Y"][0], -1, -2) if a["transpose_Y"] else ins["Y"][0]),
    "mean": lambda ins, a: np.array([ins["X"][0].mean()]),
    "reduce_sum": _reduce(np.sum), "reduce_mean": _reduce(np.mean), "reduce_max": _reduce(np.max),
    "sum": lambda ins, a: sum(ins["X"]),
    "softmax": _softmax,
}


def run(ops, feed):
    """Evaluate `ops` (forward ops only) on float64 copies of `feed`; returns name -> value."""
    env = {k: np.asarray(v, np.float64) for k, v in feed.items()}
    for op in ops:
        ins = {slot: [env[n] for n in names] for slot, names in op.inputs.items()}
        out = RULES[op.type](ins, op.attrs)
        env[op.output("Out")[0]] = np.asarray(out, np.float64)
    return env


def fd_grads(ops, feed, target, wrt, eps=1e-6):
    """d(sum(target))/d(feed[n]) for n in `wrt`, by central differences in float64."""
    base = {k: np.asarray(v, np.float64) for k, v in feed.items()}
    grads = {}
    for n in wrt:
        g = np.zeros_like(base[n])
        for i in np.ndindex(*base[n].shape):
            hi, lo = dict(base), dict(base)
            hi[n], lo[n] = base[n].copy(), base[n].copy()
            hi[n][i] += eps
            lo[n][i] -= eps
            g[i] = (run(ops, hi)[target].sum() - run(ops, lo)[target].sum()) / (2 * eps)
        grads[n] = g
    return grads
