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


def _jgrad(f, **kwargs):
    # Jitted: at the tests' compile level (conftest.py) one compile per test costs less
    # than the eager programs (this file cold: 45.5 s eager, 40.3 s jitted; at XLA's
    # default level it was the other way round, 33 s eager vs 42 s).
    return jax.jit(jax.grad(f, **kwargs))


def _rule_grads(rule, net, sg, params, x, y):
    state = rules.RuleState(params=sg) if sg != () else ()
    return rule.gradients(state, net, params, x, y, XENT)


def _leaves(tree):
    return [np.asarray(v, np.float64) for v in jax.tree.leaves(tree)]


def _max_rel(a, b):
    """max over leaves of max |a − b| / max |b| (each leaf relative to its own scale)."""
    return max(
        float(np.max(np.abs(u - v))) / max(float(np.max(np.abs(v))), 1e-30)
        for u, v in zip(_leaves(a), _leaves(b))
    )


def _assert_tree_close(a, b, rtol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(_leaves(a), _leaves(b)):
        # rtol relative to the leaf's scale (one leaf's tiny entries are rounding noise)
        scale = max(float(np.max(np.abs(v))), 1e-30)
        np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale)


AT = {"all": (1, 2, 3), "middle": (2,), "output": (4,), (1, 3): (1, 3), (2, 4): (2, 4)}


@pytest.mark.parametrize(
    "at, prop",
    [("all", 0.0), ("middle", 0.0), ("output", 0.0), ((1, 3), 0.0), ("all", 0.5), ((2, 4), 0.5)],
    ids=str,
)
def test_gradients_equal_the_rule(at, prop):
    net, params, x, y, k = _problem()
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, AT[at])
    rule = rules.synthetic_gradients(est, at=at, prop=prop)
    out = _rule_grads(rule, net, sg, params, x, y)
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
    out = _rule_grads(rules.synthetic_gradients(est), net, sg, params, x, y)
    g_params = _jgrad(_interface_loss(net, AT["all"], est, lam=0.01))(params, sg, x, y)
    assert _max_rel(g_params, out.grads) > 1e-4


def test_lam_one_equals_backprop():
    net, params, x, y, k = _problem(seed=1)
    est = estimators.mlp((8,))
    sg = _random_sg(k, est, net, AT["all"])
    g = _jgrad(_interface_loss(net, AT["all"], est, lam=1.0))(params, sg, x, y)
    ref = _rule_grads(rules.backprop(), net, (), params, x, y).grads
    _assert_tree_close(g, ref, 1e-6)
    # and an independent reference: jax.grad of the plain model
    _assert_tree_close(g, _jgrad(lambda p: XENT.fn(net.apply(p, x), y))(params), 1e-6)


def test_lam_mixes_linearly():
    """BP(λ): the gradient is λ·(backprop's) + (1 − λ)·(DNI's) for a single interface."""
    net, params, x, y, k = _problem(seed=2)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, (2,))
    grads = [
        _jgrad(_interface_loss(net, (2,), est, lam=lam))(params, sg, x, y)
        for lam in (0.0, 0.3, 1.0)
    ]
    mix = jax.tree.map(lambda a, b: 0.3 * b + 0.7 * a, grads[0], grads[2])
    _assert_tree_close(grads[1], mix, 1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", 2.5])
def test_sg_gradient_is_the_regression_onto_the_true_gradient(reduction):
    """Independent reference: one interface, written-out loss, autograd of it. With a loss
    ``Σ_b ℓ_b / k`` the module regresses onto ``k·g`` = the per-example gradient, each
    example weighing ``1/k`` as in the loss (k = batch for "mean", 1 for "sum")."""
    net, params, x, y, k = _problem(seed=3, batch=10)
    est = estimators.mlp((8,))
    (theta,) = _random_sg(k, est, net, (3,))
    c = jax.nn.one_hot(y, net.out_dim)
    hs = net.hidden(params, x)
    kk = {"mean": x.shape[0], "sum": 1.0}.get(reduction, reduction)
    # the per-example losses ℓ_b, the loss Σ_b ℓ_b / k, the true per-example ∂ℓ_b/∂h_3
    ell = lambda p, h: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        net.stages[3].apply(p, h), y
    )
    t = _jgrad(lambda h: ell(params[3], h).sum())(hs[3])
    want = _jgrad(lambda th: jnp.sum((est.apply(th, hs[3], c) - t) ** 2) / kk)(theta)

    def loss(params, theta):
        h = params[0]
        for i, (stage, p) in enumerate(zip(net.stages[:3], params)):
            h = stage.apply(p, x if i == 0 else h)
        h = sg_interface(h, theta, c, estimator=est, loss_reduction=reduction)
        return ell(params[3], h).sum() / kk

    got = _jgrad(loss, argnums=1)(params, theta)
    _assert_tree_close(got, want, 1e-5)


def test_warm_up_is_backprop_below_and_true_targets_for_the_module():
    net, params, x, y, k = _problem(seed=4)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, AT["all"])
    g_p, g_sg = _jgrad(_interface_loss(net, AT["all"], est, mode="warm-up"), argnums=(0, 1))(
        params, sg, x, y
    )
    _assert_tree_close(g_p, _rule_grads(rules.backprop(), net, (), params, x, y).grads, 1e-6)
    true = _rule_grads(rules.synthetic_gradients(est, targets="true"), net, sg, params, x, y)
    _assert_tree_close(g_sg, true.rule_grads, 1e-6)


def test_no_backprop_sends_nothing_and_trains_nothing():
    net, params, x, y, k = _problem(seed=5)
    est = estimators.conditioned()
    sg = _random_sg(k, est, net, (2,))
    g_p, g_sg = _jgrad(_interface_loss(net, (2,), est, mode="no-backprop"), argnums=(0, 1))(
        params, sg, x, y
    )
    assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves((g_p[:2], g_sg)))
    ref = _jgrad(lambda p: XENT.fn(net.apply(p, x), y))(params)
    _assert_tree_close(g_p[2:], ref[2:], 1e-6)  # above the interface: exact backprop


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_trajectory_equals_make_step(opt):
    """train.make_step with the rule vs interface steps (the same optax transformation
    applied to the interface's gradients), step for step from the same start.

    At every step both gradient computations are also run from the *same* state (the
    rule's) and must agree to rtol 1e-6. The trajectories must agree to 1e-6 with SGD;
    with Adam to 1e-5: Adam's first steps move each entry by about lr·g/(|g| + ε), so an
    entry whose gradient is rounding noise (a sum that cancels to ~1e-9) moves by a
    noise-sized fraction of lr in one run and not the other (measured: 1e-6 over these
    5 steps; 6e-6 after one step of the bench's 784-256-256-256-10 MLP, where SGD stays
    at 4e-7 over 60 steps).
    """
    net, _, _, _, _ = _problem()
    optimizer = optax.sgd(0.1) if opt == "sgd" else optax.adam(1e-2)
    rule = rules.synthetic_gradients(at="all")
    state = train.init(jax.random.key(7), net, rule, optimizer)
    step = jax.jit(train.make_step(net, rule, XENT, optimizer))
    rule_grads = jax.jit(lambda s, x, y: rule.gradients(s.rule_state, net, s.params, x, y, XENT))
    loss = _interface_loss(net, AT["all"], estimators.conditioned())
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

    @jax.jit
    def iface_step(params, sg, opt_state, x, y):
        updates, opt_state = optimizer.update(grad(params, sg, x, y), opt_state, (params, sg))
        params, sg = optax.apply_updates((params, sg), updates)
        return params, sg, opt_state

    p, sg = state.params, state.rule_state.params
    o = optimizer.init((p, sg))
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(10 if opt == "sgd" else 5):
        x = jnp.asarray(rng.normal(size=(24, 12)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 5, 24))
        ref = rule_grads(state, x, y)
        same_state = grad(state.params, state.rule_state.params, x, y)
        _assert_tree_close(same_state, (ref.grads, ref.rule_grads), 1e-6)
        state, _ = step(state, (x, y))
        p, sg, o = iface_step(p, sg, o, x, y)
        worst = max(worst, _max_rel((p, sg), (state.params, state.rule_state.params)))
        _assert_tree_close(
            (p, sg), (state.params, state.rule_state.params), 1e-6 if opt == "sgd" else 1e-5
        )
    # the SG modules moved away from zero, so later steps compared non-trivial signals
    assert float(jnp.abs(sg[0]["A"]).max()) > 0
    print(f"{opt}: worst relative difference of the trajectories {worst:.2e}")


# --------------------------------------------------------------------------------------
# Composition with JAX transformations. The reference is always the plain (unrolled,
# unbatched, unsharded) interface model, itself checked against the rule above.


def _all_sg_problem(seed=0):
    net, params, x, y, k = _problem(seed)
    est = estimators.conditioned()
    return net, params, x, y, est, _random_sg(k, est, net, AT["all"])


def test_composes_with_vmap_over_seeds():
    net, params, x, y, est, _ = _all_sg_problem()
    sgs = [_random_sg(jax.random.key(s), est, net, AT["all"]) for s in range(2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *sgs)
    grad = jax.grad(_interface_loss(net, AT["all"], est), argnums=(0, 1))
    got = jax.vmap(grad, in_axes=(None, 0, None, None))(params, stacked, x, y)
    for i, sg in enumerate(sgs):
        _assert_tree_close(jax.tree.map(lambda a, i=i: a[i], got), grad(params, sg, x, y), 1e-6)


def test_composes_with_scan_and_remat():
    """Stages 2..3 (equal shapes) run in a ``lax.scan`` whose body is rematerialised
    (``jax.checkpoint``) and holds an interface; the unrolled model is the reference."""
    net, params, x, y, est, sg = _all_sg_problem(1)
    first, last = net.stages[0], net.stages[-1]
    body_stage = net.stages[1]

    def loss(params, sg, x, y):
        c = jax.nn.one_hot(y, net.out_dim)
        h = sg_interface(first.apply(params[0], x), sg[0], c)

        @jax.checkpoint
        def body(h, theta_sg):
            theta, s = theta_sg
            return sg_interface(body_stage.apply(theta, h), s, c), None

        stacked = jax.tree.map(lambda *a: jnp.stack(a), *params[1:3])
        sg_stacked = jax.tree.map(lambda *a: jnp.stack(a), *sg[1:3])
        h, _ = jax.lax.scan(body, h, (stacked, sg_stacked))
        return XENT.fn(last.apply(params[3], h), y)

    g_p, g_sg = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, sg, x, y)
    r_p, r_sg = _jgrad(_interface_loss(net, AT["all"], est), argnums=(0, 1))(params, sg, x, y)
    _assert_tree_close(g_p, r_p, 1e-6)
    _assert_tree_close(g_sg, r_sg, 1e-6)


# shard_map and pmap (2 and 4 devices, every documented pattern): test_interface_sharding.py


# --------------------------------------------------------------------------------------
# Shapes and dtypes.


def _two_part(x_shape, dtype, sg_dtype):
    """A lower part (elementwise scale + tanh) and an upper part (mean-square readout) on
    an activation of any shape, with a user's own elementwise SG module."""
    key = jax.random.key(11)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, x_shape).astype(dtype)
    w1 = (1.0 + 0.1 * jax.random.normal(k2, x_shape[1:])).astype(dtype)
    w2 = jax.random.normal(k3, x_shape[1:]).astype(dtype)
    c = jax.nn.one_hot(jnp.arange(x_shape[0]) % 3, 3).astype(dtype)
    theta = {
        "a": (0.5 * jax.random.normal(k4, x_shape[1:])).astype(sg_dtype),
        "B": (0.1 * jnp.ones((3, *x_shape[1:]))).astype(sg_dtype),
    }

    def apply(theta, h, c):  # SG(h, c) = a ⊙ h + c B, elementwise over any shape
        return h * theta["a"] + jnp.tensordot(c, theta["B"], 1).astype(h.dtype)

    lower = lambda w1: jnp.tanh(x * w1)  # noqa: E731
    upper = lambda h: jnp.mean(jnp.sum(((h * w2) ** 2).reshape(x_shape[0], -1), -1))  # noqa: E731

    def loss(w1, theta):
        return upper(sg_interface(lower(w1), theta, c, estimator=(None, apply)))

    return w1, c, theta, apply, lower, upper, loss


@pytest.mark.parametrize("shape", [(4, 3, 2, 5)], ids=["4d"])
def test_any_shape_with_a_users_own_module(shape):
    w1, c, theta, apply, lower, upper, loss = _two_part(shape, jnp.float32, jnp.float32)
    g_w1, g_theta = jax.jit(jax.grad(loss, argnums=(0, 1)))(w1, theta)
    # independent reference, written out: s = SG(h, c); below receives s / B; the module
    # regresses onto t = B · ∂L/∂h by mean_b ‖s_b − t_b‖²
    h, batch = lower(w1), shape[0]
    t = batch * _jgrad(upper)(h)
    s = apply(theta, h, c)
    _, lower_vjp = jax.vjp(lower, w1)
    _assert_tree_close(g_w1, lower_vjp(s / batch)[0], 1e-6)
    sq = lambda th: jnp.mean(jnp.sum(((apply(th, h, c) - t) ** 2).reshape(batch, -1), -1))  # noqa: E731
    _assert_tree_close(g_theta, jax.jit(jax.grad(sq))(theta), 1e-6)


@pytest.mark.parametrize("sg_dtype", [jnp.bfloat16, jnp.float32], ids=["bf16-sg", "f32-sg"])
def test_bfloat16_activations(sg_dtype):
    shape = (8, 4, 6)
    grads = {}
    for dtype, sgd in ((jnp.bfloat16, sg_dtype), (jnp.float32, jnp.float32)):
        w1, _, theta, _, _, _, loss = _two_part(shape, dtype, sgd)
        grads[dtype] = jax.jit(jax.grad(loss, argnums=(0, 1)))(w1, theta)
    g16, g32 = grads[jnp.bfloat16], grads[jnp.float32]
    assert g16[0].dtype == jnp.bfloat16  # cotangents keep their primal's dtype
    assert all(v.dtype == sg_dtype for v in jax.tree.leaves(g16[1]))
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        a32 = np.asarray(a.astype(jnp.float32))
        assert np.all(np.isfinite(a32))
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a32, np.asarray(b), rtol=0, atol=0.05 * scale)


# --------------------------------------------------------------------------------------
# Errors, at trace time, naming the argument.


def _err_setup():
    h = jnp.ones((4, 8))
    return h, init_sg(jax.random.key(0), (8,), 3), jax.nn.one_hot(jnp.arange(4) % 3, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "warmup"}, "`mode` must be one of"),
        ({"lam": 1.5}, r"`lam` \(λ\) must be a number in \[0, 1\].*got 1.5"),
        ({"lam": jnp.float32(1.5)}, r"`lam` \(λ\) must be a number in \[0, 1\].*got 1.5"),
        ({"lam": jnp.ones(2)}, r"`lam` \(λ\) .* got an array of shape \(2,\)"),
        ({"lam": -0.1}, r"`lam` \(λ\)"),
        ({"prop": -1.0}, r"`prop` \(α\)"),
        ({"loss_reduction": "max"}, "`loss_reduction`"),
        ({"estimator": 3}, "`estimator` must be"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    h, sg, c = _err_setup()
    with pytest.raises((ValueError, TypeError), match=match):
        jax.jit(lambda h: sg_interface(h, sg, c, **kwargs)).lower(h)


def test_module_of_the_wrong_shape_is_named():
    h, _, c = _err_setup()
    sg16 = init_sg(jax.random.key(0), (16,), 3)  # made for a 16-wide activation
    with pytest.raises(ValueError, match=r"`estimator` cannot be applied .* shape \(4, 8\)"):
        jax.jit(lambda h: sg_interface(h, sg16, c)).lower(h)
    own = (None, lambda th, h, c: h[:, :4])  # a user's module returning the wrong shape
    with pytest.raises(ValueError, match=r"`estimator` output must have h's shape \(4, 8\)"):
        jax.jit(lambda h: sg_interface(h, {}, c, estimator=own)).lower(h)


def test_context_of_the_wrong_batch_is_named():
    h, sg, _ = _err_setup()
    with pytest.raises(ValueError, match=r"`context` must have h's batch size 4 .* \(5, 3\)"):
        jax.jit(lambda h, c: sg_interface(h, sg, c)).lower(h, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="`context` is None"):
        sg_interface(h, sg, None)
    with pytest.raises(TypeError, match="floating dtype"):
        sg_interface(jnp.ones((4, 8), jnp.int32), sg, jnp.zeros((4, 3)))


def test_int_labels_as_context_name_the_fix():
    h, sg, _ = _err_setup()
    labels = jnp.arange(4) % 3
    with pytest.raises(TypeError, match=r"float one-hot .* got int labels of shape \(4,\) "
                       r"— use jax.nn.one_hot\(y, k\)"):  # fmt: skip
        jax.grad(lambda h: sg_interface(h, sg, labels).sum())(h)


def test_dict_context_names_the_fix():
    h, sg, c = _err_setup()
    with pytest.raises(TypeError, match=r"`context` must be one array.* dict with keys \['y'\]"):
        sg_interface(h, sg, {"y": c})
    # a user's estimator may read a dict; an AttributeError inside it is reported, not raw
    own = (None, lambda th, h, c: h * c.y)
    with pytest.raises(ValueError, match=r"cannot be applied .* context a dict .*AttributeError"):
        sg_interface(h, {}, {"y": c}, estimator=own)


def test_per_example_vmap_is_named():
    h, sg, c = _err_setup()
    with pytest.raises(ValueError, match=r"traced by jax.vmap: .* outside the per-example vmap"):
        jax.vmap(lambda hh, cc: sg_interface(hh, sg, cc))(h, c)
    lin = init_sg(jax.random.key(0), (8,), estimator="linear")
    with pytest.raises(ValueError, match=r"outside the per-example vmap"):
        jax.vmap(lambda hh: sg_interface(hh, lin, estimator="linear"))(h)
    # the same wrong context outside any vmap: no vmap hint
    with pytest.raises(ValueError, match=r"shape \(batch, k\), got shape \(4,\)$"):
        sg_interface(h, sg, c[:, 0])


def test_forward_mode_is_refused():
    """Documented limit: an SG exists only as a backward pass."""
    h, sg, c = _err_setup()
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jax.jvp(lambda h: sg_interface(h, sg, c), (h,), (h,))


# --------------------------------------------------------------------------------------
# λ as data: a traced λ (an annealing schedule inside one compiled step).


def test_traced_lam_equals_static_lam_bit_for_bit_without_retrace():
    net, params, x, y, est, sg = _all_sg_problem()
    traces = []

    @jax.jit
    def traced(params, sg, lam):
        traces.append(1)
        return jax.grad(_interface_loss(net, AT["all"], est, lam=lam), argnums=(0, 1))(
            params, sg, x, y
        )

    for lam in (0.0, 0.3, 0.7, 1.0):
        got = traced(params, sg, jnp.float32(lam))
        want = jax.jit(jax.grad(_interface_loss(net, AT["all"], est, lam=lam), argnums=(0, 1)))(
            params, sg, x, y
        )
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(traces) == 1
    # an eager jnp scalar is data too (and checked: it is concrete)
    g = _jgrad(_interface_loss(net, AT["all"], est, lam=jnp.float32(1.0)))(params, sg, x, y)
    _assert_tree_close(g, _jgrad(lambda p: XENT.fn(net.apply(p, x), y))(params), 1e-6)


def test_traced_lam_out_of_range_poisons_the_signal_below():
    net, params, x, y, est, sg = _all_sg_problem()
    f = jax.jit(lambda lam: jax.grad(_interface_loss(net, AT["all"], est, lam=lam))(
        params, sg, x, y))  # fmt: skip
    assert bool(jnp.all(jnp.isfinite(f(jnp.float32(0.5))[0]["W"])))
    assert bool(jnp.all(jnp.isnan(f(jnp.float32(1.5))[0]["W"])))
    assert bool(jnp.all(jnp.isnan(f(jnp.float32(-1e-3))[0]["W"])))
    # a schedule's rounding (float32 1 − 5·(1/5) = −1.5e-8) is λ = 0, not an error
    want = _jgrad(_interface_loss(net, AT["all"], est))(params, sg, x, y)
    _assert_tree_close(f(jnp.float32(-1.5e-8)), want, 1e-6)


def test_annealed_lam_trains_as_the_static_schedule():
    """λ_t = 1 − t/T annealed inside one compiled step (λ computed from the step counter)
    takes the same steps as a static λ per step (one compile per value)."""
    net, params, x, y, est, sg = _all_sg_problem(seed=1)
    opt, steps = optax.adam(1e-2), 5
    schedule = lambda t: 1.0 - 0.25 * t  # noqa: E731  (exact in float32: 1, .75, ..., 0)

    def make(lam_of):
        def step(v, s, t):
            lam = lam_of(t)
            g = jax.grad(lambda v: _interface_loss(net, AT["all"], est, lam=lam)(*v, x, y))(v)
            u, s = opt.update(g, s)
            return optax.apply_updates(v, u), s

        return step

    traced = jax.jit(make(lambda t: schedule(t.astype(jnp.float32))))
    v1 = v2 = (params, sg)
    s1 = s2 = opt.init(v1)
    for t in range(steps):
        v1, s1 = traced(v1, s1, jnp.int32(t))
        v2, s2 = jax.jit(make(lambda _, t=t: schedule(t)))(v2, s2, t)
    assert traced._cache_size() == 1
    diff = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2))
    )
    print(f"annealed λ: max |traced − static| after {steps} steps = {diff:.3g}")
    assert diff == 0.0


# --------------------------------------------------------------------------------------
# One compile per step function.


def test_one_compile_per_step_function():
    net, params, x, y, est, sg = _all_sg_problem()
    traces = []
    loss = _interface_loss(net, AT["all"], est)

    @jax.jit
    def step(params, sg, x, y):
        traces.append(1)
        g = jax.grad(loss, argnums=(0, 1))(params, sg, x, y)
        return jax.tree.map(lambda p, d: p - 0.1 * d, (params, sg), g)

    rng = np.random.default_rng(1)
    for _ in range(4):
        x = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
        params, sg = step(params, sg, x, y)
    assert len(traces) == 1
    assert step._cache_size() == 1


# --------------------------------------------------------------------------------------
# The forward interface (synthetic inputs, DNI §3.3).


def _forward_problem():
    k = jax.random.split(jax.random.key(21), 5)
    x = jax.random.normal(k[0], (6, 5))
    w_low = jax.random.normal(k[1], (5, 4))
    w_up = jax.random.normal(k[2], (4, 3))
    phi = 0.5 * jax.random.normal(k[3], (5, 4))
    target = jax.random.normal(k[4], (6, 3))
    lower = lambda w, x: jnp.tanh(x @ w)  # noqa: E731
    upper = lambda w, h: jnp.mean((h @ w - target) ** 2)  # noqa: E731
    model = lambda phi, x: x @ phi  # noqa: E731  I(x), linear
    return x, w_low, w_up, phi, lower, upper, model


@pytest.mark.parametrize("mode", ["train", "synthetic"])
def test_synthetic_input_gradients(mode):
    x, w_low, w_up, phi, lower, upper, model = _forward_problem()

    def loss(w_low, w_up, phi):
        h = synthetic_input(lower(w_low, x), phi, x, model=model, mode=mode)
        return upper(w_up, h)

    value, (g_low, g_up, g_phi) = jax.value_and_grad(loss, argnums=(0, 1, 2))(w_low, w_up, phi)
    # independent references, written out
    h = lower(w_low, x)
    used = h if mode == "train" else model(phi, x)  # what the upper part runs on
    np.testing.assert_allclose(value, upper(w_up, used), rtol=1e-6)
    _assert_tree_close(g_up, _jgrad(upper)(w_up, used), 1e-6)
    # below receives the error computed at the input the upper part ran on
    _, lower_vjp = jax.vjp(lambda w: lower(w, x), w_low)
    _assert_tree_close(g_low, lower_vjp(_jgrad(upper, argnums=1)(w_up, used))[0], 1e-6)
    # I is trained by its regression onto stop_grad(h) only, never by the task loss
    reg = lambda phi: jnp.mean(jnp.sum((model(phi, x) - h) ** 2, -1))  # noqa: E731
    _assert_tree_close(g_phi, _jgrad(reg)(phi), 1e-6)


def test_synthetic_input_without_the_real_activation():
    x, _, w_up, phi, _, upper, model = _forward_problem()
    g_up, g_phi = _jgrad(
        lambda w, phi: upper(w, synthetic_input(None, phi, x, model=model, mode="synthetic")),
        argnums=(0, 1),
    )(w_up, phi)
    _assert_tree_close(g_up, _jgrad(upper)(w_up, model(phi, x)), 1e-6)
    assert float(jnp.abs(g_phi).max()) == 0.0  # nothing to regress onto: I stays
    with pytest.raises(ValueError, match="mode 'train' needs the real activation `h`"):
        synthetic_input(None, phi, x, model=model)


def test_synthetic_input_errors_are_named():
    x, w_low, _, phi, lower, _, model = _forward_problem()
    h = lower(w_low, x)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        synthetic_input(h, phi, x, model=model, mode="apply")
    with pytest.raises(ValueError, match=r"`model` output must have h's shape \(6, 4\)"):
        synthetic_input(h, phi[:, :3], x, model=model)
    with pytest.raises(ValueError, match=r"`source` must have h's batch size 6"):
        synthetic_input(h, phi, jnp.tile(x, (2, 1)), model=lambda p, s: s[:6] @ p)
    with pytest.raises(ValueError, match="`model` cannot be applied"):
        synthetic_input(h, phi[:3], x, model=model)


def test_an_upper_stage_trained_only_on_synthetic_inputs_learns_mnist(mnist_dir):
    """DNI §3.3: the upper stage (128 → 10) only ever sees I(x), a model trained to predict
    the lower stage's output h = relu(x W + b) from x; the lower stage learns from the
    error the upper stage computed at I(x). 500 steps of batch 128 on 10,000 MNIST images.
    Measured when written: 0.891 test accuracy on the real h, 0.881 on I(x) (seeds 1, 2:
    0.895/0.876, 0.888/0.885); the bar is 0.85.
    """
    from sgjax.infra import data

    ds = data.idx_dataset("mnist", mnist_dir, n_train=10000, n_test=2000)
    k = jax.random.split(jax.random.key(0), 3)

    def dense(key, a, b):
        return {"W": jax.random.normal(key, (a, b)) * (2 / a) ** 0.5, "b": jnp.zeros(b)}

    v = {"lower": dense(k[0], 784, 128), "upper": dense(k[1], 128, 10), "I": dense(k[2], 784, 128)}
    relu_dense = lambda p, x: jax.nn.relu(x @ p["W"] + p["b"])  # noqa: E731
    logits = lambda v, h: h @ v["upper"]["W"] + v["upper"]["b"]  # noqa: E731

    def loss(v, x, y):
        h = relu_dense(v["lower"], x)
        h_hat = synthetic_input(h, v["I"], x, model=relu_dense, mode="synthetic")
        return optax.softmax_cross_entropy_with_integer_labels(logits(v, h_hat), y).mean()

    opt = optax.adam(1e-3)

    @jax.jit
    def step(v, o, x, y):
        updates, o = opt.update(jax.grad(loss)(v, x, y), o)
        return optax.apply_updates(v, updates), o

    o = opt.init(v)
    for _, (x, y) in zip(range(500), train.batches(ds.x_train, ds.y_train, 128)):
        v, o = step(v, o, x, y)
    real = float(jnp.mean(logits(v, relu_dense(v["lower"], ds.x_test)).argmax(-1) == ds.y_test))
    synth = float(jnp.mean(logits(v, relu_dense(v["I"], ds.x_test)).argmax(-1) == ds.y_test))
    print(f"test accuracy: {real:.4f} on the real h, {synth:.4f} on the synthetic input I(x)")
    assert real >= 0.85 and synth >= 0.85


def test_context_receives_a_zero_cotangent():
    """The context (labels) is conditioning, not a path for the error: zero gradient."""
    h, sg, c = jnp.ones((4, 8)), init_sg(jax.random.key(0), (8,), 3), jnp.ones((4, 3))
    sg = jax.tree.map(lambda v: v + 0.5, sg)  # a module that does read its context
    g_c = jax.grad(lambda c: jnp.sum(sg_interface(h, sg, c) ** 2), argnums=0)(c)
    assert g_c.shape == c.shape and float(jnp.abs(g_c).max()) == 0.0
