"""Diagnostics of trained networks and their SG modules (paper §1.4, §3, Figs. 2, 3, 5, 8).

(Just over 400 lines: one small function per diagnostic, each with its doctest.)

Pure functions over arrays and parameter trees; nothing here trains a network.

=====================================  ==============================================
function                               what it measures (paper)
=====================================  ==============================================
:func:`implied_quadratic_loss`         L̂(h) = ½ h A_sym hᵀ + (yB + C) hᵀ, the loss a
                                       linear SG implies (§1.4; Fig. 2, Fig. 9)
:func:`spearman`                       rank correlation of L̂ with the true loss (Fig. 2)
:func:`rdm`, :func:`rdm_distance`      representational dissimilarity 1 − Pearson over
                                       units, and the within-class distance of a
                                       layer's RDM to the last layer's (Fig. 3, Fig. 7)
:func:`label_sorted_sample`            the label-sorted sample the RDMs are drawn on
:func:`linear_probe_accuracy`          linear classifier probe (Alain & Bengio; Fig. 8)
:func:`linear_regressor_mse`           linear map from a layer back to the input (Fig. 8)
:func:`weight_norms`                   normalised squared Frobenius norms (Fig. 5)
:func:`gradient_cosines`               cos(δ̂_i, ∂ℓ/∂h_i) per hidden boundary
=====================================  ==============================================

Inferred normalisations (the paper does not state them, ``paper.md`` §7): the RDM distance
is the root-mean-square difference over the within-class (block-diagonal, off-diagonal)
entries; the weight norms are ``‖W_l‖²_F / Σ_j ‖W_j‖²_F`` over the hidden layers.

Example:
    >>> import jax.numpy as jnp
    >>> theta = {"A": jnp.eye(2), "B": jnp.zeros((3, 2)), "C": jnp.zeros(2)}
    >>> implied_quadratic_loss(theta, jnp.array([[1.0, 2.0]]), jnp.zeros((1, 3))).tolist()
    [2.5]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax.nets import Network
from sgjax.rules import RuleState, UpdateRule, exact_signals

# --------------------------------------------------------------------------------------
# Implied loss of a linear SG (§1.4).


def symmetric_part(A: Any) -> jax.Array:
    """A_sym = (A + Aᵀ)/2, the only part of A a loss (a gradient field) can have.

    Example:
        >>> symmetric_part(jnp.array([[0.0, 2.0], [0.0, 0.0]])).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    A = jnp.asarray(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"symmetric_part: `A` must be a square matrix, got shape {A.shape}")
    return 0.5 * (A + A.T)


def implied_quadratic_loss(theta: dict, h: Any, y: Any) -> jax.Array:
    """Per-example loss implied by a linear SG ``hA + yB + C`` (paper §1.4).

    ``L̂(h) = ½ h A_sym hᵀ + (yB + C) hᵀ`` with ``A_sym = (A + Aᵀ)/2``: its gradient in h is
    ``h A_sym + yB + C``, which equals the SG exactly when A is symmetric; a non-symmetric
    A is not a gradient field, and only its symmetric part can be integrated. The additive
    constant is unknown, so compare L̂ to the true loss by rank (:func:`spearman`).

    Args:
        theta: SG module parameters with ``"C"`` and optionally ``"A"`` (d, d) and ``"B"``
            (y_dim, d) — any of the affine estimators of :mod:`sgjax.estimators`.
        h: activations, shape ``(batch, *h_shape)`` (flattened to ``(batch, d)``).
        y: label/target vectors, shape ``(batch, y_dim)`` (one-hot for labels).

    Returns:
        shape ``(batch,)``.

    Example:
        >>> theta = {"A": jnp.array([[2.0, 1.0], [0.0, 2.0]]), "C": jnp.array([1.0, 0.0])}
        >>> # h = (1, 2): ½ h A_sym hᵀ = ½ (2 + 2·0.5·2 + 2·4) = 6, plus C hᵀ = 1
        >>> implied_quadratic_loss(theta, jnp.array([[1.0, 2.0]]), jnp.zeros((1, 0))).tolist()
        [7.0]
    """
    if "C" not in theta:
        raise ValueError(
            "implied_quadratic_loss: `theta` must be an affine SG module's parameters with "
            f"keys 'C' and optionally 'A', 'B'; got keys {sorted(theta)}"
        )
    h = jnp.asarray(h)
    h2 = h.reshape(h.shape[0], -1)
    d = h2.shape[1]
    if theta["C"].shape != (d,):
        raise ValueError(
            f"implied_quadratic_loss: `h` has {d} features per example but the module's C "
            f"has shape {theta['C'].shape}"
        )
    linear = jnp.broadcast_to(theta["C"], h2.shape)
    if "B" in theta:
        y = jnp.asarray(y)
        if y.ndim != 2 or y.shape != (h2.shape[0], theta["B"].shape[0]):
            raise ValueError(
                f"implied_quadratic_loss: `y` must have shape ({h2.shape[0]}, "
                f"{theta['B'].shape[0]}) (one row per example), got {y.shape}"
            )
        linear = linear + y.astype(h2.dtype) @ theta["B"]
    out = jnp.sum(linear * h2, axis=-1)
    if "A" in theta:
        A = symmetric_part(theta["A"])
        out = out + 0.5 * jnp.sum((h2 @ A) * h2, axis=-1)
    return out


def _ranks(a: np.ndarray) -> np.ndarray:
    # Average ranks for ties, so that ρ is Pearson on ranks (the textbook definition).
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (Pearson on average ranks; ties share their mean rank).

    Returns ``nan`` when either input is constant (the correlation is undefined).

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
        0.8
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(
            f"spearman: `a` and `b` must have the same number (≥ 2) of values, got "
            f"{a.size} and {b.size}"
        )
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.sum(ra**2) * np.sum(rb**2))
    if denom == 0:
        return float("nan")
    return float(np.round(np.sum(ra * rb) / denom, 12))


# --------------------------------------------------------------------------------------
# Representational similarity (Fig. 3, Fig. 7).


def label_sorted_sample(y: Any, n: int, *, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` examples, an equal share per class where possible, sorted by label.

    The paper's RDMs use 400 MNIST points sorted by label (40 per class).

    Example:
        >>> y = np.array([1, 0, 1, 0, 1, 0])
        >>> y[label_sorted_sample(y, 4)].tolist()
        [0, 0, 1, 1]
    """
    y = np.asarray(y)
    if not isinstance(n, int) or not 1 <= n <= len(y):
        raise ValueError(f"label_sorted_sample: `n` must be an int in 1..{len(y)}, got {n!r}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per, extra = divmod(n, len(classes))
    picked = []
    leftovers = []
    for k, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        want = per + (1 if k < extra else 0)
        picked.append(idx[:want])
        leftovers.append(idx[want:])
    chosen = np.concatenate(picked)
    if len(chosen) < n:  # a class had too few examples: fill from the others
        rest = rng.permutation(np.concatenate(leftovers))
        chosen = np.concatenate([chosen, rest[: n - len(chosen)]])
    return chosen[np.argsort(y[chosen], kind="stable")]


def rdm(h: Any) -> np.ndarray:
    """Representational dissimilarity matrix ``RDM_ij = 1 − corr(h_i, h_j)``.

    Pearson correlation across units between the rows (examples) of ``h``. An example whose
    units are all equal (e.g. a dead ReLU layer) has no defined correlation; it is given
    correlation 0 with every other example (dissimilarity 1) and 0 with itself.

    Example:
        >>> rdm([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]]).round(6).tolist()
        [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [2.0, 2.0, 0.0]]
    """
    h = np.asarray(h, np.float64)
    h = h.reshape(h.shape[0], -1)
    z = h - h.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    out = 1.0 - z @ z.T
    np.fill_diagonal(out, 0.0)
    return out


def rdm_distance(R: Any, R_ref: Any, labels: Any) -> float:
    """Distance between the within-class entries of two RDMs (Fig. 3 right, Fig. 7).

    The paper plots the "L2 distance between diagonal elements at a given layer and the
    same elements at layer 20"; we read the diagonal *blocks* (same-label pairs, i ≠ j) and
    take the root-mean-square difference (normalisation inferred, ``paper.md`` §3.3).

    Example:
        >>> R = np.array([[0.0, 0.5, 1.0], [0.5, 0.0, 1.0], [1.0, 1.0, 0.0]])
        >>> rdm_distance(R, np.zeros((3, 3)), [0, 0, 1])
        0.5
    """
    R, R_ref, labels = np.asarray(R), np.asarray(R_ref), np.asarray(labels)
    n = len(labels)
    if R.shape != (n, n) or R_ref.shape != (n, n):
        raise ValueError(
            f"rdm_distance: `R` and `R_ref` must be ({n}, {n}) for {n} labels, got "
            f"{R.shape} and {R_ref.shape}"
        )
    mask = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    if not mask.any():
        raise ValueError("rdm_distance: no two examples share a label; no within-class entries")
    return float(np.sqrt(np.mean((R[mask] - R_ref[mask]) ** 2)))


# --------------------------------------------------------------------------------------
# Probes (Fig. 8).


def _standardise(h: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    return (h - mu) / np.where(sd > 0, sd, 1.0)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit_softmax_regression(x, t, steps, learning_rate):
    # One compiled program per (shape, steps, rate): probing 20 layers of one width
    # compiles once.
    opt = optax.adam(learning_rate)

    def loss_fn(theta):
        return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(x @ theta["W"] + theta["b"]), -1))

    def body(carry, _):
        theta, state = carry
        g = jax.grad(loss_fn)(theta)
        updates, state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), None

    theta0 = {"W": jnp.zeros((x.shape[1], t.shape[1])), "b": jnp.zeros((t.shape[1],))}
    (theta, _), _ = jax.lax.scan(body, (theta0, opt.init(theta0)), None, length=steps)
    return theta["W"], theta["b"]


def linear_probe_accuracy(
    h: Any,
    y: Any,
    *,
    h_eval: Any = None,
    y_eval: Any = None,
    steps: int = 500,
    learning_rate: float = 0.05,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Linear classifier probe: softmax regression on frozen features ``h``.

    Fitted by full-batch Adam on standardised features, without regularisation (the paper
    reports the probes' *training* accuracy, i.e. linear separability). Nothing flows back
    into the network: ``h`` is an array.

    Returns:
        ``{"train": accuracy on (h, y)}`` plus ``"eval"`` if ``h_eval, y_eval`` are given.

    Example:
        >>> h = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
        >>> linear_probe_accuracy(h, np.array([0, 1, 0, 1]))["train"]
        1.0
    """
    h = np.asarray(h, np.float32).reshape(len(h), -1)
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(h),):
        raise ValueError(
            f"linear_probe_accuracy: `y` must be integer labels of shape ({len(h)},), got "
            f"{y.dtype} {y.shape}"
        )
    k = int(num_classes if num_classes is not None else y.max() + 1)
    x = jnp.asarray(_standardise(h, h))
    W, b = _fit_softmax_regression(x, jax.nn.one_hot(jnp.asarray(y), k), int(steps),
                                   float(learning_rate))  # fmt: skip
    theta = {"W": W, "b": b}

    def acc(xx, yy):
        return float(jnp.mean(jnp.argmax(xx @ theta["W"] + theta["b"], -1) == yy))

    out = {"train": acc(x, jnp.asarray(y))}
    if h_eval is not None:
        he = np.asarray(h_eval, np.float32).reshape(len(h_eval), -1)
        out["eval"] = acc(jnp.asarray(_standardise(he, h)), jnp.asarray(np.asarray(y_eval)))
    return out


def linear_regressor_mse(h: Any, x: Any, *, ridge: float = 1e-6) -> float:
    """Linear regressor probe: how well a linear map (with bias) recovers the input ``x``.

    Least squares from the features ``h`` to the inputs; returns the residual squared
    error summed over input dimensions and averaged over examples (the paper plots an
    unnormalised MSE; higher means more non-linear processing so far). ``ridge`` (relative
    to the mean feature variance) keeps rank-deficient layers (dead units) solvable.

    Example:
        >>> h = np.array([[0.0], [1.0], [2.0]]); x = 3 * h + 1
        >>> round(linear_regressor_mse(h, x), 6)
        0.0
    """
    h = np.asarray(h, np.float64).reshape(len(h), -1)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(h) != len(x):
        raise ValueError(
            f"linear_regressor_mse: `h` and `x` need the same number of rows, got "
            f"{len(h)} and {len(x)}"
        )
    hc = h - h.mean(axis=0)
    xc = x - x.mean(axis=0)
    gram = hc.T @ hc
    lam = ridge * max(float(np.trace(gram)) / max(gram.shape[0], 1), 1e-300)
    W = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), hc.T @ xc)
    r = xc - hc @ W
    return float(np.mean(np.sum(r**2, axis=1)))


# --------------------------------------------------------------------------------------
# Weight norms (Fig. 5).


def weight_norms(params: Sequence[dict], *, hidden_only: bool = True) -> np.ndarray:
    """Normalised squared Frobenius norms ``‖W_l‖²_F / Σ_j ‖W_j‖²_F`` (Fig. 5).

    Args:
        params: per-stage parameter dicts with a ``"W"`` entry (dense stages).
        hidden_only: leave out the last stage (the output layer), as the paper plots the
            hidden layers only.

    Example:
        >>> weight_norms([{"W": np.ones((1, 1))}, {"W": np.ones((1, 3))}, {"W": np.ones(9)}])
        array([0.25, 0.75])
    """
    stages = list(params)[:-1] if hidden_only else list(params)
    if not stages or any("W" not in p for p in stages):
        raise ValueError(
            "weight_norms: `params` must be per-stage dicts with a 'W' entry (dense stages)"
            + (" and at least two stages when hidden_only=True" if hidden_only else "")
        )
    sq = np.array([float(np.sum(np.square(np.asarray(p["W"], np.float64)))) for p in stages])
    total = sq.sum()
    if total == 0:
        raise ValueError("weight_norms: every weight matrix is zero; the norms are undefined")
    return sq / total


# --------------------------------------------------------------------------------------
# SG vs true gradient.


def _flat_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    a, b = a.reshape(-1), b.reshape(-1)
    denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(denom > 0, jnp.dot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def gradient_cosines(
    net: Network,
    rule: UpdateRule,
    rule_state: RuleState,
    params: Any,
    x: Any,
    y: Any,
    loss: loss_lib.Loss | str,
) -> jax.Array:
    """Cosine between the rule's signal δ̂_i and the true ∂ℓ/∂h_i at each hidden boundary.

    The per-example signals of the whole batch are flattened into one vector per boundary
    (as ``train.make_step(..., cosine=True)`` does), so the cosine weighs examples by their
    gradient norm. A zero signal (a fresh, zero-initialised SG) gives 0. Shape ``(N-1,)``.

    Example:
        >>> from sgjax import nets, rules
        >>> net = nets.mlp([3, 4, 4, 2])
        >>> params = net.init(jax.random.key(0))
        >>> rule = rules.backprop()
        >>> c = gradient_cosines(net, rule, rule.init(jax.random.key(1), net), params,
        ...                      jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1]), "xent")
        >>> np.round(np.asarray(c), 5).tolist()
        [1.0, 1.0]
    """
    loss = loss_lib.get(loss)
    x, y = jnp.asarray(x), jnp.asarray(y)
    out = rule.gradients(rule_state, net, params, x, y, loss)
    true = exact_signals(net, params, x, y, loss)
    if net.depth < 2:
        return jnp.zeros((0,))
    return jnp.stack([_flat_cosine(d, t) for d, t in zip(out.signals[:-1], true[:-1])])
