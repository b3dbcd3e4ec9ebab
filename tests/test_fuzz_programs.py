"""Hypothesis-generated programs run through the executor and the NumPy reference (tests/reference_interp.py).

Each case draws a dtype, a batch size and a chain of ops (unary, elementwise with NumPy and Paddle-axis
broadcasting, `mul` with weights, `sum` of shared variables, reductions, softmax, clip attributes),
reusing earlier variables so gradients accumulate. Outputs must match the reference; gradients of
`mean(last)` with respect to every input must match central differences of the reference; the program
must verify and survive save/load as JSON unchanged.
"""
import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fluidlite as fl
from fluidlite import io, layers
from fuzz_profile import fuzz_settings, report
from reference_interp import fd_grads, run

UNARY = ["relu", "tanh", "sigmoid", "square", "leaky_relu", "gelu", "scale", "clip", "clip_by_norm", "softmax"]
BINARY = ["elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div", "elementwise_max"]


class _Builder:
    def __init__(self, data, dtype, batch, rng):
        self.data, self.dtype, self.batch, self.rng = data, dtype, batch, rng
        self.block = fl.default_main_program().global_block()
        self.feed, self.pool, self.ops = {}, [], 0

    def new_input(self, shape, batched=True, positive=False):
        name = f"in{len(self.feed)}"
        full = ((self.batch,) if batched else ()) + tuple(shape)
        self.block.create_var(name=name, shape=((-1,) if batched else ()) + tuple(shape), dtype=self.dtype,
                              is_data=True, stop_gradient=True)
        value = self.rng.uniform(1.0, 2.0, full) if positive else self.rng.standard_normal(full)
        self.feed[name] = value.astype(self.dtype)
        return name

    def append(self, type, inputs, attrs=None):
        out = f"t{self.ops}"
        self.ops += 1
        self.block.append_op(type, inputs, {"Out": out}, attrs or {})
        self.pool.append(out)
        return out

    def shape(self, name):
        return self.block.var(name).shape

    def draw(self, strategy):
        return self.data.draw(strategy)

    def step(self):
        x = self.draw(st.sampled_from(self.pool))  # earlier values are reused: shared variables
        kind = self.draw(st.sampled_from(["unary"] * 3 + ["binary"] * 3 + ["mul", "sum", "reduce"]))
        shape = self.shape(x)
        if kind == "unary":
            op = self.draw(st.sampled_from(UNARY))
            attrs = {"leaky_relu": {"alpha": self.draw(st.floats(0.01, 0.5))},
                     "gelu": {"approximate": self.draw(st.booleans())},
                     "scale": {"scale": self.draw(st.floats(-2, 2)), "bias": self.draw(st.floats(-1, 1)),
                               "bias_after_scale": self.draw(st.booleans())},
                     "clip": {"min": -self.draw(st.floats(0.1, 2)), "max": self.draw(st.floats(0.1, 2))},
                     "clip_by_norm": {"max_norm": self.draw(st.floats(0.5, 5))}}.get(op, {})
            return self.append(op, {"X": x}, attrs)
        if kind == "binary":
            op = self.draw(st.sampled_from(BINARY))
            feat = shape[1:]
            how = self.draw(st.sampled_from(["same", "fresh", "trailing", "axis"]))
            axis = -1
            if op == "elementwise_div":  # a divisor far from zero, so differences stay accurate
                how = self.draw(st.sampled_from(["fresh", "trailing"]))
            if how == "same":
                same = [n for n in self.pool if self.shape(n) == shape and n != x]
                y = self.draw(st.sampled_from(same)) if same else self.new_input(feat)
            elif how == "fresh" or not feat:
                y = self.new_input(feat, positive=op == "elementwise_div")
            elif how == "trailing":
                k = self.draw(st.integers(1, len(feat)))
                y = self.new_input(feat[len(feat) - k:], batched=False, positive=op == "elementwise_div")
            else:  # Paddle's axis: Y's dims line up with X's starting at `axis`
                axis = self.draw(st.integers(1, len(shape) - 1))
                y = self.new_input(shape[axis:axis + self.draw(st.integers(1, len(shape) - axis))], batched=False)
            return self.append(op, {"X": x, "Y": y}, {"axis": axis})
        if kind == "mul" and len(shape) >= 2:
            k = self.draw(st.integers(1, len(shape) - 1))
            w = self.new_input((int(np.prod(shape[k:])), self.draw(st.integers(1, 4))), batched=False)
            return self.append("mul", {"X": x, "Y": w}, {"x_num_col_dims": k, "y_num_col_dims": 1})
        if kind == "sum":
            same = [n for n in self.pool if self.shape(n) == shape]
            xs = [x] + self.draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))
            return self.append("sum", {"X": xs})
        if len(shape) >= 2:
            op = self.draw(st.sampled_from(["reduce_sum", "reduce_mean", "reduce_max"]))
            return self.append(op, {"X": x}, {"dim": [self.draw(st.integers(1, len(shape) - 1))],
                                              "keep_dim": self.draw(st.booleans())})
        return self.append("tanh", {"X": x})


def _close(got, want, dtype, what):
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    rtol, atol = (5e-3, 2e-3 * scale) if dtype == "float32" else (1e-4, 1e-6 * scale)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


@fuzz_settings(20)
@given(st.data())
def test_random_programs_match_the_numpy_reference(data):
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    main = fl.Program()
    with fl.program_guard(main, fl.Program()), fl.unique_name.guard():
        b = _Builder(data, dtype, data.draw(st.integers(1, 3)), rng)
        feat = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        b.pool.append(b.new_input(tuple(feat)))
        for _ in range(data.draw(st.integers(1, 6))):
            b.step()
        last = b.pool[-1]
        loss = b.append("mean", {"X": last})
        inputs = [main.global_block().var(n) for n in b.feed]
        grads = fl.gradients([main.global_block().var(loss)], inputs)
    fl.verify(main)
    again = io.loads_program(json.dumps(io.program_to_dict(main)))
    assert str(again) == str(main)
    forward_ops = [op for op in main.global_block().ops if op.role == "forward"]
    ref = run(forward_ops, b.feed)
    fetch = [last, loss] + [g for g in grads if g is not None]
    got = fl.Executor().run(main, feed=b.feed, fetch_list=fetch, scope=fl.Scope())
    _close(got[0], ref[last], dtype, f"forward {last}\n{main}")
    _close(got[1], ref[loss], dtype, "loss")
    want = fd_grads(forward_ops, b.feed, loss, list(b.feed))
    it = iter(got[2:])
    for name, g in zip(b.feed, grads):
        value = np.zeros_like(want[name]) if g is None else next(it)
        _close(value, want[name], dtype, f"gradient of {name}\n{main}")
    report("programs", cases=1, ops=len(forward_ops), grads=len(b.feed))
