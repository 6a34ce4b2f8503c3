"""Helpers shared by several test files (import as ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sgjax.infra.runner import StepCache, run_training


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
