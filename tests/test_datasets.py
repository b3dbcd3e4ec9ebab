"""fluidlite.datasets: the bundled digits, shaped and typed as the SPEC says."""
import numpy as np
import pytest

from fluidlite import datasets

pytest.importorskip("sklearn")


def test_digits_shapes_dtypes_range_and_labels():
    images, labels = datasets.digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert labels.shape == (1797, 1) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))
    counts = np.bincount(labels[:, 0])
    assert counts.min() >= 170  # about 180 of each digit


def test_digits_match_scikit_learn_and_repeat():
    from sklearn.datasets import load_digits

    images, labels = datasets.digits()
    raw = load_digits()
    np.testing.assert_allclose(images[:, 0] * 16, raw.images, atol=1e-5)
    np.testing.assert_array_equal(labels[:, 0], raw.target)
    again, _ = datasets.digits()
    np.testing.assert_array_equal(again, images)
