"""Shared test configuration: hypothesis profiles, keys, and the MNIST location.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``dev`` (default: few examples, random),
``ci`` (derandomized, so CI is reproducible), ``thorough`` (many examples, for long runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _has_mnist(d: Path) -> bool:
    return all((d / f).exists() or (d / (f + ".gz")).exists() for f in MNIST_FILES)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST IDX directory, or skip with a reason that says how to provide it."""
    for d in (os.environ.get("SGJAX_DATA_DIR"), SHARED_MNIST):
        if d and _has_mnist(Path(d)):
            return Path(d)
    pytest.skip(
        "MNIST IDX files not found: set SGJAX_DATA_DIR to a directory holding "
        f"{', '.join(MNIST_FILES)} (raw or .gz), or place them in {SHARED_MNIST}"
    )


@pytest.fixture
def getkey():
    """``getkey()`` returns fresh PRNG keys; the seed is printed, so a failure shows it."""
    seed = int.from_bytes(os.urandom(2), "little")
    print(f"jax seed: {seed}")
    key = [jax.random.key(seed)]

    def _next():
        key[0], sub = jax.random.split(key[0])
        return sub

    return _next
