"""Cutting a network into pipeline stages of about equal work.

A device pipeline runs as fast as its slowest stage, so a network whose layers differ in
cost should be cut where the groups come out even. :func:`balanced_boundaries` finds the
cut of a sequence of stage costs into ``n`` contiguous groups that minimises the largest
group's cost (an SG module's own cost counted on the group it closes), exactly;
:func:`stage_costs` measures the costs (seconds of each stage's jitted forward and
backward on a batch); :func:`sgjax.nets.group` builds the grouped network, and the
boundaries are the pipeline's ``at`` (:func:`sgjax.pipeline.train_pipelined`).

Example:
    >>> from sgjax import nets
    >>> net = nets.mlp([784, 1024, 64, 64, 64, 10])
    >>> at = balanced_boundaries([784 * 1024, 1024 * 64, 64 * 64, 64 * 64, 64 * 10], 2)
    >>> at, nets.group(net, at).depth
    ((1,), 2)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import numpy as np

from sgjax.nets import Network


def balanced_boundaries(
    costs: Sequence[float], n: int, sg_costs: Sequence[float] | None = None
) -> tuple[int, ...]:
    """The boundaries (1..N−1) cutting stages of ``costs`` into ``n`` contiguous groups so
    that the costliest group is as cheap as possible.

    A group's cost is the sum of its stages' plus, for every group but the last,
    ``sg_costs[b − 1]``: the SG module at its output boundary b (default: none). Among
    the optimal cuts, the first in lexicographic order (as ``min`` over
    ``itertools.combinations`` would give); found by dynamic programming, O(n · N²).

    Example:
        >>> balanced_boundaries([4, 1, 1, 1, 1], 2)
        (1,)
        >>> balanced_boundaries([1, 1, 1, 1], 2, sg_costs=[0, 5, 0])
        (1,)
    """
    costs = [float(c) for c in costs]
    N = len(costs)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(
            f"balanced_boundaries: `n` must be an int in 1..{N} (the stages), got {n!r}"
        )
    sg = [0.0] * (N - 1) if sg_costs is None else [float(c) for c in sg_costs]
    if len(sg) != N - 1:
        raise ValueError(
            f"balanced_boundaries: `sg_costs` needs one cost per boundary between stages "
            f"({N - 1}), got {len(sg)}"
        )
    if any(not np.isfinite(c) or c < 0 for c in [*costs, *sg]):
        raise ValueError("balanced_boundaries: costs must be finite and ≥ 0")
    pre = np.concatenate([[0.0], np.cumsum(costs)]).tolist()

    def group(lo: int, hi: int) -> float:
        return pre[hi] - pre[lo] + (sg[hi - 1] if hi < N else 0.0)

    @functools.cache
    def best(k: int, i: int) -> float:  # stages i..N−1 in k groups: the least largest group
        if k == 1:
            return group(i, N)
        return min(max(group(i, j), best(k - 1, j)) for j in range(i + 1, N - k + 2))

    opt, cuts, i = best(n, 0), [], 0
    for k in range(n, 1, -1):  # the smallest feasible cut first: the lexicographic minimum
        i = next(j for j in range(i + 1, N - k + 2) if max(group(i, j), best(k - 1, j)) <= opt)
        cuts.append(i)
    return tuple(cuts)


def stage_costs(net: Network, batch_size: int, *, repeats: int = 5, seed: int = 0) -> list[float]:
    """Seconds of each stage's jitted forward and backward (``jax.vjp`` and its pullback)
    on a batch of ``batch_size`` random inputs: the median of ``repeats`` timed calls after
    one that compiles. Measure on an otherwise idle machine; what the costs feed
    (:func:`balanced_boundaries`) only compares them.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"stage_costs: `batch_size` must be an int ≥ 1, got {batch_size!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"stage_costs: `repeats` must be an int ≥ 1, got {repeats!r}")
    params = net.init(jax.random.key(seed))
    h = jax.random.normal(jax.random.key(seed + 1), (batch_size, *net.in_shape))
    out = []
    for stage, theta in zip(net.stages, params):

        def fwd_bwd(th, x, stage=stage):
            y, pull = jax.vjp(stage.apply, th, x)
            return pull(y)

        f = jax.jit(fwd_bwd)
        jax.block_until_ready(f(theta, h))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(theta, h))
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)))
        h = stage.apply(theta, h)
    return out
