"""Helpers shared by several test files (import as ``from helpers import ...``).

Tree assertions, all built on chex: every test that compares two pytrees uses one of
these (structure first, then each leaf), so a tree that lost or gained a leaf fails the
same way everywhere. Each asserting helper refuses an empty tree: comparing two empty
trees would pass whatever the code under test did.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import numpy as np

from sgjax.infra.runner import StepCache, run_training


def _nonempty(*trees: Any) -> None:
    for i, t in enumerate(trees):
        assert jax.tree.leaves(t), f"tree {i} has no leaves: the comparison would be vacuous"


def assert_trees_close(
    a: Any, b: Any, rtol: float = 1e-6, atol: float = 0.0, *, allow_empty: bool = False
) -> None:
    """Same structure, every leaf close (``|a − b| ≤ atol + rtol·|b|`` elementwise).
    ``allow_empty``: two empty trees pass (a rule state that holds no parameters)."""
    if not allow_empty:
        _nonempty(a, b)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same structure, shapes and dtypes, every leaf bit-identical (NaN equals NaN)."""
    _nonempty(a, b)
    chex.assert_trees_all_equal(a, b, strict=True)


def trees_equal(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` have the same structure and bit-identical leaves (NaN
    equals NaN), for ``assert not trees_equal(...)`` (something moved). Two empty trees
    are equal."""
    try:
        chex.assert_trees_all_equal(a, b)
    except AssertionError:
        return False
    return True


def assert_same_shapes_and_dtypes(a: Any, b: Any) -> None:
    """Same structure, and each leaf of ``a`` has the shape and dtype of ``b``'s (two
    empty trees pass: their structure is what is checked)."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)


def small_checkpointed_run(
    net: Any, rule: Any, opt: Any, cache: StepCache, directory: Any, steps: int, **kw: Any
) -> Any:
    """A few steps of ``net`` (8 inputs, 4 classes) on fixed random data, checkpointing
    every 4 steps into ``directory``; returns the final state. ``kw`` go to
    :func:`sgjax.infra.runner.run_training` (``keep``, ``resume``, ``adopt_older`` …)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64).astype(np.int32)
    return run_training(net, rule, "xent", opt, x, y, steps=steps, batch_size=8, seed=1,
                        ckpt_dir=directory, ckpt_every=4, step_cache=cache, **kw)[0]  # fmt: skip
