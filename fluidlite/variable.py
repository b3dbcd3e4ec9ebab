"""Variables, Parameters and Operators: the nodes of a Block."""
from __future__ import annotations

import numpy as np

from .registry import Meta, get_op_def

ROLE_FORWARD = "forward"
ROLE_BACKWARD = "backward"
ROLE_ERROR_CLIP = "error_clip"
ROLE_GRAD_CLIP = "grad_clip"
ROLE_OPTIMIZE = "optimize"
ROLES = (ROLE_FORWARD, ROLE_BACKWARD, ROLE_ERROR_CLIP, ROLE_GRAD_CLIP, ROLE_OPTIMIZE)

_SHORT_DTYPE = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool", "float16": "f16"}


def _fmt_type(shape, dtype) -> str:
    dt = _SHORT_DTYPE.get(np.dtype(dtype).name, np.dtype(dtype).name) if dtype is not None else "?"
    dims = ",".join(str(d) for d in shape) if shape is not None else "?"
    return f"{dt}[{dims}]"


def _as_shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(int(d) for d in shape)
    if any(d < -1 for d in shape):
        raise ValueError(f"bad shape {list(shape)}: dimensions must be >= 0 or -1")
    return shape


class Variable:
    """A typed value in a Block; `shape` is a tuple where -1 marks the batch dimension."""

    def __init__(self, block, name, shape=None, dtype=None, persistable=False, stop_gradient=False,
                 error_clip=None, is_data=False):
        self.block = block
        self.name = name
        self.shape = None if shape is None else _as_shape(shape)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._persistable = bool(persistable)
        self.stop_gradient = bool(stop_gradient)
        self.error_clip = error_clip
        self.is_data = is_data
        self.op = None  # the op that first writes this variable

    @property
    def persistable(self) -> bool:
        return self._persistable

    @persistable.setter
    def persistable(self, value):
        self._persistable = bool(value)
        self.block._changed()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _meta(self) -> Meta:
        return Meta(self.name, self.shape, self.dtype)

    def _flags(self) -> list:
        flags = []
        if self.is_data:
            flags.append("data")
        if self.persistable:
            flags.append("persistable")
        if self.stop_gradient and not self.is_data:
            flags.append("stop_gradient")
        if self.error_clip is not None:
            flags.append(f"error_clip={self.error_clip!r}")
        return flags

    def to_string(self) -> str:
        kind = "param" if isinstance(self, Parameter) else "var"
        flags = self._flags()
        return f"{kind} {self.name} : {_fmt_type(self.shape, self.dtype)}" + (f"  ({', '.join(flags)})" if flags else "")

    __str__ = to_string

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {_fmt_type(self.shape, self.dtype)}>"


class Parameter(Variable):
    """A persistable, trainable Variable living in the global block."""

    def __init__(self, block, name, shape, dtype, trainable=True, optimize_attr=None, regularizer=None,
                 gradient_clip_attr=None, need_clip=True, initializer=None):
        super().__init__(block, name, shape, dtype, persistable=True, stop_gradient=not trainable)
        self.trainable = trainable
        self.optimize_attr = optimize_attr if optimize_attr is not None else {"learning_rate": 1.0}
        self.regularizer = regularizer
        self.gradient_clip_attr = gradient_clip_attr
        self.need_clip = need_clip
        self.initializer = initializer

    def _flags(self):
        flags = super()._flags()
        if not self.trainable:
            flags.append("not trainable")
        return flags


class Operator:
    """One op: `inputs`/`outputs` map slot names to lists of variable names."""

    def __init__(self, block, type, inputs, outputs, attrs, role=ROLE_FORWARD):
        self.block = block
        self.type = type
        self.inputs = inputs
        self.outputs = outputs
        self.attrs = attrs
        self.role = role

    @property
    def opdef(self):
        return get_op_def(self.type)

    def input(self, slot: str) -> list:
        return self.inputs.get(slot, [])

    def output(self, slot: str) -> list:
        return self.outputs.get(slot, [])

    @property
    def input_names(self) -> list:
        return [n for names in self.inputs.values() for n in names]

    @property
    def output_names(self) -> list:
        return [n for names in self.outputs.values() for n in names]

    def attr(self, name):
        return self.attrs[name]

    def to_string(self) -> str:
        outs = ", ".join(
            f"{n} : {_fmt_type(v.shape, v.dtype)}" if (v := self.block._find_var(n)) is not None else n
            for n in self.output_names
        )
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.attrs.items())
        ins = ", ".join(f"{slot}={names[0] if len(names) == 1 else '[' + ', '.join(names) + ']'}"
                        for slot, names in self.inputs.items())
        return f"{outs} = {self.type}{'[' + attrs + ']' if attrs else ''}({ins}) {{{self.role}}}"

    __str__ = to_string

    def __repr__(self):
        return f"<Operator {self.type} {self.role}>"


def _names(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v.name if isinstance(v, Variable) else v for v in value]
    return [value.name if isinstance(value, Variable) else value]
