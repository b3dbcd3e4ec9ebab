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

Loading trusts nothing in the directory: the manifest must be strict JSON with one entry per
name, files named `NNNNN.npy` in increasing order (a swapped or duplicated entry is refused);
every file is opened with O_NOFOLLOW|O_NONBLOCK and must be a regular file (no symlink, FIFO or
device), no larger than its entry's declared shape allows; the .npy header is parsed without
numpy's loader and must agree with the manifest and with the number of data bytes before any
array is made. Every refusal is a ValueError naming the variable and the file.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io as _stdio
import json
import math
import os
import re
import shutil
import stat
import uuid

import numpy as np

from .framework import Program, default_main_program
from .random_state import is_state
from .scope import global_scope
from .shapes import dims_match

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _need(cond, where, msg):
    if not cond:
        raise ValueError(f"{where}: {msg}")


def _persistables(program, predicate=None, fn="save_persistables") -> dict:
    program = default_main_program() if program is None else program
    if not isinstance(program, Program):
        raise TypeError(f"{fn}: argument 'program' must be a Program, got {type(program).__name__} (the order is "
                        f"(dirname, program=None, scope=None), or Paddle's (executor, dirname, main_program=None))")
    out = {}
    for var in program.list_vars():
        if var.persistable and var.name not in out and (predicate is None or predicate(var)):
            out[var.name] = var
    return out


def _paddle_order(fn):
    """Also accept Paddle's order `fn(executor, dirname, main_program=None)` (the executor is not needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .executor import Executor

        if args and isinstance(args[0], Executor):
            args = args[1:]
        if "executor" in kwargs:
            kwargs.pop("executor")
        if "main_program" in kwargs:
            kwargs["program"] = kwargs.pop("main_program")
        return fn(*args, **kwargs)

    return wrapper


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


@_paddle_order
def save_persistables(dirname, program=None, scope=None, predicate=None):
    """Atomically write every persistable variable of `program` found in `scope` to `dirname`
    (those `predicate(var)` accepts, when given)."""
    if not isinstance(dirname, (str, os.PathLike)):
        raise TypeError(f"save_persistables: argument 'dirname' must be a path, got {type(dirname).__name__}")
    variables = _persistables(program, predicate)
    scope = global_scope() if scope is None else scope
    arrays = {}
    for name, var in variables.items():
        value = scope.get_array(name)
        if value is None and is_state(name):
            continue  # a random stream not drawn from yet: a fresh one is made when it is first needed
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


_MANIFEST_MAX = 64 << 20
_HEADER_MAX = 1 << 16  # an .npy header is at most this long (numpy writes ~128 bytes)
_FILE_RE = re.compile(r"^(\d{5,})\.npy$")


def _read_regular(src, name, where, limit):
    """The bytes of `name` inside directory `src`: a regular file, no symlink followed, never blocking
    (a FIFO or device is refused before it is read), at most `limit` bytes."""
    try:
        dfd = os.open(src, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise ValueError(f"{where}: cannot open the directory: {exc.strerror}") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as exc:
        why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror
        raise ValueError(f"{where}: cannot read {name}: {why}") from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)  # before fdopen, which refuses a directory with its own error
        _need(stat.S_ISREG(st.st_mode), where, f"{name} is not a regular file")
        _need(st.st_size <= limit, where, f"{name} holds {st.st_size} bytes, more than its entry allows ({limit})")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(st.st_size + 1)  # never more than the file holds: read(n) allocates n bytes
    _need(len(data) == st.st_size, where, f"{name} changed while it was read")
    return data


def _shape_ok(shape):
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _dtype_ok(name):
    try:
        dt = np.dtype(name)
    except TypeError:
        return False
    return dt.kind in "biuf" and dt.name == name


def _read_manifest(src, dirname) -> dict:
    where = f"checkpoint {dirname!r} {MANIFEST}"
    text = _read_regular(src, MANIFEST, where, _MANIFEST_MAX)
    try:
        data = json.loads(text.decode("utf-8"), parse_constant=lambda c: _need(False, where, f"{c} is not JSON"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"checkpoint {dirname!r}: cannot read {MANIFEST}: {exc}") from None
    _need(isinstance(data, dict) and isinstance(data.get("variables"), list), where, "needs a 'variables' list")
    entries, last = {}, -1
    for e in data["variables"]:
        ok = (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("file"), str)
              and _FILE_RE.match(e["file"]) is not None and _shape_ok(e.get("shape"))
              and isinstance(e.get("dtype"), str) and _dtype_ok(e["dtype"]) and isinstance(e.get("sha256"), str))
        _need(ok, where, f"malformed entry {e!r:.300}")
        _need(e["name"] not in entries, where, f"variable {e['name']!r} has two entries")
        index = int(_FILE_RE.match(e["file"]).group(1))
        _need(index > last, where, f"entry {e['name']!r}: file {e['file']} is out of order (entries were "
                                   f"reordered, swapped or duplicated)")
        last = index
        entries[e["name"]] = e
    return entries


def _parse_npy(data, e, where):
    """The array in .npy bytes `data`, checked against manifest entry `e` (no pickle, no eval of a bad header)."""
    stream = _stdio.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        _need(read_header is not None, where, f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header(stream, max_header_size=_HEADER_MAX)
    except ValueError as exc:
        raise ValueError(f"{where}: malformed .npy header: {exc}") from None
    except Exception as exc:  # a header numpy cannot parse (tokenize.TokenError, SyntaxError, ...)
        raise ValueError(f"{where}: malformed .npy header ({type(exc).__name__}: {exc})") from None
    _need(dtype.name == e["dtype"] and list(shape) == e["shape"], where,
          f"file holds {dtype}{list(shape)}, the manifest says {e['dtype']}{e['shape']}")
    body = memoryview(data)[stream.tell():]
    size = math.prod(shape) * dtype.itemsize
    _need(len(body) == size, where, f"holds {len(body)} data bytes, its header declares {size}")
    arr = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, order="C")


@_paddle_order
def load_persistables(dirname, program=None, scope=None, predicate=None) -> list:
    """Load every persistable variable of `program` (that `predicate` accepts) from `dirname` into
    `scope`; returns their names.

    Each value is checked (checksum, shape, dtype against the manifest and the program) before
    any is stored, so on error the scope is unchanged."""
    if not isinstance(dirname, (str, os.PathLike)):
        raise TypeError(f"load_persistables: argument 'dirname' must be a path, got {type(dirname).__name__}")
    variables = _persistables(program, predicate, "load_persistables")
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
        if e is None and is_state(name):
            continue  # saved before the stream was first drawn from (or before the op existed)
        _need(e is not None, where, f"the checkpoint has no variable {name!r}")
        where_var = f"{where}: variable {name!r} (file {e['file']})"
        limit = math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize + _HEADER_MAX  # read nothing larger
        data = _read_regular(src, e["file"], where_var, limit)
        _need(hashlib.sha256(data).hexdigest() == e["sha256"], where_var,
              "checksum mismatch (the file is corrupt or was changed)")
        staged[name] = _parse_npy(data, e, where_var)
        _check_declared(var, staged[name].shape, staged[name].dtype, where)
    scope.arrays.update(staged)  # all or nothing: every file was read and checked first
    return list(staged)


__all__ = ["load_persistables", "save_persistables"]
