"""OpTest harness: one-op programs checked against NumPy references and float64 finite differences."""
from __future__ import annotations

import numpy as np

import fluidlite as fl


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_op(op_type, inputs, attrs=None, outputs=("Out",)):
    """A program holding one data var per input array and the op; returns (program, input vars, output vars)."""
    program = fl.Program()
    block = program.global_block()
    in_vars = {}
    for slot, arrays in inputs.items():
        in_vars[slot] = []
        for k, a in enumerate(_as_list(arrays)):
            a = np.asarray(a)
            in_vars[slot].append(block.create_var(name=f"in_{slot}_{k}", shape=a.shape, dtype=a.dtype,
                                                  is_data=True, stop_gradient=False))
    out_names = {slot: [f"out_{slot}"] for slot in outputs}
    block.append_op(op_type, in_vars, out_names, attrs or {})
    out_vars = {slot: block.var(f"out_{slot}") for slot in outputs}
    return program, in_vars, out_vars


def _feed(in_vars, inputs):
    return {v.name: np.asarray(a) for slot, vs in in_vars.items() for v, a in zip(vs, _as_list(inputs[slot]))}


def run_op(op_type, inputs, attrs=None, outputs=("Out",)):
    """Run the op once; returns slot -> output array."""
    program, in_vars, out_vars = build_op(op_type, inputs, attrs, outputs)
    values = fl.Executor().run(program, feed=_feed(in_vars, inputs), fetch_list=list(out_vars.values()),
                               scope=fl.Scope())
    return dict(zip(out_vars, values))


def check_forward(op_type, inputs, reference, attrs=None, outputs=("Out",), rtol=None, atol=None):
    """Outputs equal `reference(**inputs)` (a dict slot -> array, or one array for a single output)."""
    got = run_op(op_type, inputs, attrs, outputs)
    expected = reference(**inputs)
    if not isinstance(expected, dict):
        expected = {outputs[0]: expected}
    for slot, want in expected.items():
        want = np.asarray(want)
        have = got[slot]
        assert have.shape == want.shape, f"{op_type}.{slot}: shape {have.shape} != reference {want.shape}"
        assert have.dtype == want.dtype, f"{op_type}.{slot}: dtype {have.dtype} != reference {want.dtype}"
        if have.dtype.kind == "f":
            tol = 1e-5 if have.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(have, want, rtol=rtol or tol, atol=atol or tol,
                                       err_msg=f"{op_type}.{slot} ({have.dtype})")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"{op_type}.{slot}")
    return got


def check_grad(op_type, inputs, wrt=("X",), attrs=None, outputs=("Out",), grad_outputs=None, eps=1e-6,
               rtol=1e-5, atol=1e-8, seed=0):
    """Every input slot in `wrt` has the gradient of sum(out * R) given by float64 central differences.

    `inputs` must hold float64 arrays for the differentiated slots; `grad_outputs` (default: every
    float output) chooses which outputs the random projection R covers."""
    rng = np.random.default_rng(seed)
    program, in_vars, out_vars = build_op(op_type, inputs, attrs, outputs)
    block = program.global_block()
    grad_outputs = [s for s in (grad_outputs or outputs) if out_vars[s].dtype.kind == "f"]
    exe = fl.Executor()
    scope = fl.Scope()
    feed = _feed(in_vars, inputs)
    shapes = dict(zip(out_vars, exe.run(program, feed=feed, fetch_list=list(out_vars.values()), scope=scope)))
    projections = {s: rng.standard_normal(shapes[s].shape) for s in grad_outputs}
    r_vars = [block.create_var(name=f"r_{s}", shape=projections[s].shape, dtype="float64", is_data=True)
              for s in grad_outputs]
    targets = [in_vars[s][k] for s in wrt for k in range(len(in_vars[s]))]
    grads = fl.gradients([out_vars[s] for s in grad_outputs], targets, target_gradients=r_vars)
    feed.update({f"r_{s}": projections[s] for s in grad_outputs})
    fetch = [g for g in grads if g is not None]
    analytic = exe.run(program, feed=feed, fetch_list=fetch, scope=scope)
    fprog, f_in, f_out = build_op(op_type, inputs, attrs, outputs)

    def objective(values):
        outs = exe.run(fprog, feed=_feed(f_in, values), fetch_list=[f_out[s] for s in grad_outputs], scope=scope)
        return sum(float(np.sum(o * projections[s])) for o, s in zip(outs, grad_outputs))

    got = iter(analytic)
    for slot in wrt:
        arrays = _as_list(inputs[slot])
        for k in range(len(arrays)):
            g = grads[[i for i, t in enumerate(targets) if t is in_vars[slot][k]][0]]
            assert g is not None, f"{op_type}: no gradient for input {slot}[{k}]"
            have = next(got)
            numeric = np.zeros_like(arrays[k], dtype=np.float64)
            for idx in np.ndindex(arrays[k].shape):
                vals = []
                for step in (eps, -eps):
                    moved = [a.copy() for a in arrays]
                    moved[k][idx] += step
                    values = dict(inputs)
                    values[slot] = moved if isinstance(inputs[slot], (list, tuple)) else moved[0]
                    vals.append(objective(values))
                numeric[idx] = (vals[0] - vals[1]) / (2 * eps)
            np.testing.assert_allclose(have, numeric, rtol=rtol, atol=atol,
                                       err_msg=f"{op_type}: gradient of input {slot}[{k}]")


def check_op(op_type, make_inputs, reference, attrs=None, wrt=("X",), outputs=("Out",), dtypes=("float32", "float64"),
             **grad_kw):
    """Forward in each dtype, then the gradient in float64. `make_inputs(dtype)` -> slot -> arrays."""
    for dtype in dtypes:
        check_forward(op_type, make_inputs(np.dtype(dtype)), reference, attrs, outputs)
    if wrt:
        check_grad(op_type, make_inputs(np.dtype("float64")), wrt, attrs, outputs, **grad_kw)
