"""ParamAttr: how a layer creates its parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ParamAttr:
    """Name, initializer, learning-rate multiplier, regularizer, trainability and clipping of a parameter.

    `gradient_clip` gives the parameter a clip of its own; `need_clip=False` exempts it from every
    gradient clip (it is then counted in no global norm either)."""

    name: str | None = None
    initializer: Any = None
    learning_rate: float = 1.0
    regularizer: Any = None
    trainable: bool = True
    gradient_clip: Any = None
    need_clip: bool = True

    def __post_init__(self):
        if not isinstance(self.learning_rate, (int, float)) or self.learning_rate < 0:
            raise ValueError(f"ParamAttr: learning_rate must be a number >= 0, got {self.learning_rate!r}")

    @staticmethod
    def _to_attr(arg) -> "ParamAttr":
        """None -> defaults, a str -> a name, a ParamAttr as is; `False` is handled by the caller (no bias)."""
        if arg is None:
            return ParamAttr()
        if isinstance(arg, ParamAttr):
            return arg
        if isinstance(arg, str):
            return ParamAttr(name=arg)
        from .initializer import Initializer

        if isinstance(arg, Initializer):
            return ParamAttr(initializer=arg)
        raise TypeError(f"param_attr must be a ParamAttr, a name or an Initializer, got {type(arg).__name__}")
