"""Shared test configuration: hypothesis profiles, keys, and the MNIST location.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``default`` (used when the variable is
unset) and ``ci``: 10 examples per unit, derandomized, so ``python -m pytest -q`` is
reproducible on every run; ``thorough``: 20× the examples, still derandomized;
``random``: 10 examples per unit with a random hypothesis seed (for seed sweeps).
Tests scale their example counts from the loaded profile with :func:`examples`, so
the profile, not the test, decides how many examples run.

Random draws outside hypothesis come from :func:`getkey`, seeded from the test's own
node id (deterministic); ``SGJAX_TEST_SEED=N`` mixes ``N`` in, for sweeps over seeds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("default", max_examples=10, derandomize=True, **_COMMON)
settings.register_profile("ci", max_examples=10, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=10, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=200, derandomize=True, **_COMMON)
settings.register_profile("random", max_examples=10, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def examples(per_unit: int) -> int:
    """Examples for a test that wants ``per_unit`` under ``default``/``ci`` (10 per unit):
    ``per_unit × max_examples / 10`` of the loaded profile, at least 1.

    Example:
        >>> examples(2) == max(1, 2 * settings.default.max_examples // 10)
        True
    """
    return max(1, per_unit * settings.default.max_examples // 10)


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


@pytest.fixture(scope="session")
def tinyshakespeare_path() -> Path:
    """Tiny Shakespeare's input.txt, or skip with a reason that says how to provide it."""
    from sgjax.recurrent import tasks

    try:
        return tasks.find_tinyshakespeare()
    except FileNotFoundError as e:
        pytest.skip(
            "Tiny Shakespeare not found: set SGJAX_DATA_DIR to a directory holding "
            f"tinyshakespeare/input.txt, or place it in {SHARED_MNIST.parent / 'tinyshakespeare'} "
            f"({e})"
        )


@pytest.fixture
def getkey(request):
    """``getkey()`` returns fresh PRNG keys, seeded from the test's node id (and
    ``SGJAX_TEST_SEED`` if set); the seed is printed, so a failure shows it."""
    extra = os.environ.get("SGJAX_TEST_SEED", "")
    digest = hashlib.sha256((request.node.nodeid + "|" + extra).encode()).digest()
    seed = int.from_bytes(digest[:4], "little")
    print(f"jax seed: {seed} (node id {request.node.nodeid!r}, SGJAX_TEST_SEED={extra!r})")
    key = [jax.random.key(seed)]

    def _next():
        key[0], sub = jax.random.split(key[0])
        return sub

    return _next
