"""Offline datasets. Nothing here downloads anything, ever.

A :class:`Dataset` holds float32 inputs in [0, 1] and int32 labels, split into train and
test. Sources: scikit-learn's bundled 8×8 digits (``"digits"``, ships with
scikit-learn).

Example:
    >>> ds = load("digits")
    >>> ds.x_train.shape[1], ds.num_classes
    (64, 10)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A classification dataset split into train and test parts."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (1797 images, 8×8, 10 classes), stratified split.

    Pixels are scaled from 0..16 to [0, 1].
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):  # stratified: the same test fraction of every class
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.permutation(idx)[: round(test_fraction * len(idx))])
    test = np.zeros(len(y), bool)
    test[np.concatenate(test_idx)] = True
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10)


LOADERS = {"digits": digits}


def load(name: str, **kwargs) -> Dataset:
    """Load a dataset by name (see :data:`LOADERS`)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[name](**kwargs)
