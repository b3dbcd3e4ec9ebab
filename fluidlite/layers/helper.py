"""LayerHelper: names a layer's variables and parameters, appends its ops."""
from __future__ import annotations

from dataclasses import replace

from .. import unique_name
from ..framework import Variable, default_main_program
from ..initializer import Constant, Xavier
from ..param_attr import ParamAttr


class LayerHelper:
    def __init__(self, layer_type: str, name: str | None = None):
        self.name = name or unique_name.generate(layer_type)
        self.block = default_main_program().current_block()

    def tmp_name(self) -> str:
        return unique_name.generate(self.name + ".tmp")

    def create_parameter(self, attr, shape, dtype, is_bias=False, default_initializer=None):
        """A parameter named `<layer>.w_N` / `<layer>.b_N` unless `attr` names it."""
        attr = ParamAttr._to_attr(attr)
        if attr.name is None:
            attr = replace(attr, name=unique_name.generate(f"{self.name}.{'b' if is_bias else 'w'}"))
        default = default_initializer or (Constant(0.0) if is_bias else Xavier())
        return self.block.create_parameter(shape, dtype, attr=attr, default_initializer=default)

    def append_op(self, type, inputs, attrs=None, outputs=("Out",)):
        """Append `type`; returns its new output Variable (a tuple of them for several output slots)."""
        names = {slot: self.tmp_name() for slot in outputs}
        self.block.append_op(type, inputs, names, attrs)
        out = tuple(self.block.var(names[slot]) for slot in outputs)
        return out[0] if len(out) == 1 else out

    def append_activation(self, x: Variable, act: str | None) -> Variable:
        if act is None:
            return x
        if not isinstance(act, str):
            raise TypeError(f"{self.name}: act must be an op name such as 'relu', got {act!r}")
        return self.append_op(act, {"X": x})


def check_variable(value, arg: str, layer: str) -> Variable:
    if not isinstance(value, Variable):
        raise TypeError(f"{layer}: argument {arg!r} must be a Variable, got {type(value).__name__}")
    return value
