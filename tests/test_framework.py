"""The IR: programs, blocks, variables, parameters, operators, guards, names, printing, verification."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import layers


def test_program_structure_and_spec_names():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        assert fl.default_main_program() is main and fl.default_startup_program() is startup
        x = layers.data(name="x", shape=[13], dtype="float32")
        h = layers.fc(x, size=4, act="tanh", bias_attr=False)
    assert fl.default_main_program() is not main  # restored
    block = main.global_block()
    assert main.block(0) is block and block.idx == 0 and block.parent_idx == -1
    assert x.shape == (-1, 13) and x.dtype == np.float32 and x.stop_gradient and not x.persistable
    assert block.var("x") is x and block.vars["x"] is x and x.block is block
    w = block.var("fc_0.w_0")
    assert isinstance(w, fl.Parameter) and w.shape == (13, 4) and w.persistable and w.trainable
    assert w.need_clip and w.gradient_clip_attr is None and w.regularizer is None
    assert w.optimize_attr == {"learning_rate": 1.0}
    mul, tanh = block.ops
    assert isinstance(mul, fl.Operator) and mul.type == "mul" and tanh.type == "tanh"
    assert mul.inputs == {"X": ["x"], "Y": ["fc_0.w_0"]} and mul.input("X") == ["x"]
    assert mul.output("Out") == [tanh.input("X")[0]] and h.op is tanh
    assert mul.attrs["x_num_col_dims"] == 1 and mul.role == "forward"
    # the startup program initialises the parameter
    (init,) = startup.global_block().ops
    assert init.type == "uniform_random" and init.output("Out") == ["fc_0.w_0"]
    with pytest.raises(ValueError, match="no variable named 'nope'"):
        block.var("nope")


def test_str_program_is_a_readable_listing():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype="float32")
        layers.scale(layers.tanh(x), scale=2.0)
    expected = "\n".join([
        "block 0 (parent -1) {",
        "  var x : f32[-1,3]  (data)",
        "  var tanh_0.tmp_0 : f32[-1,3]",
        "  var scale_0.tmp_0 : f32[-1,3]",
        "  tanh_0.tmp_0 : f32[-1,3] = tanh(X=x) {forward}",
        "  scale_0.tmp_0 : f32[-1,3] = scale[scale=2.0, bias=0.0, bias_after_scale=True](X=tanh_0.tmp_0) {forward}",
        "}",
    ])
    assert str(main) == expected


def test_append_op_accepts_single_variables_and_lists_and_infers():
    block = fl.default_main_program().global_block()
    a = block.create_var(name="a", shape=[2, 3], dtype="float64")
    b = block.create_var(name="b", shape=[2, 3], dtype="float64")
    out = block.create_var(name="out")
    op = block.append_op("sum", inputs={"X": [a, b]}, outputs={"Out": out})
    assert op.inputs == {"X": ["a", "b"]} and out.shape == (2, 3) and out.dtype == np.float64 and out.op is op
    op2 = block.append_op("tanh", inputs={"X": "a"}, outputs={"Out": ["t"]})
    assert block.var("t").shape == (2, 3) and op2.output("Out") == ["t"]


def test_declared_output_shape_mismatch_raises_and_changes_nothing():
    block = fl.default_main_program().global_block()
    a = block.create_var(name="a", shape=[2, 3], dtype="float32")
    out = block.create_var(name="out", shape=[5], dtype="float32")
    version, n_ops = block.program._version, len(block.ops)
    with pytest.raises(ValueError, match=r"tanh.*'out'.*\[5\].*\[2, 3\]"):
        block.append_op("tanh", {"X": a}, {"Out": out})
    assert block.program._version == version and len(block.ops) == n_ops and out.op is None


@pytest.mark.parametrize("bad, err", [
    ({"inputs": {"Y": "a"}}, "unknown input slot"),
    ({"inputs": {}}, "input slot X is missing"),
    ({"inputs": {"X": ["a", "a"]}}, "takes one variable"),
    ({"inputs": {"X": "ghost"}}, "'ghost'"),
])
def test_slot_errors(bad, err):
    block = fl.default_main_program().global_block()
    block.create_var(name="a", shape=[2], dtype="float32")
    with pytest.raises(ValueError, match=err):
        block.append_op("tanh", outputs={"Out": "o"}, **bad)
    assert "o" not in block.vars


def test_unique_name_generate_and_guard():
    with fl.unique_name.guard():
        assert fl.unique_name.generate("fc") == "fc_0"
        assert fl.unique_name.generate("fc") == "fc_1"
        with fl.unique_name.guard():
            assert fl.unique_name.generate("fc") == "fc_0"
        assert fl.unique_name.generate("fc") == "fc_2"


def test_param_attr_name_initializer_trainable_and_sharing():
    x = layers.data(name="x", shape=[2], dtype="float32")
    attr = fl.ParamAttr(name="shared_w", initializer=fl.initializer.Constant(0.5), learning_rate=0.1,
                        trainable=False, need_clip=False)
    layers.fc(x, size=3, param_attr=attr, bias_attr=False)
    layers.fc(x, size=3, param_attr=attr, bias_attr=False)  # same name: the parameter is shared
    params = fl.default_main_program().all_parameters()
    assert [p.name for p in params] == ["shared_w"]
    w = params[0]
    assert not w.trainable and w.stop_gradient and not w.need_clip and w.optimize_attr["learning_rate"] == 0.1
    fl.Executor().run(fl.default_startup_program())
    np.testing.assert_array_equal(fl.fetch_var("shared_w"), np.full((2, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="learning_rate"):
        fl.ParamAttr(learning_rate=-1)
    with pytest.raises(ValueError, match="shared_w.*shape"):
        layers.fc(x, size=4, param_attr=attr, bias_attr=False)


def test_create_parameter_spec_signature():
    block = fl.default_main_program().global_block()
    p = block.create_parameter(shape=[3, 2], dtype="float64", name="p0",
                               default_initializer=fl.initializer.Normal(0.0, 2.0, seed=5))
    assert isinstance(p, fl.Parameter) and p.dtype == np.float64 and p.name in block.vars
    fl.Executor().run(fl.default_startup_program())
    v = fl.fetch_var("p0")
    assert v.shape == (3, 2) and v.dtype == np.float64


def test_xavier_limits_and_seeded_reproducibility():
    startup = fl.default_startup_program()
    startup.random_seed = 11
    x = layers.data(name="x", shape=[300], dtype="float32")
    layers.fc(x, size=200, bias_attr=False)
    exe = fl.Executor()
    exe.run(startup)
    w = fl.fetch_var("fc_0.w_0")
    limit = np.sqrt(6.0 / (300 + 200))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert abs(w.std() - limit / np.sqrt(3)) < 0.01  # the std of U(-l, l)
    # the same random_seed builds the same startup program: the same numbers
    main2, startup2 = fl.Program(), fl.Program()
    startup2.random_seed = 11
    with fl.program_guard(main2, startup2), fl.unique_name.guard():
        x2 = layers.data(name="x", shape=[300], dtype="float32")
        layers.fc(x2, size=200, bias_attr=False)
    scope2 = fl.Scope()
    exe.run(startup2, scope=scope2)
    np.testing.assert_array_equal(fl.fetch_var("fc_0.w_0", scope2), w)


def test_sub_block_sees_parent_vars():
    main = fl.default_main_program()
    x = layers.data(name="x", shape=[2], dtype="float32")
    sub = main._create_block()
    assert sub.parent_idx == 0 and main.current_block() is sub and main.block(1) is sub
    assert sub.var("x") is x
    y = layers.tanh(x)  # appended to the current (sub) block
    assert y.block is sub and "x" not in sub.vars
    main._rollback()
    assert main.current_block() is main.global_block()


def test_program_guard_rejects_non_programs():
    with pytest.raises(TypeError, match="Program"):
        with fl.program_guard("main"):
            pass


def test_verify_accepts_backward_and_catches_undefined_reads():
    x = layers.data(name="x", shape=[3], dtype="float32")
    loss = layers.mean(layers.fc(x, size=2, act="tanh", bias_attr=False))
    fl.append_backward(loss)
    fl.verify(fl.default_main_program())
    block = fl.default_main_program().global_block()
    block.create_var(name="dangling", shape=[3], dtype="float32")
    block.append_op("tanh", {"X": "dangling"}, {"Out": "t"})
    with pytest.raises(ValueError, match="'dangling' is read before"):
        fl.verify(fl.default_main_program())


def test_role_guard():
    main = fl.default_main_program()
    x = layers.data(name="x", shape=[3], dtype="float32")
    with main._role_guard("error_clip"):
        layers.tanh(x)
    assert main.global_block().ops[-1].role == "error_clip"
    with pytest.raises(ValueError, match="unknown op role"):
        with main._role_guard("sideways"):
            pass


def test_create_var_refuses_a_different_dtype_for_an_existing_name():
    block = fl.default_main_program().global_block()
    block.create_var(name="v", shape=[2], dtype="float32")
    assert block.create_var(name="v", shape=[2], dtype="float32") is block.var("v")
    with pytest.raises(ValueError, match="'v'.*float32.*float64"):
        block.create_var(name="v", shape=[2], dtype="float64")


def test_clone_does_not_share_parameter_settings():
    x = layers.data(name="x", shape=[2], dtype="float32")
    layers.fc(x, size=2, bias_attr=False)
    main = fl.default_main_program()
    copy = main.clone()
    copy.global_block().var("fc_0.w_0").optimize_attr["learning_rate"] = 0.5
    assert main.global_block().var("fc_0.w_0").optimize_attr["learning_rate"] == 1.0


def test_verify_accepts_a_program_after_error_clip_gradient_clip_and_optimize():
    x = layers.data(name="x", shape=[3], dtype="float32")
    y = layers.data(name="y", shape=[1], dtype="float32")
    h = layers.fc(x, size=4, act="tanh")
    h.error_clip = fl.clip.ErrorClipByValue(0.1)
    loss = layers.mean(layers.square_error_cost(layers.fc(h, size=1), y))
    fl.optimizer.Adam(0.01).minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0, skip_nonfinite=True),
                                     callback=fl.clip.error_clip_callback)
    program = fl.default_main_program()
    fl.verify(program)
    roles = {op.role for op in program.global_block().ops}
    assert roles == {"forward", "backward", "error_clip", "grad_clip", "optimize"}
