"""load_program against hostile files: only allow-listed constructors run, strict JSON, verify on load."""
import inspect
import json
import math

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import clip, io, io_objects, layers


def _trained(opt=None, grad_clip=None, reg=None, gclip=None):
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4])
        h = layers.fc(x, size=3, act="tanh", param_attr=fl.ParamAttr(name="w", regularizer=reg, gradient_clip=gclip))
        loss = layers.mean(h)
        (opt or fl.optimizer.SGD(0.1)).minimize(loss, grad_clip=grad_clip)
    return main, startup


def _dump(program):
    return json.loads(json.dumps(io.program_to_dict(program), allow_nan=False))


def _load(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return io.load_program(path)


def _var(data, name):
    return next(v for v in data["blocks"][0]["vars"] if v["name"] == name)


def _op(data, type):
    return next(o for o in data["blocks"][0]["ops"] if o["type"] == type)


def test_a_value_the_constructor_refuses_is_refused(tmp_path):
    main, _ = _trained(reg=fl.regularizer.L2Decay(0.5))
    data = _dump(main)
    _var(data, "w")["parameter"]["regularizer"]["fields"]["coeff"] = -5.0
    with pytest.raises(ValueError, match=r"w.*regularizer.*L2Decay.*refused.*coeff"):
        _load(tmp_path, data)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_non_json_literals_are_refused(tmp_path, literal):
    main, _ = _trained(fl.optimizer.Momentum(0.1, 0.9))
    text = json.dumps(_dump(main)).replace('"mu": 0.9', f'"mu": {literal}')
    assert literal in text
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not JSON"):
        io.load_program(path)


@pytest.mark.parametrize("op_type, attr", [("momentum", "mu"), ("uniform_random", "max"), ("scale", "scale")])
def test_an_infinite_attribute_is_refused_where_the_api_refuses_it(tmp_path, op_type, attr):
    main, startup = _trained(fl.optimizer.Momentum(0.1, 0.9))
    if op_type == "uniform_random":
        main = startup
        startup.global_block().append_op("uniform_random", outputs={"Out": "u"}, attrs={"shape": [2], "max": 2.0})
    if op_type == "scale":
        main.global_block().append_op("scale", {"X": "w"}, {"Out": "w2"}, {"scale": 3.0})
    data = _dump(main)
    _op(data, op_type)["attrs"][attr] = {"__float__": "inf"}
    with pytest.raises(ValueError, match=rf"'{op_type}'.*{attr}.*inf"):
        _load(tmp_path, data)


def test_norm_type_inf_is_written_as_strict_json_and_read_back(tmp_path):
    main, _ = _trained(gclip=clip.GradientClipByGlobalNorm(1.0, norm_type=float("inf")))
    path = tmp_path / "p.json"
    io.save_program(main, path)
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert '"__float__": "inf"' in text
    main2 = io.load_program(path)
    assert str(main2) == str(main)
    assert main2.global_block().var("w").gradient_clip_attr.norm_type == math.inf


called = []


def _spy(*a, **k):
    called.append((a, k))
    return clip.ErrorClipByValue(1.0)


@pytest.mark.parametrize("cls", [
    "fluidlite.clip.set_gradient_clip",            # a function of an allowed module
    "collections.OrderedDict",                     # a class outside the allow-list
    "fluidlite.clip.BaseErrorClip",                # a base class
    "fluidlite.clip.GradientClipBase",
    "fluidlite.initializer.ConstantInitializer",   # an alias name of an allowed class
    "fluidlite.io_objects.obj_from_json",
    "builtins.eval",
    "fluidlite.clip.ErrorClipByValue.__new__",
])
def test_nothing_but_allow_listed_classes_is_called(tmp_path, monkeypatch, cls):
    monkeypatch.setattr(clip, "set_gradient_clip", _spy)
    main, _ = _trained()
    data = _dump(main)
    _var(data, "fc_0.tmp_0")["error_clip"] = {"class": cls, "fields": {}}
    called.clear()
    with pytest.raises(ValueError, match="not one of the allowed classes"):
        _load(tmp_path, data)
    assert not called


def test_fields_the_constructor_does_not_make_are_refused(tmp_path):
    main, _ = _trained()
    main.global_block().var("fc_0.tmp_0").error_clip = clip.ErrorClipByValue(0.5)
    data = _dump(main)
    _var(data, "fc_0.tmp_0")["error_clip"]["fields"]["_append_clip_op"] = 1
    with pytest.raises(ValueError, match="_append_clip_op.*not what its constructor makes"):
        _load(tmp_path, data)
    _var(data, "fc_0.tmp_0")["error_clip"]["fields"] = {"max": 0.5, "min": 2.0}
    with pytest.raises(ValueError, match="refused.*max"):
        _load(tmp_path, data)


def _concrete_clip_classes():
    """Every public clip class of fluidlite.clip (a base class aside)."""
    bases = (clip.BaseErrorClip, clip.GradientClipBase)
    found = {getattr(clip, n) for n in clip.__all__}
    return sorted((c for c in found if isinstance(c, type) and issubclass(c, bases) and c not in bases),
                  key=lambda c: c.__qualname__)


def _example(cls):
    params = inspect.signature(cls.__init__).parameters
    args = {}
    for name, p in params.items():
        if name != "self" and p.default is inspect.Parameter.empty:
            args[name] = 0.5
    return cls(**args)


@pytest.mark.parametrize("cls", _concrete_clip_classes(), ids=lambda c: c.__qualname__)
def test_every_clip_class_is_allow_listed_and_round_trips(tmp_path, cls):
    assert f"{cls.__module__}.{cls.__qualname__}" in io_objects.ALLOWED
    obj = _example(cls)
    main, _ = _trained()
    main.global_block().var("w").gradient_clip_attr = obj
    main2 = _load(tmp_path, _dump(main))
    back = main2.global_block().var("w").gradient_clip_attr
    assert type(back) is cls and vars(back) == vars(obj)


def test_deep_nesting_and_bad_bytes_are_value_errors_naming_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="deep.json.*nested too deeply"):
        io.load_program(path)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"format_version": 1, "x": "\xff"}')
    with pytest.raises(ValueError, match="latin1.json.*UTF-8"):
        io.load_program(path)


def test_a_non_regular_file_is_refused_without_blocking(tmp_path):
    import os
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        io.load_program(fifo)


@pytest.mark.parametrize("dtype", ["O", "U4", "V8", "datetime64[s]", "float32,int8"])
def test_only_numeric_dtypes_load(tmp_path, dtype):
    main, _ = _trained()
    data = _dump(main)
    _var(data, "fc_0.tmp_0")["dtype"] = dtype
    with pytest.raises(ValueError, match="dtype"):
        _load(tmp_path, data)


# ---------------------------------------------------------------- verify on load and verify itself

def test_an_op_reading_its_own_output_does_not_load(tmp_path):
    main, _ = _trained()
    data = _dump(main)
    op = _op(data, "tanh")
    op["inputs"]["X"] = list(op["outputs"]["Out"])
    with pytest.raises(ValueError, match=r"(?s)p.json.*does not verify.*'tanh'.*read before any op writes it"):
        _load(tmp_path, data)


def test_a_gradient_of_another_shape_does_not_load(tmp_path):
    """tanh_grad's Out@GRAD pointing at a [3, 4]-shaped var: element counts agree at batch 4, shapes do not."""
    main, _ = _trained()
    block = main.global_block()
    block.create_var(name="other", shape=(3, 4), dtype="float32", persistable=True)
    data = _dump(main)
    grad = _op(data, "tanh_grad")
    grad["inputs"]["Out@GRAD"] = ["other"]
    with pytest.raises(ValueError, match=r"(?s)tanh_grad.*Out@GRAD 'other'.*float32\[3, 4\].*'tanh' gives Out"):
        _load(tmp_path, data)


def test_verify_rederives_every_type_from_the_opdef():
    main, _ = _trained()
    fl.verify(main)
    block = main.global_block()
    var = block.var("fc_0.tmp_1")  # tanh's input: change its declared type behind the framework's back
    var.dtype = np.dtype("float64")
    with pytest.raises(ValueError, match=r"'tanh'.*declared float32.*gives float64"):
        fl.verify(main)
    var.dtype = np.dtype("float32")
    op = next(o for o in block.ops if o.type == "tanh")
    op.inputs["Bogus"] = ["x"]
    with pytest.raises(ValueError, match="unknown input slot 'Bogus'"):
        fl.verify(main)
    del op.inputs["Bogus"]
    grad = next(o for o in block.ops if o.type == "mul_grad")
    grad.outputs["X@GRAD"] = ["fc_0.tmp_1"]
    with pytest.raises(ValueError, match="mul_grad"):
        fl.verify(main)


def test_a_missing_or_unreadable_program_file_is_a_value_error_naming_it(tmp_path):
    from fluidlite import cli
    missing = tmp_path / "nowhere" / "prog.json"
    with pytest.raises(ValueError, match=r"nowhere/prog\.json: cannot read the program file: No such file"):
        io.load_program(missing)
    assert cli.main(["show", str(missing)]) == 1  # the CLI prints it as one line
