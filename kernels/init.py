"""Filling kernels for initializers (write into a given output array)."""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def fill(out, value):
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = value
    return out


@njit(cache=True, error_model="numpy")
def uniform(out, low, high, seed):
    np.random.seed(seed)
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = np.random.uniform(low, high)
    return out


@njit(cache=True, error_model="numpy")
def gaussian(out, mean, std, seed):
    np.random.seed(seed)
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = np.random.normal(mean, std)
    return out


@njit(cache=True, error_model="numpy")
def zeros_like(x):
    return np.zeros_like(x)


@njit(cache=True, error_model="numpy")
def full_like(x, value):
    return np.full_like(x, value)


@njit(cache=True, error_model="numpy")
def truncated_gaussian(out, mean, std, seed):
    """N(mean, std^2) redrawn until within two standard deviations of the mean (as Paddle's)."""
    np.random.seed(seed)
    flat = out.reshape(-1)
    for i in range(flat.size):
        z = np.random.normal(0.0, 1.0)
        while z < -2.0 or z > 2.0:
            z = np.random.normal(0.0, 1.0)
        flat[i] = mean + std * z
    return out


@njit(cache=True, error_model="numpy")
def assign_values(out, values):
    """out.flat[i] = values[i] (values in float64 or int64; the op checked they fit out's dtype)."""
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = values[i]
    return out
