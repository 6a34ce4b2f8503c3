"""The SG modules' training path against a hand-written reference (``theory.library_sg``).

Each test runs a few rows of the ``library-sg`` family of ``sgjax verify`` on 2 random
instances and asserts that every claim passes (the library matches the reference) and
every control fails (the library does not match the reference broken on purpose: the
other target kind, no prop term, the module one boundary off, the ½‖·‖² convention, the
other loss reduction). ``scripts/mutations.py`` plants bugs in a copy of ``sgjax/`` and
runs this file: see ``docs/results/mutations.md`` for which test each bug turns red.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from sgjax import estimators, sgmodule
from theory import library_sg
from theory.record import Claim

CONFIGS = {c.tag: c for c in library_sg.CONFIGS}


def _run(tags: list[str], seed: int = 0) -> list[Claim]:
    return library_sg.library_sg_gradients(
        jax.random.key(seed), 2, configs=tuple(CONFIGS[t] for t in tags)
    )


def _claims_pass_controls_fail(recs: list[Claim]) -> None:
    assert all(r.runs_library for r in recs)
    claims = [r for r in recs if r.kind == "claim"]
    controls = [r for r in recs if r.kind == "control"]
    assert claims and len(controls) == len(claims)
    bad = [(r.name, r.measured) for r in claims if not r.passed]
    assert not bad, bad
    blind = [(r.name, r.measured) for r in controls if r.passed]
    assert not blind, blind


def test_sg_rule_targets_prop_and_placements_match_the_reference() -> None:
    _claims_pass_controls_fail(
        _run(
            [
                "conditioned/bootstrap",
                "conditioned/true",
                "conditioned/bootstrap/prop=0.3",
                "conditioned/true/at=1",
                "conditioned/bootstrap/at=middle",
                "conditioned/at=output",
            ]
        )
    )


def test_every_mlp_shaped_estimator_matches_the_reference() -> None:
    names = [n for n in estimators.ESTIMATORS if not n.startswith("conv")]
    assert {"linear", "conditioned", "label_only", "sigmoid_linear", "mlp"} <= set(names)
    _claims_pass_controls_fail(_run([f"{n}/{t}" for n in names for t in ("bootstrap", "true")
                                     if n != "conditioned"]))  # fmt: skip


@pytest.mark.slow
def test_conv_estimators_match_the_reference() -> None:
    _claims_pass_controls_fail(
        _run(["conv/bootstrap", "conv/true", "conv_unconditioned/bootstrap"])
    )


def test_interface_matches_the_reference() -> None:
    _claims_pass_controls_fail(
        _run(["interface/conditioned", "interface/conditioned/prop=0.3", "interface/mlp/sum"])
    )


def test_every_estimator_and_option_has_a_row() -> None:
    tags = set(CONFIGS)
    for name in estimators.ESTIMATORS:
        assert {f"{name}/bootstrap", f"{name}/true"} <= tags, name
    assert any(c.prop for c in library_sg.CONFIGS if c.path == "rule")
    assert {c.at for c in library_sg.CONFIGS} >= {"all", "middle", "output", (1,)}
    assert {c.path for c in library_sg.CONFIGS} == {"rule", "interface"}


def test_a_planted_regression_bug_turns_the_rows_red(monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted in-process: the one SG regression (sgjax.sgmodule.regress, which the rules
    # and the interface both call) with the module's gradient halved (the ½‖t − s‖²
    # convention). The rows of both paths must go red.
    good = sgmodule.regress

    def halved(estimator, theta, h, y, target, **kw):  # type: ignore[no-untyped-def]
        r = good(estimator, theta, h, y, target, **kw)
        return r._replace(grad_params=jax.tree.map(lambda g: 0.5 * g, r.grad_params))

    monkeypatch.setattr(sgmodule, "regress", halved)
    recs = _run(["conditioned/bootstrap", "conditioned/at=output", "interface/conditioned"])
    claims = {r.name: r for r in recs if r.kind == "claim"}
    assert any("interface" in name for name in claims), claims  # both paths are judged
    assert claims and all(not r.passed for r in claims.values()), claims
    assert all(r.measured > 0.3 for r in claims.values()), claims  # ∂L_SG/∂θ off by ½


def test_reference_conv_is_the_library_convolution() -> None:
    # The reference's convolution (explicit padding, sum over offsets) against lax.
    k = jax.random.split(jax.random.key(3), 2)
    h = jax.random.normal(k[0], (2, 5, 4, 3))
    K = jax.random.normal(k[1], (3, 3, 3, 2))
    want = jax.lax.conv_general_dilated(h, K, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    assert jnp.allclose(library_sg._conv_ref(h, K), want, atol=1e-5)
