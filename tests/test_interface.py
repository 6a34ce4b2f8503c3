"""The interfaces of :mod:`sgjax.interface` against independent references.

* Equivalence: interfaces placed at the boundaries of an :func:`sgjax.nets.mlp` give the
  same gradients and the same training trajectory as ``rules.synthetic_gradients`` +
  ``train.make_step`` (every placement, SG + prop), and λ = 1 gives ``rules.backprop``.
* Independent references: the SG module's gradient is the autograd of the regression loss
  written out by hand against the true gradient (``jax.grad`` of the plain model); warm-up
  mode equals ``targets="true"``.
* Composition (jit, vmap, scan, remat, shard_map), shapes and dtypes, errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import estimators, losses, nets, rules, train
from sgjax.interface import init_sg, sg_interface, synthetic_input

XENT = losses.softmax_cross_entropy


def _problem(seed=0, sizes=(12, 16, 16, 16, 5), batch=24):
    """An MLP whose SG modules are *not* zero, so every term of the update is exercised."""
    key = jax.random.key(seed)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    net = nets.mlp(list(sizes), "tanh")
    params = net.init(k1)
    x = jax.random.normal(k2, (batch, sizes[0]))
    y = jax.random.randint(k3, (batch,), 0, sizes[-1])
    return net, params, x, y, k4


def _random_sg(key, estimator, net, boundaries, scale=0.3):
    """SG parameters with random (non-zero) values for the modules at ``boundaries``."""
    mods = []
    for k, b in zip(jax.random.split(key, len(boundaries)), boundaries):
        theta = estimator.init(k, net.stages[b - 1].out_shape, net.out_dim, jnp.float32)
        leaves, tree = jax.tree.flatten(theta)
        ks = jax.random.split(k, len(leaves))
        leaves = [scale * jax.random.normal(kk, v.shape, v.dtype) for kk, v in zip(ks, leaves)]
        mods.append(jax.tree.unflatten(tree, leaves))
    return tuple(mods)


def _interface_loss(net, boundaries, estimator, **kw):
    """The MLP as a plain function with an interface at each of ``boundaries``."""

    def loss(params, sg, x, y):
        c = jax.nn.one_hot(y, net.out_dim)
        h, k = x, 0
        for i, (stage, theta) in enumerate(zip(net.stages, params), start=1):
            h = stage.apply(theta, h)
            if i in boundaries:
                h = sg_interface(h, sg[k], c, estimator=estimator, **kw)
                k += 1
        return XENT.fn(h, y)

    return loss


def _max_rel(a, b):
    """max |a − b| / max(|b|, tiny) over all leaves, and the largest |b|."""
    diffs = jax.tree.leaves(jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b))
    refs = jax.tree.leaves(jax.tree.map(lambda v: jnp.max(jnp.abs(v)), b))
    return max(float(d) / max(float(r), 1e-30) for d, r in zip(diffs, refs))


def _assert_tree_close(a, b, rtol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        # rtol relative to the leaf's scale (one leaf's tiny entries are rounding noise)
        scale = max(float(jnp.max(jnp.abs(v))), 1e-30)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=rtol * scale)


AT = {"all": (1, 2, 3), "middle": (2,), "output": (4,), (1, 3): (1, 3), (2, 4): (2, 4)}


@pytest.mark.parametrize("at", list(AT), ids=str)
@pytest.mark.parametrize("prop", [0.0, 0.5])
def test_gradients_equal_the_rule(at, prop):
    net, params, x, y, k = _problem()
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, AT[at])
    rule = rules.synthetic_gradients(est, at=at, prop=prop)
    out = rule.gradients(rules.RuleState(params=sg), net, params, x, y, XENT)
    loss = _interface_loss(net, AT[at], est, prop=prop)
    value, (g_params, g_sg) = jax.value_and_grad(loss, argnums=(0, 1))(params, sg, x, y)
    np.testing.assert_allclose(value, out.loss, rtol=1e-6)
    _assert_tree_close(g_params, out.grads, 1e-6)
    _assert_tree_close(g_sg, out.rule_grads, 1e-6)


def test_the_comparison_resolves_a_small_change():
    """λ = 0.01 (1 % of backprop mixed in) must already fail the tolerance above."""
    net, params, x, y, k = _problem()
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, AT["all"])
    out = rules.synthetic_gradients(est).gradients(
        rules.RuleState(params=sg), net, params, x, y, XENT
    )
    g_params = jax.grad(_interface_loss(net, AT["all"], est, lam=0.01))(params, sg, x, y)
    assert _max_rel(g_params, out.grads) > 1e-4


def test_lam_one_equals_backprop():
    net, params, x, y, k = _problem(seed=1)
    est = estimators.mlp((8,))
    sg = _random_sg(k, est, net, AT["all"])
    g = jax.grad(_interface_loss(net, AT["all"], est, lam=1.0))(params, sg, x, y)
    ref = rules.backprop().gradients((), net, params, x, y, XENT).grads
    _assert_tree_close(g, ref, 1e-6)
    # and an independent reference: jax.grad of the plain model
    _assert_tree_close(g, jax.grad(lambda p: XENT.fn(net.apply(p, x), y))(params), 1e-6)


def test_lam_mixes_linearly():
    """BP(λ): the gradient is λ·(backprop's) + (1 − λ)·(DNI's) for a single interface."""
    net, params, x, y, k = _problem(seed=2)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, (2,))
    grads = [
        jax.grad(_interface_loss(net, (2,), est, lam=lam))(params, sg, x, y)
        for lam in (0.0, 0.3, 1.0)
    ]
    mix = jax.tree.map(lambda a, b: 0.3 * b + 0.7 * a, grads[0], grads[2])
    _assert_tree_close(grads[1], mix, 1e-5)


def test_sg_gradient_is_the_regression_onto_the_true_gradient():
    """Independent reference: one interface, written-out loss, autograd of it."""
    net, params, x, y, k = _problem(seed=3, batch=10)
    est = estimators.mlp((8,))
    (theta,) = _random_sg(k, est, net, (3,))
    c = jax.nn.one_hot(y, net.out_dim)
    hs = net.hidden(params, x)
    # true per-example gradient at h_3: batch × ∂(mean loss)/∂h_3
    upper = lambda h: XENT.fn(net.stages[3].apply(params[3], h), y)  # noqa: E731
    t = x.shape[0] * jax.grad(upper)(hs[3])
    want = jax.grad(lambda th: jnp.mean(jnp.sum((est.apply(th, hs[3], c) - t) ** 2, -1)))(theta)
    got = jax.grad(_interface_loss(net, (3,), est), argnums=1)(params, (theta,), x, y)[0]
    _assert_tree_close(got, want, 1e-5)


def test_warm_up_is_backprop_below_and_true_targets_for_the_module():
    net, params, x, y, k = _problem(seed=4)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, AT["all"])
    g_p, g_sg = jax.grad(_interface_loss(net, AT["all"], est, mode="warm-up"), argnums=(0, 1))(
        params, sg, x, y
    )
    _assert_tree_close(g_p, rules.backprop().gradients((), net, params, x, y, XENT).grads, 1e-6)
    true = rules.synthetic_gradients(est, targets="true").gradients(
        rules.RuleState(params=sg), net, params, x, y, XENT
    )
    _assert_tree_close(g_sg, true.rule_grads, 1e-6)


def test_no_backprop_sends_nothing_and_trains_nothing():
    net, params, x, y, k = _problem(seed=5)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, (2,))
    g_p, g_sg = jax.grad(_interface_loss(net, (2,), est, mode="no-backprop"), argnums=(0, 1))(
        params, sg, x, y
    )
    assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves((g_p[:2], g_sg)))
    ref = jax.grad(lambda p: XENT.fn(net.apply(p, x), y))(params)
    _assert_tree_close(g_p[2:], ref[2:], 1e-6)  # above the interface: exact backprop


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_trajectory_equals_make_step(opt):
    """Five steps of train.make_step with the rule vs five interface steps, update for
    update (the same optax transformation applied to both sets of gradients)."""
    net, _, _, _, _ = _problem()
    optimizer = optax.sgd(0.1) if opt == "sgd" else optax.adam(1e-2)
    rule = rules.synthetic_gradients(at="all")
    state = train.init(jax.random.key(7), net, rule, optimizer)
    step = jax.jit(train.make_step(net, rule, XENT, optimizer))
    loss = _interface_loss(net, AT["all"], estimators.conditioned())

    @jax.jit
    def iface_step(params, sg, opt_state, x, y):
        grads = jax.grad(loss, argnums=(0, 1))(params, sg, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, (params, sg))
        params, sg = optax.apply_updates((params, sg), updates)
        return params, sg, opt_state

    p, sg = state.params, state.rule_state.params
    o = optimizer.init((p, sg))
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(5):
        x = jnp.asarray(rng.normal(size=(24, 12)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 5, 24))
        state, _ = step(state, (x, y))
        p, sg, o = iface_step(p, sg, o, x, y)
        worst = max(worst, _max_rel((p, sg), (state.params, state.rule_state.params)))
        _assert_tree_close((p, sg), (state.params, state.rule_state.params), 1e-6)
    # the SG modules moved away from zero, so later steps compared non-trivial signals
    assert float(jnp.abs(sg[0]["A"]).max()) > 0
    print(f"{opt}: worst relative difference over 5 steps {worst:.2e}")
