"""Scopes hold the values of persistable variables between runs."""
from __future__ import annotations

import contextlib

import numpy as np


class Tensor:
    """A view of one value in a scope: `np.array(t)` reads it, `t.set(a)` overwrites it."""

    def __init__(self, scope, name):
        self._scope = scope
        self._name = name

    def _value(self):
        value = self._scope._arrays.get(self._name)
        if value is None:
            raise ValueError(f"variable {self._name!r} has no value in this scope yet (run the startup program?)")
        return value

    def __array__(self, dtype=None, copy=None):
        value = self._value()
        if dtype is not None and np.dtype(dtype) != value.dtype:
            return value.astype(dtype)
        # np.array(t) asks for a copy: the scope's array is updated in place by optimizers
        return value.copy() if copy or copy is None else value

    def shape(self) -> list:
        return list(self._value().shape)

    def set(self, array, place=None):
        """Overwrite the value; shape and dtype must match the existing value (and the variable)."""
        array = np.asarray(array)
        old = self._scope._arrays.get(self._name)
        expected = self._scope._declared.get(self._name) if old is None else (old.shape, old.dtype)
        if expected is not None:
            shape, dtype = expected
            if array.dtype != dtype:
                raise TypeError(f"set {self._name!r}: dtype {array.dtype} does not match the variable's {dtype}")
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"set {self._name!r}: shape {list(array.shape)} does not match the variable's {list(shape)}")
        self._scope._arrays[self._name] = np.array(array, order="C", copy=True)

    def __repr__(self):
        v = self._scope._arrays.get(self._name)
        return f"<Tensor {self._name} {'unset' if v is None else f'{v.dtype}{list(v.shape)}'}>"


class ScopeVar:
    """What `scope.var(name)` returns; `get_tensor()` gives the value."""

    def __init__(self, scope, name):
        self.name = name
        self._tensor = Tensor(scope, name)

    def get_tensor(self) -> Tensor:
        return self._tensor


class Scope:
    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}
        self._holders: dict[str, ScopeVar] = {}
        self._declared: dict[str, tuple] = {}

    def var(self, name: str) -> ScopeVar:
        holder = self._holders.get(name)
        if holder is None:
            holder = self._holders[name] = ScopeVar(self, name)
        return holder

    def find_var(self, name: str):
        if name in self._holders or name in self._arrays:
            return self.var(name)
        return None

    # --- what executors and loaders use: values by name, without copies or holders ---

    @property
    def arrays(self) -> dict:
        """The live mapping name -> ndarray of every value in this scope. A compiled plan reads its
        persistable inputs from it and stores its persistable results into it; writing into it skips
        the shape and dtype checks of `Tensor.set` (and makes no copy)."""
        return self._arrays

    def get_array(self, name: str):
        """The scope's own array for `name` (not a copy), or None."""
        return self._arrays.get(name)

    def set_array(self, name: str, array: np.ndarray) -> None:
        """Store `array` itself (no copy, no check) as the value of `name`."""
        self._arrays[name] = array

    def declare(self, declared: dict) -> None:
        """Record name -> (shape, dtype) of variables a program writes, so `Tensor.set` checks a value
        set before the first run against the variable's declaration."""
        self._declared.update(declared)

    def local_var_names(self) -> list:
        return sorted(set(self._arrays) | set(self._holders))

    def erase(self, names):
        for n in names:
            self._arrays.pop(n, None)
            self._holders.pop(n, None)


_global_scope = Scope()


def global_scope() -> Scope:
    return _global_scope


@contextlib.contextmanager
def scope_guard(scope: Scope):
    """Runs and fetches inside use `scope` as the global scope."""
    global _global_scope
    if not isinstance(scope, Scope):
        raise TypeError(f"scope_guard needs a Scope, got {type(scope).__name__}")
    old, _global_scope = _global_scope, scope
    try:
        yield
    finally:
        _global_scope = old


def fetch_var(name: str, scope: Scope | None = None, return_numpy: bool = True) -> np.ndarray:
    """A copy of the value of `name` in `scope` (default: the global scope)."""
    scope = scope or global_scope()
    if scope.find_var(name) is None:
        raise ValueError(f"fetch_var: no variable {name!r} in the scope")
    return np.array(scope.var(name).get_tensor())
