"""Initializers: each appends one op to the startup program that fills a parameter."""
from __future__ import annotations

import math

import numpy as np


class Initializer:
    def __call__(self, var, block):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    @staticmethod
    def _out(var, block):
        """The startup program's copy of the parameter (same name, persistable)."""
        return block.create_var(name=var.name, shape=var.shape, dtype=var.dtype, persistable=True)

    @staticmethod
    def _seed(seed, block) -> int:
        """An explicit seed; else one derived from the program's random_seed when set; else one drawn
        from NumPy's global generator (so `np.random.seed(n)` also makes a run repeatable)."""
        if seed:
            return int(seed)
        program = block.program
        if program.random_seed:
            program._seed_counter = getattr(program, "_seed_counter", 0) + 1
            return int(np.random.SeedSequence([program.random_seed, program._seed_counter]).generate_state(1)[0] or 1)
        return int(np.random.randint(1, 2**31 - 1))


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = float(value)

    def __call__(self, var, block):
        return block.append_op("fill_constant", outputs={"Out": self._out(var, block)},
                               attrs={"shape": var.shape, "dtype": var.dtype.name, "value": self.value})


class Uniform(Initializer):
    def __init__(self, low=-1.0, high=1.0, seed=0):
        if not low <= high:
            raise ValueError(f"Uniform: low ({low}) must be <= high ({high})")
        self.low, self.high, self.seed = float(low), float(high), int(seed)

    def __call__(self, var, block):
        return block.append_op("uniform_random", outputs={"Out": self._out(var, block)},
                               attrs={"shape": var.shape, "dtype": var.dtype.name, "min": self.low,
                                      "max": self.high, "seed": self._seed(self.seed, block)})


class Normal(Initializer):
    def __init__(self, loc=0.0, scale=1.0, seed=0):
        if not scale >= 0:
            raise ValueError(f"Normal: scale must be >= 0, got {scale}")
        self.loc, self.scale, self.seed = float(loc), float(scale), int(seed)

    def __call__(self, var, block):
        return block.append_op("gaussian_random", outputs={"Out": self._out(var, block)},
                               attrs={"shape": var.shape, "dtype": var.dtype.name, "mean": self.loc,
                                      "std": self.scale, "seed": self._seed(self.seed, block)})


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:  # fc weights are laid out (in_features, out_features)
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))  # conv weights: (out_channels, in_channels // groups, kh, kw)
    return shape[1] * receptive, shape[0] * receptive


class Xavier(Initializer):
    """Glorot: uniform in +-sqrt(6/(fan_in+fan_out)), or normal with std sqrt(2/(fan_in+fan_out))."""

    def __init__(self, uniform=True, fan_in=None, fan_out=None, seed=0):
        self.uniform, self.fan_in, self.fan_out, self.seed = uniform, fan_in, fan_out, int(seed)

    def __call__(self, var, block):
        fan_in, fan_out = _fans(var.shape)
        fan_in = self.fan_in or fan_in
        fan_out = self.fan_out or fan_out
        if self.uniform:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            return Uniform(-limit, limit, self.seed)(var, block)
        return Normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), self.seed)(var, block)


class MSRA(Initializer):
    """He et al. (2015), for ReLU nets: uniform in +-sqrt(6/fan_in), or normal with std sqrt(2/fan_in)."""

    def __init__(self, uniform=True, fan_in=None, seed=0):
        if fan_in is not None and not fan_in > 0:
            raise ValueError(f"MSRA: fan_in must be > 0, got {fan_in!r}")
        self.uniform, self.fan_in, self.seed = bool(uniform), fan_in, int(seed)

    def __call__(self, var, block):
        fan_in = self.fan_in or _fans(var.shape)[0]
        if self.uniform:
            limit = math.sqrt(6.0 / fan_in)
            return Uniform(-limit, limit, self.seed)(var, block)
        return Normal(0.0, math.sqrt(2.0 / fan_in), self.seed)(var, block)


class TruncatedNormal(Initializer):
    """N(loc, scale^2) with draws beyond two standard deviations redrawn."""

    def __init__(self, loc=0.0, scale=1.0, seed=0):
        if not (math.isfinite(loc) and math.isfinite(scale) and scale >= 0):
            raise ValueError(f"TruncatedNormal: needs a finite loc and a finite scale >= 0, got {loc}, {scale}")
        self.loc, self.scale, self.seed = float(loc), float(scale), int(seed)

    def __call__(self, var, block):
        return block.append_op("truncated_gaussian_random", outputs={"Out": self._out(var, block)},
                               attrs={"shape": var.shape, "dtype": var.dtype.name, "mean": self.loc,
                                      "std": self.scale, "seed": self._seed(self.seed, block)})


class NumpyArrayInitializer(Initializer):
    """Fills the parameter with a copy of `value`, whose shape must be the parameter's."""

    def __init__(self, value):
        value = np.array(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"NumpyArrayInitializer: value must hold numbers, got {value.dtype}")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError("NumpyArrayInitializer: value holds NaN or Inf")
        self.value = value

    def __repr__(self):
        return f"NumpyArrayInitializer(shape={list(self.value.shape)}, dtype={self.value.dtype})"

    def __call__(self, var, block):
        if tuple(self.value.shape) != tuple(var.shape):
            raise ValueError(f"NumpyArrayInitializer: value of shape {list(self.value.shape)} for {var.name!r} "
                             f"of shape {list(var.shape)}")
        return block.append_op("assign_value", outputs={"Out": self._out(var, block)},
                               attrs=assign_value_attrs(self.value, var.dtype))


def assign_value_attrs(value: np.ndarray, dtype) -> dict:
    """The `assign_value` attributes holding `value` as `dtype` (int values for integer dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        if value.dtype.kind == "f":
            raise TypeError(f"cannot assign float values to a {dtype} variable")
        return {"shape": list(value.shape), "dtype": dtype.name, "int_values": value.astype(np.int64).ravel().tolist()}
    return {"shape": list(value.shape), "dtype": dtype.name, "fp_values": value.astype(np.float64).ravel().tolist()}


ConstantInitializer, UniformInitializer, NormalInitializer, XavierInitializer = Constant, Uniform, Normal, Xavier
MSRAInitializer, TruncatedNormalInitializer = MSRA, TruncatedNormal
