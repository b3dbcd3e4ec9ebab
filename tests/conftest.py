import numpy as np
import pytest

import fluidlite as fl
from fluidlite import _blas, _threads


@pytest.fixture(autouse=True)
def fresh_state():
    """Each test gets fresh default programs, names and global scope, and seeded unseeded initializers."""
    np.random.seed(0)
    main, startup = fl.Program(), fl.Program()
    with fl.unique_name.guard(), fl.scope_guard(fl.Scope()), fl.program_guard(main, startup):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def split():
    """Products split in `parts` (the layer chosen first, as an Executor does); the setting restored."""
    _threads.choose_layer()
    before = _blas.split_products()
    yield lambda parts: _blas.split_products(parts)
    _blas.split_products(before)
