"""Exact equivalences between the rules, and the Table 1 identities (paper §4.2, §6 19–21).

Every comparison is float32 at a tolerance of a few ulps of the quantities compared.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close

from sgjax import estimators, losses, nets, rules

RTOL, ATOL = 2e-5, 1e-6  # float32: a handful of ulps after a few matmuls


def _batch(key, net, n=16, regression=False):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, *net.in_shape))
    if regression:
        y = jax.random.normal(ky, (n, net.out_dim))
    else:
        y = jax.random.randint(ky, (n,), 0, net.out_dim)
    return x, y


_assert_trees_close = functools.partial(assert_trees_close, rtol=RTOL, atol=ATOL)


def _grad_of_whole_loss(net, params, x, y, loss):
    return jax.grad(lambda p: loss.fn(net.apply(p, x), y))(params)


NETS = {
    "relu": lambda: nets.mlp([5, 7, 6, 4], "relu"),
    "tanh-layernorm": lambda: nets.mlp([5, 8, 8, 8, 3], "tanh", norm="layer"),
    "sigmoid-batchnorm": lambda: nets.mlp([6, 9, 5, 3], "sigmoid", norm="batch"),
    "single-stage": lambda: nets.mlp([4, 3]),
}


@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.mse], ids=["xent", "mse"])
def test_backprop_equals_jax_grad_of_the_whole_loss(getkey, net_name, loss):
    net = NETS[net_name]()
    params = net.init(getkey())
    x, y = _batch(getkey(), net)
    # jitted, both sides: one compile each instead of ~50 eager programs
    rule = rules.backprop()
    out = jax.jit(lambda p, x, y: rule.gradients(rules.RuleState(), net, p, x, y, loss))(
        params, x, y
    )
    want = jax.jit(lambda p, x, y: _grad_of_whole_loss(net, p, x, y, loss))(params, x, y)
    _assert_trees_close(out.grads, want)
    np.testing.assert_allclose(out.loss, loss.fn(net.apply(params, x), y), rtol=1e-6)


def test_exact_signals_are_the_per_example_gradients(getkey):
    net = NETS["tanh-layernorm"]()
    params = net.init(getkey())
    x, y = _batch(getkey(), net, n=6)
    signals = rules.exact_signals(net, params, x, y, losses.softmax_cross_entropy)
    hs = net.hidden(params, x)
    for b in range(1, net.depth + 1):
        # ∂ℓ_0/∂h_b for example 0 alone: perturb h_b and run the stages above it.
        def upper(h, b=b):
            for s, th in zip(net.stages[b:], params[b:]):
                h = s.apply(th, h)
            return losses.softmax_cross_entropy.fn(h, y[:1])

        want = jax.grad(upper)(hs[b][:1])
        np.testing.assert_allclose(signals[b - 1][:1], want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("net_name", ["relu", "tanh-layernorm", "sigmoid-batchnorm"])
def test_fa_with_forward_weights_transposed_equals_backprop(getkey, net_name):
    net = NETS[net_name]()
    params = net.init(getkey())
    x, y = _batch(getkey(), net)
    B = [params[i + 1]["W"].T for i in range(net.depth - 1)]
    rule = rules.feedback_alignment(B)
    fa = rule.gradients(rule.init(getkey(), net), net, params, x, y, losses.softmax_cross_entropy)
    bp = rules.backprop().gradients((), net, params, x, y, losses.softmax_cross_entropy)
    _assert_trees_close(fa.grads, bp.grads)


def test_fa_with_random_matrices_differs_from_backprop_below_the_top(getkey):
    net = NETS["relu"]()
    params = net.init(getkey())
    x, y = _batch(getkey(), net)
    rule = rules.feedback_alignment()
    fa = rule.gradients(rule.init(getkey(), net), net, params, x, y, losses.mse)
    bp = rules.backprop().gradients((), net, params, x, y, losses.mse)
    # The output stage sees the exact error in both; the stages below do not.
    _assert_trees_close(fa.grads[-1], bp.grads[-1])
    assert not np.allclose(fa.grads[0]["W"], bp.grads[0]["W"], rtol=1e-2)


@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.mse], ids=["xent", "mse"])
def test_dfa_on_one_hidden_layer_with_output_weights_equals_backprop(getkey, loss):
    net = nets.mlp([6, 10, 4], "tanh")
    params = net.init(getkey())
    x, y = _batch(getkey(), net)
    rule = rules.direct_feedback_alignment([params[1]["W"].T])
    dfa = rule.gradients(rule.init(getkey(), net), net, params, x, y, loss)
    bp = rules.backprop().gradients((), net, params, x, y, loss)
    _assert_trees_close(dfa.grads, bp.grads)


def test_kickback_equals_dfa_with_ones(getkey):
    net = NETS["relu"]()
    params = net.init(getkey())
    x, y = _batch(getkey(), net, regression=True)
    ones = [jnp.ones((net.out_dim, s.out_shape[0])) for s in net.stages[:-1]]
    dfa = rules.direct_feedback_alignment(ones)
    kb = rules.kickback()
    a = kb.gradients(kb.init(getkey(), net), net, params, x, y, losses.mse)
    b = dfa.gradients(dfa.init(getkey(), net), net, params, x, y, losses.mse)
    _assert_trees_close(a.grads, b.grads)
    _assert_trees_close(a.signals, b.signals)


def _exact_linear_sg(net, params, boundaries):
    """Parameters (A, B, C) of hA + yB + C that reproduce ∂ℓ/∂h_b exactly.

    For an affine upper network p = h M + c and ℓ = ½‖p − y‖²: ∂ℓ/∂h = (p − y)Mᵀ, so
    A = M Mᵀ, B = −Mᵀ, C = c Mᵀ (paper §6 item 1, per example).
    """
    modules = []
    for b in boundaries:
        M = jnp.eye(net.stages[b - 1].out_shape[0])
        c = jnp.zeros((net.stages[b - 1].out_shape[0],))
        for th in params[b:]:
            M, c = M @ th["W"], c @ th["W"] + th["b"]
        modules.append({"A": M @ M.T, "B": -M.T, "C": c @ M.T})
    return tuple(modules)


@pytest.mark.parametrize("targets", ["bootstrap", "true"])
@pytest.mark.parametrize("at", [None, "middle", (1, 3)])
def test_sg_with_an_exact_estimator_equals_backprop(getkey, targets, at):
    net = nets.mlp([5, 6, 7, 6, 3], "identity")  # deep linear: every SG can be exact
    params = net.init(getkey())
    x, y = _batch(getkey(), net, regression=True)
    rule = rules.synthetic_gradients("conditioned", at=at, targets=targets)
    boundaries = rules.resolve_at(at, net.depth)
    state = rules.RuleState(params=_exact_linear_sg(net, params, boundaries))
    sg = rule.gradients(state, net, params, x, y, losses.mse)
    bp = rules.backprop().gradients((), net, params, x, y, losses.mse)
    _assert_trees_close(sg.grads, bp.grads, rtol=1e-4, atol=1e-5)
    # ... and the SG regression loss is zero up to rounding, relative to ‖∂ℓ/∂h‖².
    scale = [float(jnp.mean(jnp.sum(bp.signals[b - 1] ** 2, -1))) for b in boundaries]
    assert np.all(np.asarray(sg.sg_loss) <= 1e-9 * np.maximum(scale, 1.0))


def test_sg_loss_gradient_is_the_regression_onto_the_stop_gradient_target(getkey):
    net = nets.mlp([4, 5, 3], "tanh")
    params = net.init(getkey())
    x, y = _batch(getkey(), net)
    theta = {
        "A": 0.1 * jax.random.normal(getkey(), (5, 5)),
        "B": 0.1 * jax.random.normal(getkey(), (3, 5)),
        "C": 0.1 * jax.random.normal(getkey(), (5,)),
    }
    rule = rules.synthetic_gradients()
    out = rule.gradients(rules.RuleState((theta,)), net, params, x, y, losses.softmax_cross_entropy)
    h = net.hidden(params, x)[1]
    t = rules.exact_signals(net, params, x, y, losses.softmax_cross_entropy)[0]  # top SG: exact
    y_vec = losses.as_target(y, 3)

    def l_sg(th):
        s = estimators.conditioned().apply(th, h, y_vec)
        return jnp.mean(jnp.sum((t - s) ** 2, -1))

    _assert_trees_close(out.rule_grads[0], jax.grad(l_sg)(theta))
    np.testing.assert_allclose(out.sg_loss[0], l_sg(theta), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Table 1 (paper §4.2): each rule's δ̂ at a boundary equals ∂L_SG/∂h of its
# (SG, target, L_SG) triple with the target held constant. Checked twice, once per
# purpose: here the registry contract (every registered rule against its own RuleSpec
# row), and theory/table1.py (tests/test_theory_claims.py) against references written
# independently of sgjax, with a broken-row control per row.


def _randomised_state(rule, net, key):
    """The rule's state with its SG modules (if any) set to small random values."""
    state = rule.init(key, net)
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.fold_in(key, 1), max(len(leaves), 1))
    leaves = [0.1 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
    return state._replace(params=jax.tree.unflatten(tree, leaves))


@pytest.mark.parametrize("loss", [losses.mse, losses.softmax_cross_entropy], ids=["mse", "xent"])
@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_every_registered_rule_follows_its_table1_row(name, loss):
    # The contract: each registered rule's signal at every hidden boundary is the one its
    # Table 1 row (RuleSpec.table1: SG, target, L_SG) prescribes. Seeded, 3 hidden layers.
    # Under MSE too: with cross-entropy Kickback's signal Σ_k ∂ℓ/∂p_k is identically 0,
    # so its row would hold for any feedback.
    key = jax.random.key(7)
    net = nets.mlp([6, 8, 7, 5, 4], "tanh")
    params = net.init(jax.random.fold_in(key, 0))
    x, y = _batch(jax.random.fold_in(key, 1), net)
    state = _randomised_state(rules.get(name), net, jax.random.fold_in(key, 2))
    errs = rules.table1_errors(name, state, net, params, x, y, loss)
    assert errs.shape == (net.depth - 1,)
    np.testing.assert_allclose(errs, 0.0, atol=ATOL)


@pytest.mark.parametrize(
    "options", [{"at": "middle"}, {"targets": "true"}, {"at": (1, 3), "prop": 0.7}]
)
def test_sg_table1_rows_follow_the_options(options):
    key = jax.random.key(8)
    net = nets.mlp([6, 8, 7, 5, 4], "tanh")
    params = net.init(jax.random.fold_in(key, 0))
    x, y = _batch(jax.random.fold_in(key, 1), net)
    rule = rules.get("sg", **options)
    state = _randomised_state(rule, net, jax.random.fold_in(key, 2))
    errs = rules.table1_errors("sg", state, net, params, x, y, losses.mse, **options)
    np.testing.assert_allclose(errs, 0.0, atol=ATOL)


def test_sg_prop_means_one_alpha_everywhere():
    # One meaning of "sg-prop": the registry's default α is what rules.get builds and what
    # the CLI records (it used to be 1.0 here and 0.1 in the CLI).
    assert rules.spec("sg-prop").options["prop"] == 0.1
    assert rules.get("sg-prop").name == "sg-prop"
    with pytest.raises(ValueError, match=r"`prop` \(α\) must be a number > 0, got 0"):
        rules.get("sg-prop", prop=0)


def test_options_a_rule_does_not_take_are_refused_naming_the_rules_that_do():
    with pytest.raises(
        ValueError,
        match=r"rule 'fa' takes no option 'estimator' "
        r"\(`estimator` applies to sg, sg-prop\)",
    ):
        rules.get("fa", estimator="mlp")


# ---------------------------------------------------------------------------------------
# Bad input.


def test_unknown_rule_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown rule 'bogus'; expected one of"):
        rules.get("bogus")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": "oracle"}, r"`targets` must be 'bootstrap' or 'true', got 'oracle'"),
        ({"prop": -0.5}, r"`prop` \(α\) must be a float ≥ 0, got -0.5"),
        ({"estimator": "quadratic"}, r"unknown estimator 'quadratic'"),
    ],
)
def test_bad_sg_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rules.synthetic_gradients(**kwargs)


@pytest.mark.parametrize(
    ("at", "match"),
    [
        (0, r"`at` entries must be ints in 1\.\.3 .* got 0"),
        ((2, 9), r"got 9"),
        ("top", r"`at` must be 'all', 'middle', 'output'"),
    ],
)
def test_bad_sg_placement(getkey, at, match):
    net = nets.mlp([4, 5, 5, 3])
    with pytest.raises(ValueError, match=match):
        rules.synthetic_gradients(at=at).init(getkey(), net)


def test_sg_on_a_single_stage_network_needs_an_explicit_output_placement(getkey):
    net = nets.mlp([4, 3])
    with pytest.raises(ValueError, match=r"no hidden boundary .* at='output'"):
        rules.synthetic_gradients().init(getkey(), net)
    rules.synthetic_gradients(at="output").init(getkey(), net)  # fine


@pytest.mark.parametrize("make", [rules.feedback_alignment, rules.direct_feedback_alignment])
def test_supplied_feedback_matrices_are_shape_checked(getkey, make):
    net = nets.mlp([4, 5, 6, 3])
    with pytest.raises(ValueError, match=r"one matrix per hidden boundary \(2\), got 1"):
        make([jnp.ones((5, 4))]).init(getkey(), net)
    with pytest.raises(ValueError, match=r"`B\[1\]` .* must have shape .* got \(2, 2\)"):
        make(
            [
                jnp.ones((6, 5)) if make is rules.feedback_alignment else jnp.ones((3, 5)),
                jnp.ones((2, 2)),
            ]
        ).init(getkey(), net)


def test_mismatched_input_width_is_a_clear_error(getkey):
    net = nets.mlp([4, 5, 3])
    params = net.init(getkey())
    with pytest.raises(ValueError, match=r"input `x`: expected shape \(batch, 4\), got \(2, 7\)"):
        rules.backprop().gradients((), net, params, jnp.ones((2, 7)), jnp.zeros(2, int), "xent")


def test_wrong_target_shape_is_a_clear_error(getkey):
    net = nets.mlp([4, 5, 3])
    params = net.init(getkey())
    with pytest.raises(ValueError, match=r"targets `y`: expected .* \(batch, 3\)"):
        rules.backprop().gradients((), net, params, jnp.ones((2, 4)), jnp.ones((2, 5)), "mse")
