"""Real data that ships with a dependency, so nothing is downloaded.

`digits()` is scikit-learn's copy of the UCI optical recognition of handwritten digits test set
(1797 images of 8x8 pixels, 16 grey levels, ten classes). scikit-learn is an optional dependency:
`pip install "fluidlite[data]"`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["digits"]


def digits():
    """(images float32 [1797, 1, 8, 8] scaled to [0, 1], labels int64 [1797, 1]), in the file's order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('fluidlite.datasets.digits needs scikit-learn: pip install "fluidlite[data]"') from None
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64).reshape(-1, 1)
    return images, labels
