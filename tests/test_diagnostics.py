"""Each diagnostic against a small case computed by hand (or in closed form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgjax import diagnostics as dg
from sgjax import losses, nets, rules

# ------------------------------------------------------------------ implied quadratic loss


def _numpy_implied(A, B, C, h, y):
    S = 0.5 * (A + A.T)
    return 0.5 * np.einsum("bi,ij,bj->b", h, S, h) + np.sum((y @ B + C) * h, axis=1)


def test_implied_loss_matches_closed_form():
    rng = np.random.default_rng(0)
    A, B, C = rng.normal(size=(4, 4)), rng.normal(size=(3, 4)), rng.normal(size=4)
    h, y = rng.normal(size=(6, 4)), np.eye(3)[rng.integers(0, 3, 6)]
    theta = {"A": jnp.asarray(A), "B": jnp.asarray(B), "C": jnp.asarray(C)}
    got = np.asarray(dg.implied_quadratic_loss(theta, jnp.asarray(h), jnp.asarray(y)))
    np.testing.assert_allclose(got, _numpy_implied(A, B, C, h, y), rtol=1e-5, atol=1e-5)


def test_implied_loss_hand_case():
    # h = (1, 2), A = [[1, 2], [0, 1]] -> A_sym = [[1, 1], [1, 1]]; ½ h A_sym hᵀ = ½·9 = 4.5.
    # y = e_1, B = [[1, 0], [0, 3]] -> yB = (0, 3); C = (1, 1) -> (yB + C)·h = 1 + 8 = 9.
    theta = {
        "A": jnp.array([[1.0, 2.0], [0.0, 1.0]]),
        "B": jnp.array([[1.0, 0.0], [0.0, 3.0]]),
        "C": jnp.array([1.0, 1.0]),
    }
    got = dg.implied_quadratic_loss(theta, jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 1.0]]))
    assert got.tolist() == [13.5]


def test_implied_loss_gradient_is_symmetric_part_of_the_sg():
    # ∂L̂/∂h = h A_sym + yB + C: equal to the SG output only when A is symmetric.
    rng = np.random.default_rng(1)
    A = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    B = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    C = jnp.asarray(rng.normal(size=3), jnp.float32)
    h = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    y = jax.nn.one_hot(jnp.array([0, 1, 1, 0, 1]), 2)
    theta = {"A": A, "B": B, "C": C}
    grad = jax.grad(lambda hh: jnp.sum(dg.implied_quadratic_loss(theta, hh, y)))(h)
    np.testing.assert_allclose(grad, h @ dg.symmetric_part(A) + y @ B + C, rtol=1e-5, atol=1e-5)
    sg_out = h @ A + y @ B + C  # the SG field itself: not a gradient field for this A
    assert float(jnp.max(jnp.abs(grad - sg_out))) > 1e-2
    sym = {"A": dg.symmetric_part(A), "B": B, "C": C}
    grad_sym = jax.grad(lambda hh: jnp.sum(dg.implied_quadratic_loss(sym, hh, y)))(h)
    np.testing.assert_allclose(grad_sym, h @ sym["A"] + y @ B + C, rtol=1e-5, atol=1e-5)


def test_implied_loss_of_exact_sg_for_affine_top_is_true_loss_minus_constant():
    # Upper network p = hW + b with ℓ = ½‖p − y‖²: ∂ℓ/∂h = hWWᵀ + y(−Wᵀ) + bWᵀ, so the
    # exact linear SG is A = WWᵀ, B = −Wᵀ, C = bWᵀ and L̂ = ℓ − ½‖b − y‖² (paper §1.4).
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    h = rng.normal(size=(50, 4))
    labels = rng.integers(0, 3, 50)
    y = np.eye(3)[labels]
    theta = {"A": W @ W.T, "B": -W.T, "C": b @ W.T}
    with jax.enable_x64(True):
        L_hat = np.asarray(dg.implied_quadratic_loss(theta, jnp.asarray(h), jnp.asarray(y)))
    ell = 0.5 * np.sum((h @ W + b - y) ** 2, axis=1)
    np.testing.assert_allclose(L_hat, ell - 0.5 * np.sum((b - y) ** 2, axis=1), atol=1e-9)
    same = labels == 0  # for a fixed label the constant is shared: rank order is exact
    assert dg.spearman(L_hat[same], ell[same]) == pytest.approx(1.0)


def test_implied_loss_partial_modules_and_errors():
    h = jnp.array([[1.0, 2.0]])
    y = jnp.array([[1.0, 0.0]])
    label_only = {"B": jnp.array([[1.0, 1.0], [0.0, 0.0]]), "C": jnp.zeros(2)}
    assert dg.implied_quadratic_loss(label_only, h, y).tolist() == [3.0]
    with pytest.raises(ValueError, match="'C'"):
        dg.implied_quadratic_loss({"A": jnp.eye(2)}, h, y)
    with pytest.raises(ValueError, match="features"):
        dg.implied_quadratic_loss({"C": jnp.zeros(3)}, h, y)
    with pytest.raises(ValueError, match="`y` must have shape"):
        dg.implied_quadratic_loss(label_only, h, jnp.ones((1, 5)))
    with pytest.raises(ValueError, match="square"):
        dg.symmetric_part(jnp.ones((2, 3)))


# ------------------------------------------------------------------------------- Spearman


def test_spearman_hand_example_with_ties():
    # ranks a: 1, 2.5, 2.5, 4; b: 1, 3, 2, 4 -> ρ = 4.5 / sqrt(4.5 · 5)
    assert dg.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert dg.spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    assert dg.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone transforms do not change ρ
    x = np.random.default_rng(3).normal(size=30)
    assert dg.spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert np.isnan(dg.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same number"):
        dg.spearman([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------------------ RDM


def test_rdm_of_three_hand_vectors():
    # centred rows: (2,-1,-1)/3, (-1,2,-1)/3, (1,1,-2)/3; corr = -1/2, 1/2, 1/2
    R = dg.rdm([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(R, [[0.0, 1.5, 0.5], [1.5, 0.0, 0.5], [0.5, 0.5, 0.0]], atol=1e-12)


def test_rdm_scale_invariant_and_dead_rows():
    h = np.random.default_rng(4).normal(size=(5, 7))
    np.testing.assert_allclose(dg.rdm(h), dg.rdm(3 * h + 2), atol=1e-12)
    R = dg.rdm([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    assert R.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_rdm_distance_hand_case_and_errors():
    # within-class pairs (0,1),(1,0),(2,3),(3,2): differences 0.4, 0.4, 0, 0 -> RMS sqrt(0.08)
    R = np.full((4, 4), 1.0)
    np.fill_diagonal(R, 0.0)
    R2 = R.copy()
    R2[0, 1] = R2[1, 0] = 0.6
    assert dg.rdm_distance(R2, R, [0, 0, 1, 1]) == pytest.approx(np.sqrt(0.08))
    R2[0, 2] = 5.0  # between-class entries do not count
    assert dg.rdm_distance(R2, R, [0, 0, 1, 1]) == pytest.approx(np.sqrt(0.08))
    with pytest.raises(ValueError, match="no two examples share"):
        dg.rdm_distance(R, R, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        dg.rdm_distance(R, R, [0, 0, 1])


def test_label_sorted_sample_balanced_and_sorted():
    y = np.repeat(np.arange(4), 25)[np.random.default_rng(5).permutation(100)]
    idx = dg.label_sorted_sample(y, 40, seed=1)
    assert len(set(idx.tolist())) == 40
    assert np.all(np.diff(y[idx]) >= 0)
    assert np.bincount(y[idx]).tolist() == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="`n`"):
        dg.label_sorted_sample(y, 101)


# --------------------------------------------------------------------------------- probes


def test_classifier_probe_separable_reaches_100_percent():
    rng = np.random.default_rng(6)
    centres = 5.0 * np.eye(3, 8)
    y = rng.integers(0, 3, 90)
    h = centres[y] + 0.5 * rng.normal(size=(90, 8))
    out = dg.linear_probe_accuracy(h, y, h_eval=h[:10], y_eval=y[:10])
    assert out == {"train": 1.0, "eval": 1.0}


def test_classifier_probe_cannot_solve_xor():
    # No line separates XOR: at most 3 of the 4 points are right.
    h = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert dg.linear_probe_accuracy(h, np.array([0, 0, 1, 1]))["train"] <= 0.75
    with pytest.raises(ValueError, match="integer labels"):
        dg.linear_probe_accuracy(h, np.array([0.0, 1.0, 0.0, 1.0]))


def test_regressor_probe_hand_cases():
    h = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    x = h @ np.array([[1.0, -1.0, 2.0], [0.5, 0.0, 1.0]]) + 3.0
    assert dg.linear_regressor_mse(h, x) == pytest.approx(0.0, abs=1e-9)
    # constant features explain nothing: the residual is x's variance, ((−1)² + 1²)/2 = 1
    assert dg.linear_regressor_mse(np.ones((2, 3)), np.array([[0.0], [2.0]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        dg.linear_regressor_mse(np.ones((2, 1)), np.ones((3, 1)))


# --------------------------------------------------------------------------- weight norms


def test_weight_norms_hand_case_sum_to_one():
    params = [{"W": np.full((2, 2), 1.0)}, {"W": np.full((2, 2), 2.0)}, {"W": np.ones((2, 1))}]
    got = dg.weight_norms(params)  # 4 and 16 -> 0.2, 0.8; the output layer is left out
    np.testing.assert_allclose(got, [0.2, 0.8])
    np.testing.assert_allclose(
        dg.weight_norms(params, hidden_only=False), [4 / 22, 16 / 22, 2 / 22]
    )
    net = nets.mlp([5, 7, 7, 7, 3])
    norms = dg.weight_norms(net.init(jax.random.key(0)))
    assert norms.shape == (3,) and norms.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'W'"):
        dg.weight_norms([{"b": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="zero"):
        dg.weight_norms([{"W": np.zeros(2)}, {"W": np.zeros(2)}])


# ------------------------------------------------------------------------- cosine to truth


def _toy(key):
    net = nets.mlp([3, 4, 4, 2], activation="tanh")
    params = net.init(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (6, 3))
    y = jnp.array([0, 1, 1, 0, 1, 0])
    return net, params, x, y


def test_cosines_backprop_one_and_fresh_sg_zero(getkey):
    net, params, x, y = _toy(getkey())
    for rule, want in ((rules.backprop(), 1.0), (rules.synthetic_gradients(), 0.0)):
        c = dg.gradient_cosines(net, rule, rule.init(getkey(), net), params, x, y, "xent")
        np.testing.assert_allclose(c, [want, want], atol=1e-5)


def test_cosine_kickback_hand_computed():
    # Linear net h1 = x W1, p = h1 W2 with MSE: true δ1 = (p − y) W2ᵀ, Kickback δ1 = (p − y)·1.
    net = nets.mlp([2, 2, 2], activation="identity")
    W1 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    W2 = jnp.array([[2.0, 0.0], [1.0, -1.0]])
    params = ({"W": W1, "b": jnp.zeros(2)}, {"W": W2, "b": jnp.zeros(2)})
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    y = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    # p = x W2 = [[2, 0], [1, -1]]; e = p; true = e W2ᵀ = [[4, 2], [2, 2]];
    # kickback = row sums broadcast = [[2, 2], [0, 0]]; cos = (8 + 4) / (sqrt(28)·sqrt(8))
    rule = rules.kickback()
    c = dg.gradient_cosines(net, rule, rule.init(jax.random.key(0), net), params, x, y, "mse")
    assert float(c[0]) == pytest.approx(12 / np.sqrt(28 * 8), rel=1e-6)


def test_cosine_dfa_with_transposed_output_weights_is_one(getkey):
    net = nets.mlp([3, 5, 2], activation="relu")
    params = net.init(getkey())
    rule = rules.direct_feedback_alignment(B=[params[1]["W"].T])
    x = jax.random.normal(getkey(), (8, 3))
    y = jnp.arange(8) % 2
    c = dg.gradient_cosines(net, rule, rule.init(getkey(), net), params, x, y, losses.mse)
    np.testing.assert_allclose(c, [1.0], atol=1e-5)
