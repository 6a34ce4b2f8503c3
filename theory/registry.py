"""The registry of every claim family: ``CLAIMS[name](key, instances, thorough)``.

Each entry runs the claim on fresh random instances *and* its negative control(s),
the same check with the paper's assumption broken, which must fail.
``DEFAULT_INSTANCES`` holds the instance counts of the default ``sgjax verify`` run
(chosen so that it finishes in under two minutes on two CPU cores).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable

import jax

from theory import (
    corollary1,
    critical_points,
    implied_loss,
    library_sg,
    proposition2,
    sg_extras,
    table1,
    table2,
    theorem1,
)
from theory.record import Claim, identity, library

ClaimFn = Callable[[jax.Array, int, bool], list[Claim]]


def _linear_sg_exact(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return critical_points.linear_sg_exact(k1, n) + critical_points.linear_sg_exact(
        k2, n, label=False
    )


def _prop1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    cp = critical_points.prop1_critical_points
    wide = (64, 3, 5, 11, 5)  # h spans the input: the check is blind there (identities)
    return (
        cp(k1, n)  # bottleneck (width 3 < k = 6): claim, and its control on the same nets
        + cp(k1, n, loss="log")
        + cp(k1, n, label=False)
        + [identity(r, _WHY_WIDE) for r in cp(k2, n, sizes=wide)]
        + [
            identity(dataclasses.replace(r, kind="claim", expect_pass=True,
                                         name=r.name + "-also-critical"), _WHY_WIDE)
            for r in cp(k2, n, sizes=wide, loss="log")
        ]
    )  # fmt: skip


_WHY_WIDE = (
    "h spans the input, so the least-squares residual G − SG is orthogonal to every "
    "lower layer's input whatever the loss"
)


def _appendix_a(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2 = jax.random.split(key)
    return critical_points.appendix_a(k1, n) + critical_points.appendix_a(
        k2, n, data=(-2.0, -1.0, 1.0, 3.0)
    )


def _thm1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    m = n if thorough else 16  # the realizable runs hit the cap: 100k steps each
    return (
        theorem1.theorem1_line_search(k1, n)
        + theorem1.theorem1_line_search(k2, n, unstable=True)
        + theorem1.theorem1_realizable(k4, m, noise=0.0)
        + theorem1.theorem1_realizable(k4, m, noise=1e-3)
        # The findings: a rise shows on a few percent of instances, so use 8× as many
        # per start (--thorough: ≥ 1000 per start).
        + theorem1.lyapunov_trajectory(
            k3, max(8 * n, 1000) if thorough else 8 * n, starts=theorem1.LYAPUNOV_STARTS
        )
    )


def _thm1_label(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    # Claim and control on the same instances.
    return theorem1.theorem1_fixed_rates(key, n) + theorem1.theorem1_fixed_rates(
        key, n, label=False
    )


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


#: Corollary 1's shapes ``(n, k, outputs, width, depth, j)``.
COR1_BOTTLENECK = (32, 6, 2, 3, 4, 2)
COR1_DEEP = (32, 3, 2, 20, 11, 5)


def _cor1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    c = corollary1.corollary1
    m = max(n // 4, 4)
    return (
        c(k1, n)
        + c(k1, n, printed=True)
        + [identity(dataclasses.replace(r, kind="claim", expect_pass=True,
                                        name=r.name + "/no-label(h spans x)"),
                    "h spans x: the label-free least-squares SG is exact there")
           for r in c(k1, n, label=False)]
        + c(k2, n, sizes=COR1_BOTTLENECK, where_backprop_converges=True)
        + c(k2, n, sizes=COR1_BOTTLENECK, label=False, where_backprop_converges=True)
        + c(k3, m, sizes=COR1_DEEP, eps=0.01)
        + corollary1.step_size_sanity(k3, m, sizes=COR1_DEEP, eps=0.01)
        + corollary1.gate_profile(k4, m)
    )  # fmt: skip


def _implied(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        implied_loss.implied_quadratic_loss(k1, n)
        # Under a skew A, L̂ = L + const still holds by construction (½hAhᵀ cannot
        # see the skew part): an identity; the field check is the control.
        + [
            identity(r, "½hAhᵀ cannot see the skew part of A") if r.kind == "claim" else r
            for r in implied_loss.implied_quadratic_loss(k2, n, skew=0.5)
        ]
        + [library(r) for r in sg_extras.library_sg_implied_loss(k3, max(n // 4, 4))]
    )


def _library_sg(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    return library_sg.library_sg_gradients(key, n)


def _sg_prop_alone(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    return sg_extras.sg_prop_alone(key, n)


def _table1(key: jax.Array, n: int, thorough: bool = False) -> list[Claim]:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    k5, k6 = jax.random.split(jax.random.fold_in(key, 5))
    recs = (
        table1.table1_identities(k1, n)
        + table1.table1_identities(k2, n, wrong=True)
        # Softmax cross-entropy, every row but Kickback (vacuous under xent).
        + table1.table1_identities(k5, n, loss="xent")
        + table1.table1_identities(k6, n, wrong=True, loss="xent")
        + table1.table1_trajectories(k3, n)
        + table1.table1_trajectories(k4, n, random_B=True)
    )
    return [library(r) for r in recs]  # every row runs sgjax.rules (and nets, losses)


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
        ("sg-prop-alone", _sg_prop_alone),
        ("library-sg", _library_sg),
    ]
)

#: Instances per family in the default run.
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
    "sg-prop-alone": 16,
    "library-sg": 4,
}

#: Instances per family with ``--thorough``: ≥ 1000 where an instance is cheap; the
#: iterative families (runs of 10⁴–10⁵ steps each, vmapped, so the batch waits for its
#: slowest instance) get 10× the default; Table 2 gets the paper's 10 datasets per cell.
THOROUGH_INSTANCES: dict[str, int] = {
    "linear-sg-exact": 2560,
    "prop1": 1000,
    "appendix-a": 2560,
    "thm1": 160,
    "thm1-label": 1000,
    "prop2-cosine": 1000,
    "prop2-error": 160,
    "cor1": 160,
    "implied-loss": 1000,
    "table1": 1000,
    "table2": 10,
    "sg-prop-alone": 160,
    "library-sg": 64,
}
