"""Checkpoints: a directory holding one `NNNNN.npy`
per persistable variable (indexed names, so any variable name is safe) and `manifest.json`
(name, file, shape, dtype, sha256 of the file). A save is atomic; with one writer at a time:

1. write everything into the sibling `D.tmp-T` (T a fresh token): each file fsynced, the
   manifest written last (as `manifest.json.part`, fsynced, renamed), then the directory fsynced;
2. rename the live `D` to `D.old-T` (skipped on a first save);
3. rename `D.tmp-T` to `D` and fsync the parent directory;
4. rename `D.old-T` to `D.trash-T` and delete it.

A crash before 2 leaves `D` untouched (the old checkpoint); after 3, `D` is the new one. Only a
crash between 2 and 3 leaves no `D`: then `D.old-T` and a complete `D.tmp-T` (it has
`manifest.json`) exist side by side, and loading uses `D.tmp-T` (the new checkpoint, which was
complete before `D` was moved). Without any `D.old-*`, a complete `D.tmp-*` is a first save that
crashed before its rename. `.trash-*` and incomplete `.tmp-*` siblings are never read. The next
save first finishes an interrupted one (renames the chosen sibling to `D`), then removes stale
siblings. Loading reads every file and checks checksums, shapes and dtypes before the scope
is changed at all.
"""
from __future__ import annotations

import hashlib
import io as _stdio
import json
import os
import shutil
import uuid

import numpy as np

from .framework import Program, default_main_program
from .scope import global_scope
from .shapes import dims_match

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _need(cond, where, msg):
    if not cond:
        raise ValueError(f"{where}: {msg}")


def _persistables(program) -> dict:
    program = default_main_program() if program is None else program
    if not isinstance(program, Program):
        raise TypeError(f"expected a Program, got {type(program).__name__}")
    out = {}
    for var in program.list_vars():
        if var.persistable and var.name not in out:
            out[var.name] = var
    return out


def _check_declared(var, shape, dtype, where):
    if var.dtype is not None and np.dtype(dtype) != var.dtype:
        raise ValueError(f"{where}: variable {var.name!r} has dtype {np.dtype(dtype)}, the program declares {var.dtype}")
    if var.shape is not None and (len(shape) != len(var.shape) or not all(map(dims_match, var.shape, shape))):
        raise ValueError(f"{where}: variable {var.name!r} has shape {list(shape)}, the program declares {list(var.shape)}")


def _write_file(path, data: bytes):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _siblings(final) -> dict:
    """kind ('tmp', 'old', 'trash') -> {token: path} for the siblings of checkpoint dir `final`."""
    parent, base = os.path.split(final)
    found = {"tmp": {}, "old": {}, "trash": {}}
    for entry in os.listdir(parent or "."):
        for kind in found:
            prefix = f"{base}.{kind}-"
            if entry.startswith(prefix):
                found[kind][entry[len(prefix):]] = os.path.join(parent, entry)
    return found


def _resolve(final):
    """The directory holding the checkpoint of `final` (itself, or a sibling after a crash), or None."""
    if os.path.isdir(final):
        return final
    if not os.path.isdir(os.path.dirname(final) or "."):
        return None
    sib = _siblings(final)
    complete = {t: p for t, p in sib["tmp"].items() if os.path.isfile(os.path.join(p, MANIFEST))}
    for token in sib["old"]:
        if token in complete:  # crash between steps 2 and 3: the new one was complete
            return complete[token]
    if sib["old"]:
        return max(sib["old"].values(), key=os.path.getmtime)
    if complete:  # a first save that crashed before its rename
        return max(complete.values(), key=lambda p: os.path.getmtime(os.path.join(p, MANIFEST)))
    return None


def _recover_and_clean(final):
    """Finish an interrupted save (see the module docstring), then delete stale siblings."""
    parent = os.path.dirname(final) or "."
    src = _resolve(final)
    if src is not None and src != final:
        os.rename(src, final)
        _fsync_dir(parent)
    for kind, found in _siblings(final).items():
        for token, path in found.items():
            trash = path if kind == "trash" else f"{final}.trash-{token}"
            if path != trash:
                os.rename(path, trash)  # atomically retired, so a half-deleted dir is never read
            shutil.rmtree(trash)


def save_persistables(dirname, program=None, scope=None):
    """Atomically write every persistable variable of `program` found in `scope` to `dirname`."""
    variables = _persistables(program)
    scope = global_scope() if scope is None else scope
    arrays = {}
    for name, var in variables.items():
        value = scope._arrays.get(name)
        if value is None:
            raise ValueError(f"save_persistables: variable {name!r} has no value in the scope (run the startup program first)")
        _check_declared(var, value.shape, value.dtype, "save_persistables")
        arrays[name] = value
    dirname = os.fspath(dirname)
    final = os.path.abspath(dirname)
    if os.path.exists(final) and not (os.path.isdir(final) and (os.path.isfile(os.path.join(final, MANIFEST))
                                                                  or not os.listdir(final))):
        raise ValueError(f"save_persistables: {dirname!r} exists and is not a fluidlite checkpoint; not replacing it")
    _recover_and_clean(final)
    token = uuid.uuid4().hex[:12]
    tmp = f"{final}.tmp-{token}"
    os.mkdir(tmp)
    try:
        entries = []
        for i, (name, value) in enumerate(arrays.items()):
            buf = _stdio.BytesIO()
            np.save(buf, np.asarray(value, order="C"), allow_pickle=False)
            data = buf.getvalue()
            entries.append({"name": name, "file": f"{i:05d}.npy", "shape": list(value.shape),
                            "dtype": value.dtype.name, "sha256": hashlib.sha256(data).hexdigest()})
            _write_file(os.path.join(tmp, entries[-1]["file"]), data)
        manifest = json.dumps({"format_version": FORMAT_VERSION, "variables": entries}, indent=1).encode()
        _write_file(os.path.join(tmp, MANIFEST + ".part"), manifest)
        os.rename(os.path.join(tmp, MANIFEST + ".part"), os.path.join(tmp, MANIFEST))
        _fsync_dir(tmp)
    except Exception:  # an ordinary error leaves no debris; a real crash leaves a tmp dir without a manifest
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(final):
        old = f"{final}.old-{token}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))
    if old is not None:
        trash = f"{final}.trash-{token}"
        os.rename(old, trash)
        shutil.rmtree(trash)


def _read_manifest(src, dirname) -> dict:
    try:
        with open(os.path.join(src, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint {dirname!r}: cannot read {MANIFEST}: {exc}") from None
    where = f"checkpoint {dirname!r} {MANIFEST}"
    _need(isinstance(data, dict) and isinstance(data.get("variables"), list), where, "needs a 'variables' list")
    entries = {}
    for e in data["variables"]:
        ok = (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("file"), str)
              and os.path.basename(e["file"]) == e["file"] and e["file"] not in ("", ".", "..")
              and isinstance(e.get("shape"), list) and isinstance(e.get("dtype"), str) and isinstance(e.get("sha256"), str))
        _need(ok, where, f"malformed entry {e!r}")
        entries[e["name"]] = e
    return entries


def load_persistables(dirname, program=None, scope=None) -> list:
    """Load every persistable variable of `program` from `dirname` into `scope`; returns their names.

    Each value is checked (checksum, shape, dtype against the manifest and the program) before
    any is stored, so on error the scope is unchanged."""
    variables = _persistables(program)
    scope = global_scope() if scope is None else scope
    dirname = os.fspath(dirname)
    final = os.path.abspath(dirname)
    src = _resolve(final)
    if src is None:
        raise FileNotFoundError(f"load_persistables: no checkpoint at {dirname!r}")
    entries = _read_manifest(src, dirname)
    staged = {}
    for name, var in variables.items():
        where = f"load_persistables {dirname!r}"
        e = entries.get(name)
        _need(e is not None, where, f"the checkpoint has no variable {name!r}")
        try:
            with open(os.path.join(src, e["file"]), "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"{where}: variable {name!r}: cannot read {e['file']}: {exc.strerror}") from None
        _need(hashlib.sha256(data).hexdigest() == e["sha256"], where,
              f"variable {name!r}: checksum mismatch (file {e['file']} is corrupt or was changed)")
        try:
            arr = np.load(_stdio.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{where}: variable {name!r}: unreadable .npy file {e['file']}: {exc}") from None
        _need(arr.dtype.name == e["dtype"] and list(arr.shape) == e["shape"], where,
              f"variable {name!r}: file holds {arr.dtype}{list(arr.shape)}, the manifest says {e['dtype']}{e['shape']}")
        _check_declared(var, arr.shape, arr.dtype, where)
        staged[name] = np.asarray(arr, order="C")
    scope._arrays.update(staged)
    return list(staged)


__all__ = ["load_persistables", "save_persistables"]
