"""Property tests of the theory package: each claim family on fresh random instances.

Each test draws a seed (and a size from a small fixed set, so the cached jitted
runners are reused across examples) and asserts two things: the claim holds, and its
negative control — the same check with the paper's assumption broken — fails. A
check that cannot fail is worthless. Instance counts are small; ``sgjax verify``
runs the same functions on more instances. Example counts come from the hypothesis
profile (``conftest.examples``); the default profile is derandomized.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from conftest import examples
from helpers import at_default_xla_level
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import (
    corollary1,
    critical_points,
    implied_loss,
    proposition2,
    sg_extras,
    table1,
    table2,
    theorem1,
)
from theory.record import Claim
from theory.registry import COR1_BOTTLENECK

seeds = st.integers(0, 2**32 - 1)


def _all_pass(records: list[Claim]) -> None:
    claims = [r for r in records if r.kind == "claim"]
    assert claims, "no claim in the records"
    bad = [r for r in claims if not r.passed]
    assert not bad, bad


def _controls_fail(records: list[Claim]) -> None:
    ctrl = [r for r in records if r.kind == "control"]
    assert ctrl, "no negative control in the records"
    assert not any(r.passed for r in ctrl), ctrl


@settings(max_examples=examples(3))
@given(seed=seeds, m=st.sampled_from([3, 6]))
def test_linear_sg_exact_and_no_label_control(seed: int, m: int) -> None:
    key = jax.random.key(seed)
    _all_pass(critical_points.linear_sg_exact(key, 8, sizes=(48, m, 2)))
    _controls_fail(critical_points.linear_sg_exact(key, 8, label=False, sizes=(48, m, 2)))


@settings(max_examples=examples(2))
@given(seed=seeds, depth=st.sampled_from([3, 11]))
def test_prop1_critical_points_and_log_loss_control(seed: int, depth: int) -> None:
    # A bottleneck (width 3 < k = 6): claim and control on the same nets.
    key = jax.random.key(seed)
    sizes = (48, 6, 3, depth, 2)
    _all_pass(critical_points.prop1_critical_points(key, 4, sizes=sizes))
    _controls_fail(critical_points.prop1_critical_points(key, 4, loss="log", sizes=sizes))
    # The label-free SG is exactly 0 at the optimum: an identity, not evidence.
    (r,) = critical_points.prop1_critical_points(key, 4, label=False, sizes=sizes)
    assert r.passed and r.strength == "identity"


def test_prop1_log_loss_control_is_blind_when_h_spans_the_input() -> None:
    """Why the bottleneck: with width ≥ k the log-loss 'control' passes (it is blind)."""
    key = jax.random.key(3)
    (r,) = critical_points.prop1_critical_points(key, 4, loss="log", sizes=(48, 3, 5, 3, 2))
    assert r.passed, r


@settings(max_examples=examples(3))
@given(seed=seeds)
def test_appendix_a_stationary_region_and_unbalanced_control(seed: int) -> None:
    key = jax.random.key(seed)
    _all_pass(critical_points.appendix_a(key, 16))
    _controls_fail(critical_points.appendix_a(key, 16, data=(-2.0, -1.0, 1.0, 3.0)))


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_theorem1_converges_invariants_and_unstable_control(seed: int) -> None:
    key = jax.random.key(seed)
    _all_pass(theorem1.theorem1_line_search(key, 4))
    _controls_fail(theorem1.theorem1_line_search(key, 4, unstable=True))


def test_theorem1_lyapunov_trajectory_finding_still_detected() -> None:
    """The finding (‖f‖ + ‖ξ‖ rises along the iterates; the proof keeps A fixed within a
    step) must still show on a fixed seed; if the dynamics changed, we want to know."""
    r, w = theorem1.lyapunov_trajectory(jax.random.key(0), 128, steps=300)
    assert r.kind == "finding" and r.ok
    assert not r.passed and r.measured > 1e-3, r
    assert "refuted" in r.detail
    assert w.kind == "finding" and "observed" in w.detail


#: The runtime-bound tests (thousands of training steps each, ~2× faster at XLA's default
#: optimisation level than at the tests' level 0, where compiling is what costs): one
#: child pytest at the default level runs the three (helpers.at_default_xla_level).
AT_DEFAULT_LEVEL = (
    "test_theorem1_label_needed",
    "test_theorem1_label_needed_seed_1401",
    "test_table2_k2_gaps_sigmoid_and_control",
)


@settings(max_examples=examples(2))
@given(seed=seeds)
def _theorem1_label_needed(seed: int) -> None:
    _label_needed(jax.random.key(seed))


def test_theorem1_label_needed(request) -> None:
    if at_default_xla_level(request, AT_DEFAULT_LEVEL):  # for speed
        return
    _theorem1_label_needed()


def test_theorem1_label_needed_seed_1401(request) -> None:
    """Seed 1401 diverged to NaN with the digest's unscaled ν = 1e-3 (issue 11)."""
    if at_default_xla_level(request, AT_DEFAULT_LEVEL):  # for speed
        return
    _label_needed(jax.random.key(1401))


def _label_needed(key: jax.Array) -> None:
    # 8 instances: the stuck fraction (≥ 0.75) is a statistic; ~2% of instances are not
    # stuck (a random-profile run failed once with 4 instances and a 0.9 threshold).
    recs = theorem1.theorem1_fixed_rates(key, 8) + theorem1.theorem1_fixed_rates(
        key, 8, label=False
    )
    _all_pass(recs)  # conditioned SG converges; label-free one stuck by mechanism
    _controls_fail(recs)  # the label-free gap, and the conditioned SG is not stuck


@settings(max_examples=examples(3))
@given(seed=seeds)
def test_prop2_cosine_lemma_and_large_error_control(seed: int) -> None:
    key = jax.random.key(seed)
    _all_pass(proposition2.cosine_lemma(key, 8))
    _controls_fail(proposition2.cosine_lemma(key, 8, r_scale=3.0))


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_prop2_vanishing_vs_constant_error(seed: int) -> None:
    key = jax.random.key(seed)
    _all_pass(proposition2.vanishing_error(key, 4))
    _controls_fail(proposition2.vanishing_error(key, 4, relative=False))
    _all_pass(proposition2.constant_error_bias(key, 4))


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_corollary1_gated_and_printed_control(seed: int) -> None:
    key = jax.random.key(seed)
    _all_pass(corollary1.corollary1(key, 4))
    _controls_fail(corollary1.corollary1(key, 4, printed=True, max_steps=4000))


def test_corollary1_bottleneck_needs_the_label() -> None:
    """Width 3 < k = 6: the conditioned SG reaches OLS, the label-free one does not."""
    key = jax.random.key(5)
    sizes = (32, 6, 2, 3, 4, 2)
    _all_pass(corollary1.corollary1(key, 4, sizes=sizes, where_backprop_converges=True))
    _controls_fail(
        corollary1.corollary1(key, 4, sizes=sizes, label=False, max_steps=4000,
                              where_backprop_converges=True)
    )  # fmt: skip


def test_corollary1_backtracking_breaks_a_period_2_cycle() -> None:
    """Issue 11: at a fixed ε = 0.05, bottleneck instance 102 of `verify --thorough
    --claims cor1` (160 instances) locked into a period-2 cycle 0.37 / 0.51 above OLS
    while backprop converged. With the backtracking ε it reaches OLS (and 100–103 too)."""
    key = jax.random.split(jax.random.fold_in(jax.random.key(0), 0), 4)[1]
    n, k, o, width, depth, j = sizes = (32, 6, 2, 3, 4, 2)
    layers, X, Y, L_opt = corollary1._instances(key, 160, n, k, o, width, depth)
    pick = slice(100, 104)
    with jax.enable_x64(True):  # as corollary1.run does
        r = np.asarray(corollary1._runner(j, 1)(
            [(W[pick], b[pick]) for W, b in layers], X[pick], Y[pick], L_opt[pick],
            20_000, 1e-6, 0.05, corollary1.MODES["gated"], 1.0,
        ))  # fmt: skip
    gaps, eps_ratio = r[:, 0], r[:, 2]
    assert (gaps <= 1e-6).all(), gaps
    assert eps_ratio[2] < 1  # instance 102 needed the halving
    assert sizes == COR1_BOTTLENECK  # the shape the verify row uses


@settings(max_examples=examples(3))
@given(seed=seeds, skew=st.floats(0.05, 1.0, allow_subnormal=False))
def test_implied_loss_and_skew_control(seed: int, skew: float) -> None:
    key = jax.random.key(seed)
    _all_pass(implied_loss.implied_quadratic_loss(key, 8, probes=200))
    recs = implied_loss.implied_quadratic_loss(key, 8, skew=skew, probes=200)
    _controls_fail(recs)
    # The caveat: the quadratic reconstruction itself cannot see the skew part.
    assert [r for r in recs if r.kind == "claim" and r.passed]


def test_implied_loss_of_a_library_trained_sg() -> None:
    recs = sg_extras.library_sg_implied_loss(jax.random.key(0), 4)
    _all_pass(recs)
    _controls_fail(recs)


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_table1_rows_through_rules_and_broken_rows(seed: int) -> None:
    key = jax.random.key(seed)
    ok = table1.table1_identities(key, 2) + table1.table1_trajectories(key, 2)
    _all_pass(ok)
    assert len(ok) == 8  # six Table 1 rows, Kickback ≡ DFA(1), backprop ≡ jax.grad
    bad = table1.table1_identities(key, 2, wrong=True)
    _controls_fail(bad)
    assert len(bad) == 6  # every row has its own control
    _controls_fail(table1.table1_trajectories(key, 2, random_B=True))


def test_table1_rows_under_cross_entropy_and_broken_rows() -> None:
    """Every rule but Kickback under softmax cross-entropy (reference: jax.grad of a
    hand-written −Σ y log softmax); catches a wrong xent output gradient."""
    key = jax.random.key(11)
    ok = table1.table1_identities(key, 2, loss="xent")
    _all_pass(ok)
    assert [r.name.split("/")[2].split(":")[0] for r in ok] == [
        "Bprop", "DFA", "FA", "SG", "SG+prop",
    ]  # fmt: skip
    # The broken-row controls are the MSE ones' (tested above); verify runs them on xent.


def test_table1_kickback_at_39_instances_xla_regression() -> None:
    """Issue 11 item 13: jit(vmap) at ≥ 39 instances read Kickback as 0.9 (an XLA:CPU
    YNNPACK miscompile of a dot with a constant matrix of ones fused with the max)."""
    recs = table1.table1_identities(jax.random.key(0), 39)
    kick = [r for r in recs if r.name.startswith("table1/Kickback")]
    assert kick and kick[0].passed, kick


@settings(max_examples=examples(1))
@given(seed=seeds)
def _table2_k2_gaps_sigmoid_and_control(seed: int) -> None:
    key = jax.random.key(seed)
    cells = (("linear2", "shallow"), ("noisy2", "shallow"))  # noisy2: the log-gap control
    recs = table2.table2(key, 8, cells=cells, steps={"shallow": 20_000})
    _all_pass(recs)
    _controls_fail(recs)


def test_table2_k2_gaps_sigmoid_and_control(request) -> None:
    if at_default_xla_level(request, AT_DEFAULT_LEVEL):  # for speed
        return
    _table2_k2_gaps_sigmoid_and_control()


def test_verify_cli_json_kinds_and_exit_code(tmp_path) -> None:
    from sgjax.apps.cli import main

    out = tmp_path / "r.json"
    argv = ["verify", "--claims", "linear-sg-exact,appendix-a", "--instances", "8"]
    assert main([*argv, "--json", str(out)]) == 0
    recs = json.loads(out.read_text())
    keys = {"name", "reference", "measured", "target", "passed", "instances", "kind", "strength",
            "runs_library"}  # fmt: skip
    assert keys <= set(recs[0])
    assert {r["strength"] for r in recs} <= {"evidence", "identity"}
    # These two families check hand-written models only: no row runs sgjax code, and the
    # rows true by construction say so (issue 25).
    assert not any(r["runs_library"] for r in recs)
    strength = {r["name"]: r["strength"] for r in recs if r["kind"] == "claim"}
    for name in (
        "linear-sg-exact/residual",
        "linear-sg-exact/A,B,C",
        "appendixA/(1,0,0)-SG-update",
        "appendixA/a-frozen",
        "appendixA/paper-start",
    ):
        assert strength[name] == "identity", name  # fmt: skip
    assert any(r["kind"] == "control" and not r["passed"] and r["ok"] for r in recs)
    assert main(["verify", "--claims", "no-such-family"]) == 2
