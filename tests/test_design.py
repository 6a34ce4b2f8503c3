"""docs/design.md says a rule is added in 3 steps; this adds sign-symmetry feedback
(Liao et al. 2016: errors go down through B = sign(Wᵀ), the signs of the current forward
weights) through exactly those steps, using only public API, and checks that the CLI,
the bench and the contract checks pick it up."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import losses, nets, rules, train
from sgjax.sweep import UpdateRule, pass_through, sweep

NAME = "sign-symmetry"


# Step 1: the factory.
def sign_symmetry() -> UpdateRule:
    def init(key, net):
        del key, net
        return rules.RuleState()

    def gradients(state, net, params, x, y, loss):
        loss = losses.get(loss)
        fns = [net.stages[0].apply]
        for s in net.stages[1:]:
            fns.append(lambda th, h, s=s: s.feedback_apply(th, jnp.sign(th["W"]).T, h))
        value, p, grads, signals, _ = sweep(net, params, x, y, loss, pass_through, fns)
        return rules.RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, gradients, NAME)


# Step 2: its Table 1 row: SG(h) = the stage above with sign(W)ᵀ in its backward pass,
# t = −(the signal above), L_SG = −⟨t, s⟩.
def sign_symmetry_row(ctx, b, options):
    stage, theta = ctx.net.stages[b], ctx.params[b]
    return rules.Table1Row(
        lambda h: stage.feedback_apply(theta, jnp.sign(theta["W"]).T, h),
        -ctx.signals[b],
        lambda t, s: -jnp.sum(t * s),
    )


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(rules, "RULES", dict(rules.RULES))  # undone after the test
    # Step 3: register it.
    rules.register(
        rules.RuleSpec(NAME, sign_symmetry, "(δ̂ above) · sign(W)ᵀ", table1=sign_symmetry_row)
    )
    return NAME


def _problem():
    key = jax.random.key(11)
    net = nets.mlp([5, 7, 6, 3], "tanh")
    params = net.init(jax.random.fold_in(key, 0))
    x = jax.random.normal(jax.random.fold_in(key, 1), (9, 5))
    y = jax.random.randint(jax.random.fold_in(key, 2), (9,), 0, 3)
    return net, params, x, y


def test_the_new_rule_sends_errors_through_the_signs_of_the_weights(registered):
    net, params, x, y = _problem()
    loss = losses.softmax_cross_entropy
    out = rules.get(registered).gradients(rules.RuleState(), net, params, x, y, loss)
    # By hand: δ̂_N = ∂ℓ/∂p; δ̂_b = (δ̂_{b+1} ⊙ tanh'(g_{b+1})) sign(W_{b+1})ᵀ.
    hs = net.hidden(params, x)
    delta = np.asarray(loss.output_grad(hs[-1], y))
    for b in range(net.depth - 1, 0, -1):
        W, bias = np.asarray(params[b]["W"]), np.asarray(params[b]["b"])
        g = np.asarray(hs[b]) @ W + bias
        act = 1 - np.tanh(g) ** 2 if b + 1 < net.depth else np.ones_like(g)
        delta = (delta * act) @ np.sign(W).T
        np.testing.assert_allclose(out.signals[b - 1], delta, rtol=2e-5, atol=1e-6)
    # ... and it is not backprop (the magnitudes of W are gone).
    exact = rules.exact_signals(net, params, x, y, loss)
    assert float(jnp.max(jnp.abs(out.signals[0] - exact[0]))) > 1e-2


def test_the_contract_checks_apply_to_the_new_rule(registered):
    net, params, x, y = _problem()
    errs = rules.table1_errors(registered, rules.RuleState(), net, params, x, y, "xent")
    np.testing.assert_allclose(errs, 0.0, atol=1e-6)
    rule, opt = rules.get(registered), optax.adam(1e-2)
    state = train.init(jax.random.key(0), net, rule, opt)
    step = jax.jit(train.make_step(net, rule, "xent", opt))
    new, metrics = step(state, (x, y))
    assert jax.tree.structure(new) == jax.tree.structure(state) and bool(metrics["finite"])


def test_the_cli_and_the_bench_offer_the_new_rule(registered, tmp_path, capsys):
    from sgjax.apps import bench, cli

    assert registered in bench.step_rules()
    out = tmp_path / "r.json"
    argv = [
        "train",
        "--rule",
        registered,
        "--steps",
        "3",
        "--depth",
        "1",
        "--width",
        "8",
        "--no-progress",
        "--json",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["config"]["rule"] == {"name": registered}
    # Options it does not take are refused like any other rule's.
    assert cli.main([*argv, "--targets", "true"]) == 1
    assert "--targets applies to --rule sg, sg-prop; not to --rule sign-symmetry" in (
        capsys.readouterr().err
    )
