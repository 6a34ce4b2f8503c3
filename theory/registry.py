"""The registry of every claim family: ``CLAIMS[name](key, instances, thorough)``.

Each entry runs the claim on fresh random instances *and* its negative control(s),
the same check with the paper's assumption broken, which must fail.
``DEFAULT_INSTANCES`` holds the instance counts of the default ``sgjax verify`` run
(chosen so that it finishes in under two minutes on two CPU cores).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import jax

from theory import (
    corollary1,
    critical_points,
    implied_loss,
    proposition2,
    table1,
    table2,
    theorem1,
)
from theory.record import Claim

ClaimFn = Callable[[jax.Array, int, bool], list[Claim]]


def _linear_sg_exact(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return critical_points.linear_sg_exact(k1, n) + critical_points.linear_sg_exact(
        k2, n, label=False
    )


def _prop1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return critical_points.prop1_critical_points(k1, n) + critical_points.prop1_critical_points(
        k2, n, loss="log", sizes=(64, 3, 1, 1, 1)
    )


def _appendix_a(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return critical_points.appendix_a(k1, n) + critical_points.appendix_a(
        k2, n, data=(-2.0, -1.0, 1.0, 3.0)
    )


def _thm1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        theorem1.theorem1_line_search(k1, n)
        + theorem1.theorem1_line_search(k2, n, unstable=True)
        # The finding: a rise shows on a few percent of instances, so use 8× as many.
        + theorem1.lyapunov_trajectory(k3, 8 * n)
    )


def _thm1_label(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return theorem1.theorem1_fixed_rates(k1, n) + theorem1.theorem1_fixed_rates(k2, n, label=False)


def _cosine(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return proposition2.cosine_lemma(k1, n) + proposition2.cosine_lemma(k2, n, r_scale=3.0)


def _prop2_errors(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        proposition2.vanishing_error(k1, n)
        + proposition2.vanishing_error(k2, n, relative=False)
        + proposition2.constant_error_bias(k3, n)
    )


def _cor1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return corollary1.corollary1(k1, n) + corollary1.corollary1(k2, n, printed=True)


def _implied(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return implied_loss.implied_quadratic_loss(k1, n) + implied_loss.implied_quadratic_loss(
        k2, n, skew=0.5
    )


def _table1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return (
        table1.table1_identities(k1, n)
        + table1.table1_identities(k2, n, wrong=True)
        + table1.table1_trajectories(k3, n)
        + table1.table1_trajectories(k4, n, random_B=True)
    )


def _table2(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    # The default run keeps to the k = 2 cells (shallow and deep); --thorough runs
    # every cell of the paper's table, k = 100 included.
    cells = tuple(table2.PAPER_TABLE2) if thorough else table2.DEFAULT_CELLS
    return table2.table2(key, n, cells=cells)


#: name -> claim family; each returns its records, negative controls included.
CLAIMS: OrderedDict[str, ClaimFn] = OrderedDict(
    [
        ("linear-sg-exact", _linear_sg_exact),
        ("prop1", _prop1),
        ("appendix-a", _appendix_a),
        ("thm1", _thm1),
        ("thm1-label", _thm1_label),
        ("prop2-cosine", _cosine),
        ("prop2-error", _prop2_errors),
        ("cor1", _cor1),
        ("implied-loss", _implied),
        ("table1", _table1),
        ("table2", _table2),
    ]
)

#: Instances per family in the default run (``--thorough`` multiplies them by 10).
DEFAULT_INSTANCES: dict[str, int] = {
    "linear-sg-exact": 256,
    "prop1": 64,
    "appendix-a": 256,
    "thm1": 16,
    "thm1-label": 16,
    "prop2-cosine": 32,
    "prop2-error": 16,
    "cor1": 16,
    "implied-loss": 64,
    "table1": 8,
    "table2": 8,
}
