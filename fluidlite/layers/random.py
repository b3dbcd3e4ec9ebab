"""Random tensors in a main program: each draws from a stream kept in the scope (fluidlite.random_state),
so every run gives new values and the same program, seed and scope give the same ones."""
from __future__ import annotations

from .helper import LayerHelper, check_variable

__all__ = ["gaussian_random", "uniform_random", "gaussian_random_batch_size_like"]


def gaussian_random(shape, mean=0.0, std=1.0, seed=0, dtype="float32", name=None):
    """N(mean, std^2) of a fully known `shape` (for a batch dimension use gaussian_random_batch_size_like)."""
    return LayerHelper("gaussian_random", name).append_op(
        "gaussian_random", {}, {"shape": shape, "mean": mean, "std": std, "seed": seed, "dtype": dtype})


def uniform_random(shape, dtype="float32", min=-1.0, max=1.0, seed=0, name=None):
    """U[min, max) of a fully known `shape`."""
    return LayerHelper("uniform_random", name).append_op(
        "uniform_random", {}, {"shape": shape, "min": min, "max": max, "seed": seed, "dtype": dtype})


def gaussian_random_batch_size_like(input, shape, input_dim_idx=0, output_dim_idx=0, mean=0.0, std=1.0, seed=0,
                                    dtype="float32", name=None):
    """N(mean, std^2) shaped like `shape` except `shape[output_dim_idx] = input.shape[input_dim_idx]` (Paddle's
    layer of that name): `shape=[-1, 16]` with a `[-1, 8]` input gives one row per example of the batch."""
    check_variable(input, "input", "gaussian_random_batch_size_like")
    return LayerHelper("gaussian_random_batch_size_like", name).append_op(
        "gaussian_random_batch_size_like", {"Input": input},
        {"shape": shape, "input_dim_idx": input_dim_idx, "output_dim_idx": output_dim_idx, "mean": mean,
         "std": std, "seed": seed, "dtype": dtype})
