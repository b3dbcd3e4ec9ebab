import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import io, layers


def _build(seed=7):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = seed
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[5])
        h = layers.fc(x, size=6, act="tanh", bias_attr=False)
        h2 = layers.fc([x, h], size=3, bias_attr=False, param_attr=[fl.ParamAttr(name="odd/name@v1"), None])
        loss = layers.mean(layers.scale(h2, scale=2.5, bias=-0.25))
    return main, startup, loss


def _roundtrip(program, tmp_path, name="p.json"):
    path = tmp_path / name
    io.save_program(program, path)
    return io.load_program(path)


def test_program_json_roundtrip_is_identical(tmp_path):
    main, startup, loss = _build()
    main2, startup2 = _roundtrip(main, tmp_path), _roundtrip(startup, tmp_path, "s.json")
    assert str(main2) == str(main) and str(startup2) == str(startup)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format_version"] == io.FORMAT_VERSION
    for b, b2 in zip(main.blocks, main2.blocks):
        assert list(b.vars) == list(b2.vars)
        for v in b.vars.values():
            v2 = b2.vars[v.name]
            assert (type(v2), v2.shape, v2.dtype, v2.persistable, v2.stop_gradient, v2.is_data) == \
                (type(v), v.shape, v.dtype, v.persistable, v.stop_gradient, v.is_data)
        for op, op2 in zip(b.ops, b2.ops):
            assert (op2.type, op2.role, op2.inputs, op2.outputs, op2.attrs) == \
                (op.type, op.role, op.inputs, op.outputs, op.attrs)
            assert all(type(op2.attrs[k]) is type(op.attrs[k]) for k in op.attrs)  # tuples come back as tuples
    shape_attr = startup2.global_block().ops[0].attrs["shape"]
    assert isinstance(shape_attr, tuple) and shape_attr == startup.global_block().ops[0].attrs["shape"]
    for p in main.all_parameters():
        p2 = main2.global_block().var(p.name)
        assert (p2.trainable, p2.optimize_attr, p2.need_clip) == (p.trainable, p.optimize_attr, p.need_clip)
        assert repr(p2.initializer) == repr(p.initializer)
    assert main2.global_block().var(loss.name).op.type == "mean"


def test_roundtripped_program_runs_bit_identically(tmp_path, rng):
    main, startup, loss = _build()
    main2, startup2 = _roundtrip(main, tmp_path), _roundtrip(startup, tmp_path, "s.json")
    exe = fl.Executor()
    xs = rng.standard_normal((4, 5)).astype("float32")
    results = []
    for m, s in ((main, startup), (main2, startup2)):
        scope = fl.Scope()
        exe.run(s, scope=scope)  # the seeds are attributes, so the same init is drawn
        out, = exe.run(m, feed={"x": xs}, fetch_list=[loss.name], scope=scope)
        results.append((out, {p.name: scope.get_array(p.name).copy() for p in main.all_parameters()}))
    (a, pa), (b, pb) = results
    assert a.tobytes() == b.tobytes()
    assert all(pa[k].tobytes() == pb[k].tobytes() for k in pa)
    # and against an independent numpy evaluation of the same graph
    w0, w1, w2 = (pa[p.name].astype("float64") for p in main.all_parameters())
    h = np.tanh(xs @ w0)
    ref = np.mean(2.5 * (xs @ w1 + h @ w2) - 0.25)
    assert np.allclose(a, ref, rtol=1e-5)


def test_backward_program_roundtrip_when_available(tmp_path, rng):
    if getattr(fl, "append_backward", None) is None:
        pytest.skip("backward builder not available")
    main, startup, loss = _build()
    with fl.program_guard(main, startup):
        pairs = fl.append_backward(loss)
    main2 = _roundtrip(main, tmp_path)
    assert str(main2) == str(main)
    exe = fl.Executor()
    scope = fl.Scope()
    exe.run(startup, scope=scope)
    xs = rng.standard_normal((3, 5)).astype("float32")
    grads = [g.name for _, g in pairs]
    a = exe.run(main, feed={"x": xs}, fetch_list=grads, scope=scope)
    b = exe.run(main2, feed={"x": xs}, fetch_list=grads, scope=scope)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b))


def _saved(tmp_path):
    main, startup, loss = _build()
    path = tmp_path / "p.json"
    io.save_program(main, path)
    return path, json.loads(path.read_text())


def _load_edited(tmp_path, data):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return io.load_program(path)


def test_rejects_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format_version": 1, "blocks": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        io.load_program(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level"):
        io.load_program(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("format_version"), "format_version"),
    (lambda d: d.update(format_version=99), "newer"),
    (lambda d: d.update(blocks=[]), "empty"),
    (lambda d: d["blocks"][0].update(idx=3), r"blocks\[0\].*idx"),
    (lambda d: d["blocks"][0]["vars"][0].pop("dtype") and d["blocks"][0]["vars"][0].update(shape="x"), "shape"),
    (lambda d: d["blocks"][0]["vars"][1].update(dtype="float77"), "float77"),
    (lambda d: d["blocks"][0]["vars"][0].update(persistable="yes"), "persistable"),
    (lambda d: d["blocks"][0]["vars"].append(dict(d["blocks"][0]["vars"][0])), "duplicate"),
    (lambda d: d["blocks"][0]["ops"][0].pop("inputs"), r"ops\[0\].*inputs"),
    (lambda d: d["blocks"][0]["ops"][0].update(role="sideways"), "sideways"),
    (lambda d: d["blocks"][0]["ops"][0]["inputs"].update(X="x"), "list of variable names"),
])
def test_rejects_broken_structure(tmp_path, edit, message):
    _, data = _saved(tmp_path)
    edit(data)
    with pytest.raises(ValueError, match=message):
        _load_edited(tmp_path, data)


def test_rejects_unknown_op_type(tmp_path):
    _, data = _saved(tmp_path)
    data["blocks"][0]["ops"][1]["type"] = "frobnicate"
    with pytest.raises(ValueError, match=r"ops\[1\].*unknown op type 'frobnicate'"):
        _load_edited(tmp_path, data)


def test_rejects_dangling_reference(tmp_path):
    _, data = _saved(tmp_path)
    data["blocks"][0]["ops"][0]["inputs"]["X"] = ["ghost"]
    with pytest.raises(ValueError, match=r"ops\[0\].*'mul'.*reads variable 'ghost'"):
        _load_edited(tmp_path, data)
    _, data = _saved(tmp_path)
    data["blocks"][0]["ops"][0]["outputs"]["Out"] = ["ghost_out"]
    with pytest.raises(ValueError, match="writes variable 'ghost_out'"):
        _load_edited(tmp_path, data)


def test_rejects_bad_attribute_type_and_unknown_attribute(tmp_path):
    _, data = _saved(tmp_path)
    scale = next(op for op in data["blocks"][0]["ops"] if op["type"] == "scale")
    scale["attrs"]["scale"] = "big"
    with pytest.raises(TypeError, match="scale.*'scale'.*'big'"):
        _load_edited(tmp_path, data)
    scale["attrs"]["scale"] = 2.0
    scale["attrs"]["colour"] = 1
    with pytest.raises(ValueError, match="colour"):
        _load_edited(tmp_path, data)


def test_rejects_shapes_that_inference_contradicts(tmp_path):
    _, data = _saved(tmp_path)
    for v in data["blocks"][0]["vars"]:
        if v["name"] == "fc_0.tmp_0":
            v["shape"] = [-1, 99]
    with pytest.raises(ValueError, match="fc_0.tmp_0"):
        _load_edited(tmp_path, data)


def test_unrebuildable_objects_load_as_none_with_warning(tmp_path):
    main, startup, loss = _build()
    main.global_block().var("fc_0.tmp_1").error_clip = object()
    path = tmp_path / "p.json"
    io.save_program(main, path)
    saved = json.loads(path.read_text())["blocks"][0]["vars"]
    assert "repr" in next(v for v in saved if v["name"] == "fc_0.tmp_1")["error_clip"]
    with pytest.warns(UserWarning, match="repr"):
        main2 = io.load_program(path)
    assert main2.global_block().var("fc_0.tmp_1").error_clip is None


def test_error_clip_roundtrips_when_clip_module_exists(tmp_path):
    clip = pytest.importorskip("fluidlite.clip")
    main, startup, loss = _build()
    main.global_block().var("fc_0.tmp_1").error_clip = clip.ErrorClipByValue(max=0.5)
    main2 = _roundtrip(main, tmp_path)
    ec = main2.global_block().var("fc_0.tmp_1").error_clip
    assert type(ec) is clip.ErrorClipByValue and vars(ec) == vars(main.global_block().var("fc_0.tmp_1").error_clip)


# ---------------------------------------------------------------- checkpoints

def _init_scope(startup, main, seed_shift=0.0):
    scope = fl.Scope()
    fl.Executor().run(startup, scope=scope)
    for p in main.all_parameters():
        scope.set_array(p.name, scope.get_array(p.name) + np.asarray(seed_shift, scope.get_array(p.name).dtype))
    return scope


def _values(scope, main):
    return {p.name: scope.get_array(p.name).copy() for p in main.all_parameters()}


def test_checkpoint_roundtrip(tmp_path):
    main, startup, loss = _build()
    scope = _init_scope(startup, main)
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, scope)
    manifest = json.loads((ck / "manifest.json").read_text())
    names = [e["name"] for e in manifest["variables"]]
    assert sorted(names) == sorted(p.name for p in main.all_parameters())
    assert all("/" not in e["file"] and "@" not in e["file"] for e in manifest["variables"])
    for e in manifest["variables"]:  # independent check of the manifest's facts
        data = (ck / e["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        arr = np.load(ck / e["file"], allow_pickle=False)
        assert list(arr.shape) == e["shape"] and arr.dtype.name == e["dtype"]
        assert np.array_equal(arr, scope.get_array(e["name"]))
    fresh = fl.Scope()
    assert sorted(io.load_persistables(ck, main, fresh)) == sorted(names)
    assert all(np.array_equal(fresh.get_array(n), scope.get_array(n)) for n in names)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary siblings left


def test_checkpoint_keeps_a_scalar_persistable_scalar(tmp_path):
    main = fl.Program()
    main.global_block().create_var(name="step", shape=(), dtype="int64", persistable=True)
    scope = fl.Scope()
    scope.var("step").get_tensor().set(np.array(7, np.int64))
    io.save_persistables(tmp_path / "ck", main, scope)
    fresh = fl.Scope()
    io.load_persistables(tmp_path / "ck", main, fresh)
    value = np.asarray(fresh.var("step").get_tensor())
    assert value.shape == () and value == 7


def test_checkpoint_defaults_use_default_program_and_global_scope(tmp_path):
    main, startup, loss = _build()
    with fl.program_guard(main, startup):
        fl.Executor().run(startup)
        io.save_persistables(tmp_path / "ck")
        before = _values(fl.global_scope(), main)
        for p in main.all_parameters():
            fl.global_scope().arrays[p.name] = np.zeros_like(before[p.name])
        io.load_persistables(str(tmp_path / "ck"))
        after = _values(fl.global_scope(), main)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_save_requires_values_and_refuses_foreign_directories(tmp_path):
    main, startup, loss = _build()
    with pytest.raises(ValueError, match="fc_0.w_0.*no value"):
        io.save_persistables(tmp_path / "ck", main, fl.Scope())
    other = tmp_path / "mydata"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a fluidlite checkpoint"):
        io.save_persistables(other, main, _init_scope(startup, main))
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        io.load_persistables(tmp_path / "missing", main, fl.Scope())


def _check_untouched(ck, main, message, scope=None):
    scope = scope or fl.Scope()
    scope.set_array("sentinel", np.ones(2))
    before = dict(scope.arrays)
    with pytest.raises(ValueError, match=message):
        io.load_persistables(ck, main, scope)
    assert scope.arrays.keys() == before.keys() and all(scope.get_array(k) is before[k] for k in before)


def test_checksum_mismatch_names_variable_and_changes_nothing(tmp_path):
    main, startup, loss = _build()
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, _init_scope(startup, main))
    entry = json.loads((ck / "manifest.json").read_text())["variables"][-1]
    raw = bytearray((ck / entry["file"]).read_bytes())
    raw[-1] ^= 0x01  # flip one bit of the last value
    (ck / entry["file"]).write_bytes(bytes(raw))
    _check_untouched(ck, main, f"'{entry['name']}'.*checksum")


def test_shape_and_dtype_mismatch_name_the_variable(tmp_path):
    main, startup, loss = _build()
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, _init_scope(startup, main))
    other_main, other_startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(other_main, other_startup):  # same names, another shape
        x = layers.data(name="x", shape=[5])
        layers.fc(x, size=7, bias_attr=False)
    _check_untouched(ck, other_main, r"'fc_0.w_0'.*shape \[5, 6\].*declares \[5, 7\]")
    f64_main, f64_startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(f64_main, f64_startup):
        x = layers.data(name="x", shape=[5], dtype="float64")
        layers.fc(x, size=6, bias_attr=False)
    _check_untouched(ck, f64_main, r"'fc_0.w_0'.*dtype float32.*declares float64")
    # a manifest that lies about a file is caught too
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["variables"][0]["shape"] = [1, 2, 3]
    (ck / "manifest.json").write_text(json.dumps(manifest))
    _check_untouched(ck, main, f"'{manifest['variables'][0]['name']}'.*manifest says")


def test_missing_variable_and_bad_manifest(tmp_path):
    main, startup, loss = _build()
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, _init_scope(startup, main))
    manifest = json.loads((ck / "manifest.json").read_text())
    gone = manifest["variables"].pop(0)
    (ck / "manifest.json").write_text(json.dumps(manifest))
    _check_untouched(ck, main, f"no variable '{gone['name']}'")
    manifest["variables"].insert(0, dict(gone, file="../escape.npy"))
    (ck / "manifest.json").write_text(json.dumps(manifest))
    _check_untouched(ck, main, "malformed entry")
    (ck / "manifest.json").write_text("{")
    _check_untouched(ck, main, "cannot read manifest")


# ---------------------------------------------------------------- crash safety

class Crash(BaseException):
    """A simulated power cut: not an Exception, so no cleanup code catches it."""


FS_CALLS = ("open", "write", "fsync", "close", "rename", "replace", "mkdir", "makedirs", "remove", "unlink", "rmdir")


class FaultInjector:
    """Counts filesystem calls made through `os` (and shutil.rmtree) and crashes at call number `at`."""

    def __init__(self, monkeypatch, at=None, torn=False):
        self.count, self.at, self.torn = 0, at, torn
        for name in FS_CALLS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name), name))
        monkeypatch.setattr(shutil, "rmtree", self._wrap(shutil.rmtree, "rmtree"))

    def _wrap(self, fn, name):
        def wrapper(*args, **kwargs):
            self.count += 1
            if self.at is not None and self.count == self.at:
                if name == "write" and self.torn:  # half of the bytes reach the disk
                    fn(args[0], bytes(args[1])[: len(args[1]) // 2])
                raise Crash(f"crash at call {self.count} ({name})")
            return fn(*args, **kwargs)
        return wrapper


def _count_calls(monkeypatch, ck, main, scope):
    with monkeypatch.context() as m:
        probe = FaultInjector(m)
        io.save_persistables(ck, main, scope)
    return probe.count


@pytest.mark.parametrize("torn", [False, True])
def test_crash_at_every_step_leaves_whole_old_or_whole_new(tmp_path, monkeypatch, torn):
    main, startup, loss = _build()
    old_scope, new_scope, newer_scope = (_init_scope(startup, main, s) for s in (0.0, 10.0, 20.0))
    old, new, newer = (_values(s, main) for s in (old_scope, new_scope, newer_scope))
    total = _count_calls(monkeypatch, tmp_path / "probe", main, new_scope)
    io.save_persistables(tmp_path / "probe2", main, old_scope)
    total = max(total, _count_calls(monkeypatch, tmp_path / "probe2", main, new_scope))
    assert total > 10
    outcomes = set()
    for n in range(1, total + 1):
        ck = tmp_path / f"ck{n}"
        io.save_persistables(ck, main, old_scope)
        with monkeypatch.context() as m:
            FaultInjector(m, at=n, torn=torn)
            try:
                io.save_persistables(ck, main, new_scope)
                outcomes.add("finished")
            except Crash:
                pass
        loaded = fl.Scope()
        io.load_persistables(ck, main, loaded)
        got = _values(loaded, main)
        is_old = all(np.array_equal(got[k], old[k]) for k in old)
        is_new = all(np.array_equal(got[k], new[k]) for k in new)
        assert is_old != is_new, f"crash at call {n}: a mix of old and new values"
        outcomes.add("new" if is_new else "old")
        # the next save recovers and cleans up; the result is exactly what it wrote
        io.save_persistables(ck, main, newer_scope)
        assert sorted(os.listdir(tmp_path / ".." / tmp_path.name)).count(f"ck{n}") == 1
        assert not [e for e in os.listdir(tmp_path) if e.startswith(f"ck{n}.")], os.listdir(tmp_path)
        loaded = fl.Scope()
        io.load_persistables(ck, main, loaded)
        assert all(np.array_equal(loaded.arrays[k], newer[k]) for k in newer)
        shutil.rmtree(ck)
    assert outcomes >= {"old", "new"}  # crashes hit both before and after the switch


def test_crash_during_first_save_leaves_nothing_or_new(tmp_path, monkeypatch):
    main, startup, loss = _build()
    scope = _init_scope(startup, main, 5.0)
    new = _values(scope, main)
    total = _count_calls(monkeypatch, tmp_path / "probe", main, scope)
    for n in range(1, total + 1):
        ck = tmp_path / f"first{n}"
        with monkeypatch.context() as m:
            FaultInjector(m, at=n)
            try:
                io.save_persistables(ck, main, scope)
            except Crash:
                pass
        loaded = fl.Scope()
        try:
            io.load_persistables(ck, main, loaded)
        except FileNotFoundError:
            assert not loaded.arrays
            continue
        assert all(np.array_equal(loaded.arrays[k], new[k]) for k in new), f"crash at call {n}"


def test_ordinary_error_during_save_keeps_old_and_leaves_no_debris(tmp_path, monkeypatch):
    main, startup, loss = _build()
    old_scope, new_scope = _init_scope(startup, main), _init_scope(startup, main, 1.0)
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, old_scope)
    real_write = os.write

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        io.save_persistables(ck, main, new_scope)
    monkeypatch.setattr(os, "write", real_write)
    assert os.listdir(tmp_path) == ["ck"]
    loaded = fl.Scope()
    io.load_persistables(ck, main, loaded)
    assert all(np.array_equal(loaded.arrays[k], v) for k, v in _values(old_scope, main).items())


def test_gradient_clip_with_variable_link_roundtrips(tmp_path):
    clip = pytest.importorskip("fluidlite.clip")
    if getattr(fl, "optimizer", None) is None:
        pytest.skip("optimizer not available")
    main, startup, loss = _build()
    with fl.program_guard(main, startup):
        clip.set_gradient_clip(clip.GradientClipByGlobalNorm(clip_norm=1.0))
        fl.optimizer.SGD(learning_rate=0.1).minimize(loss)
    main2 = _roundtrip(main, tmp_path)
    assert str(main2) == str(main)
    for p in main.all_parameters():
        a, b = p.gradient_clip_attr, main2.global_block().var(p.name).gradient_clip_attr
        assert type(b) is type(a) and b.clip_norm == a.clip_norm and b.group_name == a.group_name
    assert clip.global_norm_var(program=main2) is main2.global_block().var(clip.global_norm_var(program=main).name)
