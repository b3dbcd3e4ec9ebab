"""Gradient ops derived from the forward declaration (fluidlite/derived_grad.py)."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite.kernels import basic as KB
from fluidlite.ops.common import float_same_as
from fluidlite.registry import OPS, Attr, GradContext, defop


def _pair_grad(x, y, dout, k):
    return dout * y * k, dout * x * k


def _pair_infer(ctx):
    return {"Out": (ctx.shape("X"), ctx.dtype("X"))}


def _define_kmul():
    """Out = k * X * Y with a derived gradient returning both input gradients."""
    if "test_kmul" not in OPS:
        defop("test_kmul", inputs=("X", "Y"), attrs={"k": Attr(float, 1.0)}, infer=_pair_infer,
              lower=lambda ctx: lambda x, y: x * y * ctx.attrs["k"],
              grad_reads=("X", "Y"), grad_lower=lambda ctx: lambda x, y, g: _pair_grad(x, y, g, ctx.attrs["k"]))
    return OPS["test_kmul_grad"]


def test_grad_op_slots_attrs_and_inference_come_from_the_forward_op():
    gdef = _define_kmul()
    assert gdef.inputs == ("X", "Y", "Out@GRAD") and gdef.outputs == ("X@GRAD", "Y@GRAD")
    assert gdef.optional == {"X@GRAD", "Y@GRAD"} and gdef.attrs is OPS["test_kmul"].attrs
    grad = OPS["tanh_grad"]  # a converted op: reads Out, infers X@GRAD from it
    assert grad.inputs == ("Out", "Out@GRAD") and grad.outputs == ("X@GRAD",)


@pytest.mark.parametrize("wrt", [("x", "y"), ("x",), ("y",)])
def test_derived_grad_runs_and_hands_on_only_the_wanted_outputs(wrt):
    _define_kmul()
    main = fl.Program()
    with fl.program_guard(main, fl.Program()):
        x = fl.layers.data("x", [3], dtype="float64", stop_gradient=False)
        y = fl.layers.data("y", [3], dtype="float64", stop_gradient=False)
        out = fl.layers.LayerHelper("test_kmul").append_op("test_kmul", {"X": x, "Y": y}, {"k": 3.0})
        grads = fl.gradients([out], [v for v in (x, y) if v.name in wrt])
    (grad_op,) = [op for op in main.global_block().ops if op.type == "test_kmul_grad"]
    assert grad_op.attrs["k"] == 3.0
    xs, ys = np.array([[1.0, 2.0, 3.0]]), np.array([[4.0, 5.0, 6.0]])
    got = fl.Executor().run(main, feed={"x": xs, "y": ys}, fetch_list=grads, scope=fl.Scope())
    want = {"x": 3 * ys, "y": 3 * xs}
    for name, g in zip(wrt, got):
        np.testing.assert_allclose(g, want[name])


def test_no_grad_op_when_no_input_gradient_is_wanted():
    _define_kmul()
    block = fl.Program().global_block()
    x = block.create_var(name="x", shape=(2,), dtype="float64")
    y = block.create_var(name="y", shape=(2,), dtype="float64")
    block.append_op("test_kmul", {"X": x, "Y": y}, {"Out": "o"})
    ctx = GradContext(block.ops[0], {"Out": ["o@GRAD"]}, {"X": [None], "Y": [None]})
    assert OPS["test_kmul"].grad(ctx) == []


def test_declaration_errors_are_clear():
    with pytest.raises(ValueError, match="either grad= or the derived"):
        defop("test_bad1", inputs=("X",), infer=float_same_as("X"), kernel=KB.tanh, grad=lambda g: [],
              grad_reads=("X",), grad_kernel=KB.tanh_grad)
    with pytest.raises(ValueError, match=r"grad slots \['Z'\] are not slots"):
        defop("test_bad2", inputs=("X",), infer=float_same_as("X"), kernel=KB.tanh, grad_reads=("Z",),
              grad_kernel=KB.tanh_grad)
    with pytest.raises(ValueError, match=r"cannot give \['X@GRAD'\] a shape"):
        defop("test_bad3", inputs=("X",), infer=float_same_as("X"), kernel=KB.tanh, grad_reads=("Out",),
              grad_kernel=KB.tanh_grad)
    with pytest.raises(ValueError, match="exactly one of grad_kernel and grad_lower"):
        defop("test_bad4", inputs=("X",), infer=float_same_as("X"), kernel=KB.tanh, grad_reads=("X",))
    assert not any(t.startswith("test_bad") for t in OPS)


def test_op_code_tables_are_defined_once_in_the_kernels():
    from fluidlite.kernels import activation as KA
    from fluidlite.kernels import elementwise as KE
    from fluidlite.ops.elementwise import opcode

    assert opcode("elementwise_max_grad") == KE.MAX and opcode("elementwise_add") == KE.ADD
    codes = [KA.RELU, KA.SIGMOID, KA.EXP, KA.LOG, KA.SQUARE, KA.SQRT, KA.ABS, KA.GELU, KA.GELU_TANH,
             KA.LEAKY_RELU]
    assert sorted(codes) == list(range(len(codes)))
