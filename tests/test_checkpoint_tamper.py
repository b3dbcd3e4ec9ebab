"""load_persistables against tampered checkpoints: ValueError naming the file, scope untouched, never blocking."""
import hashlib
import io as stdio
import json
import os
import threading

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import io, layers


def _saved(tmp_path):
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3])
        layers.fc(x, size=3, param_attr=fl.ParamAttr(name="w"), bias_attr=fl.ParamAttr(name="b"))
    scope = fl.Scope()
    fl.Executor().run(startup, scope=scope)
    scope.arrays["b"] = np.arange(3, dtype="float32")
    ck = tmp_path / "ck"
    io.save_persistables(ck, main, scope)
    return main, ck


def _manifest(ck):
    return json.loads((ck / "manifest.json").read_text())


def _write_manifest(ck, m):
    (ck / "manifest.json").write_text(json.dumps(m))


def _entry(m, name):
    return next(e for e in m["variables"] if e["name"] == name)


def _rewrite(ck, entry, data):
    """Replace an entry's file and make the manifest agree (checksum, nothing else)."""
    path = ck / entry["file"]
    path.unlink()
    path.write_bytes(data)
    m = _manifest(ck)
    _entry(m, entry["name"])["sha256"] = hashlib.sha256(data).hexdigest()
    _write_manifest(ck, m)


def _refused(ck, main, message):
    scope = fl.Scope()
    scope.arrays["sentinel"] = np.ones(2)
    before = dict(scope.arrays)
    result = {}

    def load():
        try:
            io.load_persistables(ck, main, scope)
        except BaseException as exc:  # noqa: BLE001 (the assertion below says which)
            result["exc"] = exc

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "load_persistables blocked"
    exc = result.get("exc")
    assert type(exc) is ValueError, f"expected ValueError, got {exc!r}"
    import re
    assert re.search(message, str(exc)), str(exc)
    assert scope.arrays.keys() == before.keys() and all(scope.arrays[k] is before[k] for k in before)
    return exc


def test_duplicate_entry_is_refused(tmp_path):
    main, ck = _saved(tmp_path)
    m = _manifest(ck)
    m["variables"].append(dict(m["variables"][0]))
    _write_manifest(ck, m)
    _refused(ck, main, "has two entries")


def test_swapped_file_and_checksum_entries_are_refused(tmp_path):
    main, ck = _saved(tmp_path)
    m = _manifest(ck)
    a, b = m["variables"][0], m["variables"][1]
    a["file"], b["file"] = b["file"], a["file"]
    a["sha256"], b["sha256"] = b["sha256"], a["sha256"]
    _write_manifest(ck, m)
    _refused(ck, main, "out of order")


@pytest.mark.parametrize("bad", ["../w.npy", "w.npy", "00000.npy/..", "", 5, "00000.NPY"])
def test_file_names_outside_the_scheme_are_refused(tmp_path, bad):
    main, ck = _saved(tmp_path)
    m = _manifest(ck)
    m["variables"][0]["file"] = bad
    _write_manifest(ck, m)
    _refused(ck, main, "malformed entry")


def test_symlinks_are_not_followed(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "b")
    outside = tmp_path / "outside.npy"
    outside.write_bytes((ck / e["file"]).read_bytes())  # same bytes: only the link itself is wrong
    (ck / e["file"]).unlink()
    os.symlink(outside, ck / e["file"])
    _refused(ck, main, r"'b'.*%s.*symbolic link" % e["file"])
    os.replace(ck / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", ck / "manifest.json")
    _refused(ck, main, "manifest.json.*symbolic link")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "w")
    (ck / e["file"]).unlink()
    os.mkfifo(ck / e["file"])
    _refused(ck, main, r"'w'.*%s.*not a regular file" % e["file"])


def test_a_larger_file_than_declared_is_not_read(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "b")
    _rewrite(ck, e, (ck / e["file"]).read_bytes() + b"\0" * (1 << 17))
    _refused(ck, main, r"'b'.*more than its entry allows")


def _npy(arr):
    buf = stdio.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_malformed_header_is_a_value_error_naming_the_file(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "b")
    data = bytearray(_npy(np.arange(3, dtype="float32")))
    start = data.index(b"{")
    data[start:start + 12] = b"(" * 12  # an unbalanced Python literal: tokenize fails inside numpy
    _rewrite(ck, e, bytes(data))
    _refused(ck, main, r"'b'.*%s.*malformed \.npy header" % e["file"])


def test_huge_declared_shape_is_refused_before_allocating(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "b")
    header = stdio.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (4_000_000_000_000,)})
    _rewrite(ck, e, header.getvalue() + b"\0" * 12)
    _refused(ck, main, r"'b'.*float32\[4000000000000\].*manifest says")  # header against the manifest
    m = _manifest(ck)
    _entry(m, "b")["shape"] = [4_000_000_000_000]  # the manifest agrees: the size check still holds
    _write_manifest(ck, m)
    _refused(ck, main, r"'b'.*12 data bytes, its header declares 16000000000000")


def test_header_disagreeing_with_the_manifest_or_the_data_is_refused(tmp_path):
    main, ck = _saved(tmp_path)
    e = _entry(_manifest(ck), "b")
    _rewrite(ck, e, _npy(np.arange(3, dtype="float64")))
    _refused(ck, main, r"'b'.*float64.*manifest says")
    _rewrite(ck, e, _npy(np.arange(3, dtype="float32"))[:-4])
    _refused(ck, main, r"'b'.*8 data bytes.*declares 12")


def test_untampered_checkpoint_still_loads(tmp_path):
    main, ck = _saved(tmp_path)
    scope = fl.Scope()
    io.load_persistables(ck, main, scope)
    np.testing.assert_array_equal(scope.arrays["b"], np.arange(3, dtype="float32"))
