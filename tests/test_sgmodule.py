"""The one SG module of the core (:mod:`sgjax.sgmodule`) and the rule that owns its optimiser.

Independent references only: the regression's gradients against the closed form of a
linear module (written here) and against ``jax.grad`` of a loss written here; the
optimiser steps against the SGD formula θ − η·g and against ``optax`` applied by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import estimators, losses, nets, rules, sgmodule, train
from sgjax.infra.config import OptimizerConfig, RuleConfig, RunConfig


def _data(key, b=5, d=3, c=2):
    k1, k2, k3 = jax.random.split(key, 3)
    h = jax.random.normal(k1, (b, d))
    y = jax.nn.one_hot(jax.random.randint(k2, (b,), 0, c), c)
    t = jax.random.normal(k3, (b, d))
    return h, y, t


def _random_params(key, est, d=3, c=2):
    theta = est.init(key, (d,), c)
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_regress_matches_the_closed_form_of_a_linear_module():
    # SG(h, y) = hA + yB + C, L = mean_b ‖s_b − t_b‖²: dA = 2/B hᵀr, dB = 2/B yᵀr,
    # dC = 2/B Σ_b r_b, dh = 2/B r Aᵀ with r = s − t. (Planted: the ½‖·‖² convention,
    # i.e. a cotangent of r / B, turns every comparison red.)
    h, y, t = _data(jax.random.key(0))
    theta = _random_params(jax.random.key(1), estimators.conditioned())
    reg = sgmodule.regress(estimators.conditioned(), theta, h, y, t)
    b = h.shape[0]
    s = h @ theta["A"] + y @ theta["B"] + theta["C"]
    r = s - t
    np.testing.assert_allclose(reg.s, s, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(reg.loss, np.mean(np.sum(np.square(r), -1)), rtol=1e-6)
    np.testing.assert_allclose(reg.grad_params["A"], 2 / b * h.T @ r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.grad_params["B"], 2 / b * y.T @ r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.grad_params["C"], 2 / b * r.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.grad_h, 2 / b * r @ theta["A"].T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [None, 1.0, 7.0])
def test_regress_is_the_gradient_of_its_loss_and_holds_the_target(scale):
    # jax.grad of Σ_b ‖SG(h_b) − t_b‖² / k (k = batch by default), written here; the target
    # gets no gradient. (Planted: dividing by the batch whatever `scale` says → red for
    # scale 1 and 7.)
    est = estimators.mlp((4,))
    h, y, t = _data(jax.random.key(2))
    theta = _random_params(jax.random.key(3), est)
    k = h.shape[0] if scale is None else scale

    def loss(th, hh, tt):
        return jnp.sum(jnp.square(est.apply(th, hh, y) - tt)) / k

    g_th, g_h, g_t = jax.grad(loss, argnums=(0, 1, 2))(theta, h, t)
    reg = sgmodule.regress(est, theta, h, y, t, scale=scale)
    np.testing.assert_allclose(reg.loss, loss(theta, h, t), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(reg.grad_params), jax.tree.leaves(g_th)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reg.grad_h, g_h, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(g_t).max()) > 0  # the reference does move with t ...
    g_target = jax.grad(lambda tt: sgmodule.regress(est, theta, h, y, tt).loss)(t)
    assert float(jnp.abs(g_target).max()) == 0.0  # ... the regression holds it


def test_module_step_is_regress_then_one_optimiser_step():
    # SGD: θ' = θ − η ∂L/∂θ with the closed-form gradient of a linear module.
    # (Planted: an update that drops the learning rate, or a step that returns the old
    # state, turns it red.)
    eta = 0.3
    sg = sgmodule.SGModule(estimators.linear(), optax.sgd(eta))
    h, y, t = _data(jax.random.key(4))
    state = sg.init(jax.random.key(0), (3,), 2)
    assert float(jnp.abs(sg.signal(state.params, h, y)).max()) == 0.0  # zero output
    new, reg = sg.step(state, h, y, t)
    r = -t  # s = 0
    b = h.shape[0]
    np.testing.assert_allclose(new.params["A"], -eta * 2 / b * h.T @ r, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new.params["C"], -eta * 2 / b * r.sum(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(reg.loss, np.mean(np.sum(np.square(t), -1)), rtol=1e-6)


NET = nets.mlp([6, 8, 7, 4])


def _one_step(rule, opt, key=0):
    x = jax.random.normal(jax.random.key(key), (10, 6))
    y = jnp.arange(10) % 4
    state = train.init(jax.random.key(1), NET, rule, opt)
    step = jax.jit(train.make_step(NET, rule, "xent", opt))  # (one compile, not op by op)
    # make the modules non-zero first, so that their next regression is not trivial
    state, _ = step(state, (x, y))
    out = jax.jit(
        lambda s: rule.gradients(s.rule_state, NET, s.params, x, y, losses.softmax_cross_entropy)
    )(state)
    new, _ = step(state, (x, y))
    return state, new, out.rule_grads


def test_the_rule_trains_its_modules_with_its_own_optimiser():
    # Network SGD 0.1, SG optimiser SGD 0.5: each module moves by −0.5·g.
    # (Planted: make_step applying the network's optimiser to the modules → off by 5×.)
    rule = rules.synthetic_gradients(sg_optimizer=optax.sgd(0.5))
    state, new, g = _one_step(rule, optax.sgd(0.1))
    for k, (old, got) in enumerate(zip(state.rule_state.params, new.rule_state.params)):
        for name in old:
            want = old[name] - 0.5 * g[k][name]
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7, err_msg=name)


def test_without_sg_optimizer_the_modules_follow_the_networks_optimiser():
    # The documented default: the optimiser given to train.init / make_step.
    # (Planted: a default of Adam 1e-3 → red.)
    rule = rules.synthetic_gradients()
    state, new, g = _one_step(rule, optax.sgd(0.2))
    for k, (old, got) in enumerate(zip(state.rule_state.params, new.rule_state.params)):
        for name in old:
            np.testing.assert_allclose(got[name], old[name] - 0.2 * g[k][name], rtol=1e-5,
                                       atol=1e-7)  # fmt: skip


def test_one_adam_state_per_module_equals_adam_on_all_modules():
    # Each module owns its Adam state; Adam is elementwise, so the modules move as one
    # optax.adam on the tuple of all modules would move them (applied here by hand).
    # (Planted: updating every module with the first module's state → red.)
    opt = optax.adam(1e-2)
    rule = rules.synthetic_gradients(sg_optimizer=opt)
    x = jax.random.normal(jax.random.key(5), (10, 6))
    y = jnp.arange(10) % 4
    state = train.init(jax.random.key(1), NET, rule, optax.sgd(0.1))
    step = jax.jit(train.make_step(NET, rule, "xent", optax.sgd(0.1)))
    ref_params = state.rule_state.params
    ref_opt = opt.init(ref_params)

    @jax.jit  # the reference's update in one program (not op by op)
    def by_hand(state, ref_params, ref_opt):
        out = rule.gradients(state.rule_state, NET, state.params, x, y, "xent")
        upd, ref_opt = opt.update(out.rule_grads, ref_opt, ref_params)
        return optax.apply_updates(ref_params, upd), ref_opt

    for _ in range(3):
        ref_params, ref_opt = by_hand(state, ref_params, ref_opt)
        state, _ = step(state, (x, y))
        for a, b in zip(jax.tree.leaves(state.rule_state.params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_sg_optimizer_errors_name_the_argument():
    with pytest.raises(TypeError, match="`sg_optimizer` must be an optax GradientTransformation"):
        rules.synthetic_gradients(sg_optimizer=1e-3)
    unbound = rules.synthetic_gradients()
    state = unbound.init(jax.random.key(0), NET)
    with pytest.raises(ValueError, match="no `sg_optimizer`"):
        unbound.update(state, tuple(state.params))
    with pytest.raises(ValueError, match="`sg_optimizer` applies to sg, sg-prop"):
        rules.get("dfa", sg_optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"RunConfig\(sg_optimizer="):
        RuleConfig.of("sg", sg_optimizer=optax.sgd(0.1))


def test_the_configs_sg_optimizer_reaches_the_rule():
    # --sg-optimizer sgd --sg-lr 0.5: the built rule moves its modules by −0.5·g.
    # (Planted: build_rule ignoring RunConfig.sg_optimizer → the network's Adam → red.)
    cfg = RunConfig(sg_optimizer=OptimizerConfig("sgd", 0.5))
    rule = cfg.build_rule()
    state, new, g = _one_step(rule, cfg.build_optimizer())
    old, got = state.rule_state.params[0], new.rule_state.params[0]
    np.testing.assert_allclose(got["A"], old["A"] - 0.5 * g[0]["A"], rtol=1e-5, atol=1e-7)
