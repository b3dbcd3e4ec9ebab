"""Random and mutated program JSON through load_program, tampered checkpoints through load_persistables.

The contract: a loader returns a verified program (or loads a whole checkpoint), or raises ValueError or
TypeError; nothing else escapes, nothing hangs (each case has a deadline), nothing outside the
allow-list is called, and a refused checkpoint leaves the scope untouched.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluidlite as fl
from fluidlite import io, layers
from fuzz_profile import fuzz_settings, report

CALLED = []
CALLABLES = ["fluidlite.clip.set_gradient_clip", "os.system", "builtins.eval", "collections.OrderedDict",
             "fluidlite.io.save_program", "fluidlite.clip.GradientClipBase", "fluidlite.initializer.Initializer"]
CLASSES = ["fluidlite.clip.ErrorClipByValue", "fluidlite.clip.GradientClipByGlobalNorm", "fluidlite.regularizer.L2Decay",
           "fluidlite.initializer.Uniform", "fluidlite.initializer.Xavier"]


def _programs():
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4])
        h = layers.fc(x, size=3, act="tanh", param_attr=fl.ParamAttr(
            name="w", regularizer=fl.regularizer.L2Decay(0.1),
            gradient_clip=fl.clip.GradientClipByNorm(1.0, norm_type=float("inf"))))
        h.error_clip = fl.clip.ErrorClipByValue(0.5)
        d = layers.dropout(h, 0.3, seed=2)
        loss = layers.mean(layers.scale(d, 2.0))
        fl.optimizer.Momentum(0.1, 0.9).minimize(loss, callback=fl.clip.error_clip_callback)
    return [io.program_to_dict(main), io.program_to_dict(startup)]


BASES = [json.loads(json.dumps(d)) for d in _programs()]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**63]),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                    st.sampled_from(["float32", "int64", "O", "tanh", "x", "w", "fc_0.tmp_0", "@GRAD", ""]),
                    st.builds(lambda s: {"__float__": s}, st.sampled_from(["inf", "-inf", "nan", "1"])))
objects = st.builds(lambda c, f: {"class": c, "fields": f}, st.sampled_from(CALLABLES + CLASSES),
                    st.dictionaries(st.sampled_from(["max", "min", "coeff", "clip_norm", "low", "seed", "x"]), scalars,
                                    max_size=3))
json_values = st.recursive(st.one_of(scalars, objects),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def _mutate(data, doc):
    """Replace, delete or duplicate something at a random place of `doc` (in place)."""
    node = doc
    for _ in range(data.draw(st.integers(0, 6))):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        children = [(k, v) for k, v in children if isinstance(v, (dict, list))]
        if not children:
            break
        node = data.draw(st.sampled_from(children))[1]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    action = data.draw(st.sampled_from(["replace", "delete", "duplicate", "add"]))
    if action == "add" or not keys:
        if isinstance(node, dict):
            node[data.draw(st.sampled_from(["type", "name", "shape", "attrs", "class", "inputs", "zz"]))] = \
                data.draw(json_values)
        else:
            node.append(data.draw(json_values))
        return
    key = data.draw(st.sampled_from(keys))
    if action == "replace":
        node[key] = data.draw(json_values)
    elif action == "delete":
        del node[key]
    elif isinstance(node, list):
        node.insert(key, json.loads(json.dumps(node[key])))
    else:
        node[key] = [node[key], node[key]]


@pytest.fixture(autouse=True)
def _spies(monkeypatch):
    def spy(*a, **k):
        CALLED.append(a)
    for target in ("fluidlite.clip.set_gradient_clip", "os.system", "fluidlite.io.save_program"):
        monkeypatch.setattr(target, spy)
    CALLED.clear()


def _load(text, source="<fuzz>"):
    try:
        program = io.loads_program(text, source=source)
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error must say what is wrong"
        return "refused"
    fl.verify(program)
    return "loaded"


@fuzz_settings(60, deadline_ms=10000)
@given(st.data())
def test_mutated_program_json_is_loaded_and_verified_or_refused(data):
    doc = json.loads(json.dumps(data.draw(st.sampled_from(BASES))))
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(data, doc)
    outcome = _load(json.dumps(doc))
    assert not CALLED
    report("program_json", **{outcome: 1})


@fuzz_settings(30, deadline_ms=10000)
@given(st.data())
def test_random_bytes_and_text_edits_are_refused_cleanly(data):
    text = json.dumps(data.draw(st.sampled_from(BASES)))
    raw = text.encode()
    cut = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(max_size=8) | st.sampled_from([b"[" * 5000, b"Infinity", b"NaN", b"\xff\xfe", b"\\u0000"]))
    raw = raw[:cut] + junk + raw[cut + data.draw(st.integers(0, 8)):]
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(raw)
    try:
        try:
            io.load_program(f.name)
            outcome = "loaded"
        except (ValueError, TypeError) as exc:
            outcome = "refused"
            assert os.path.basename(f.name) in str(exc) or "<" in str(exc)
    finally:
        os.unlink(f.name)
    assert not CALLED
    report("program_bytes", **{outcome: 1})


# ---------------------------------------------------------------- checkpoints

def _checkpoint():
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3])
        layers.fc(x, size=2, param_attr=fl.ParamAttr(name="w"), bias_attr=fl.ParamAttr(name="b"))
    scope = fl.Scope()
    fl.Executor().run(startup, scope=scope)
    root = tempfile.mkdtemp(prefix="fl_ck_")
    io.save_persistables(os.path.join(root, "ck"), main, scope)
    return main, os.path.join(root, "ck"), {k: scope.get_array(k).copy() for k in ("w", "b")}


MAIN, CK, VALUES = _checkpoint()


def _tamper(data, ck):
    import hashlib
    manifest = json.load(open(os.path.join(ck, "manifest.json")))
    files = sorted(f for f in os.listdir(ck) if f.endswith(".npy"))
    what = data.draw(st.sampled_from(["bytes", "truncate", "extend", "manifest", "symlink", "fifo", "dir", "swap"]))
    target = os.path.join(ck, data.draw(st.sampled_from(files)))
    if what in ("bytes", "truncate", "extend"):
        raw = bytearray(open(target, "rb").read())
        if what == "bytes":
            for _ in range(data.draw(st.integers(1, 4))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        elif what == "truncate":
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=64))
        os.unlink(target)
        open(target, "wb").write(bytes(raw))
        if data.draw(st.booleans()):  # an attacker who also fixes the checksum
            for e in manifest["variables"]:
                if e["file"] == os.path.basename(target):
                    e["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    elif what == "manifest":
        _mutate(data, manifest)
    elif what == "symlink":
        os.unlink(target)
        os.symlink(data.draw(st.sampled_from(["/dev/zero", "/etc/hostname", files[0]])), target)
    elif what == "fifo":
        os.unlink(target)
        os.mkfifo(target)
    elif what == "dir":
        os.unlink(target)
        os.mkdir(target)
    else:
        a, b = manifest["variables"][0], manifest["variables"][1]
        a["name"], b["name"] = b["name"], a["name"]
    with open(os.path.join(ck, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return what


@fuzz_settings(40, deadline_ms=10000)
@given(st.data())
def test_tampered_checkpoints_load_whole_or_are_refused_untouched(data):
    root = tempfile.mkdtemp(prefix="fl_tamper_")
    try:
        ck = os.path.join(root, "ck")
        shutil.copytree(CK, ck, symlinks=True)
        what = _tamper(data, ck)
        scope = fl.Scope()
        scope.set_array("sentinel", np.ones(2))
        before = dict(scope.arrays)
        try:
            io.load_persistables(ck, MAIN, scope)
        except ValueError as exc:
            assert "ck" in str(exc)
            assert scope.arrays.keys() == before.keys() and all(scope.arrays[k] is before[k] for k in before)
            report("checkpoint", refused=1)
            return
        for k, v in VALUES.items():  # loaded: whole, and typed as the program declares
            assert scope.get_array(k).shape == v.shape and scope.get_array(k).dtype == v.dtype
        report("checkpoint", loaded=1, **{f"loaded_after_{what}": 1})
    finally:
        shutil.rmtree(root)
