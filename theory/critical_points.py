"""Critical points of the SG system: §2.1–2.3 of paper.md, items 1–3 of §6.

* Linear SG is exact for an affine upper network with MSE (item 1): the true
  ``∂L/∂h = (p − y)Wᵀ/n`` is linear in ``(h, y)``, so a least-squares fit of
  ``SG(h, y) = hA + yB + C`` recovers ``A = WWᵀ/n``, ``B = −Wᵀ/n``, ``C = bWᵀ/n``.
* Proposition 1 (item 2): at a backprop optimum of a deep linear MSE network the
  three critical-point conditions of the SG system hold with the fitted SG.
* Appendix A (item 3): a constant SG ``c`` on ``L = Σ|ax + b|`` over {−2, −1, 1, 2}
  makes the whole region ``{|b| < |a|, c = 0}`` stationary, although ``∂L/∂a = ±6``.

Negative controls: an SG without the label (item 1), log loss instead of MSE (item 2:
``σ(p) − y`` is not linear in ``(h, y)``), data with ``Σx ≠ 0`` (Appendix A).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from theory._common import fit_linear_sg, np_orthonormal, rel, rng, x64
from theory.record import Claim, at_most, control, identity

Layers = list[tuple[jax.Array, jax.Array]]

# --------------------------------------------------------------------------- item 1


def affine_instances(
    g: np.random.Generator, instances: int, n: int, m: int, o: int
) -> tuple[np.ndarray, ...]:
    """Batches of ``(h, y, W, b)``: an affine upper network ``p = hW + b`` and targets.

    Example:
        >>> h, y, W, b = affine_instances(np.random.default_rng(0), 2, 8, 3, 2)
        >>> h.shape, y.shape, W.shape, b.shape
        ((2, 8, 3), (2, 8, 2), (2, 3, 2), (2, 2))
    """
    h = g.normal(size=(instances, n, m))
    y = g.normal(size=(instances, n, o))  # continuous targets: (A, B, C) identifiable
    W = g.normal(size=(instances, m, o)) / np.sqrt(m)
    b = g.normal(size=(instances, o))
    return h, y, W, b


def _linear_sg_exact_one(
    h: jax.Array, y: jax.Array, W: jax.Array, b: jax.Array, label: jax.Array
) -> jax.Array:
    n, m = h.shape
    o = y.shape[1]
    G = (h @ W + b - y) @ W.T / n  # ∂L/∂h for L = ½ mean_i ‖h_i W + b − y_i‖²
    # Without the label the y columns are zero: lstsq's minimum-norm solution is then
    # the fit of hA + C, with the same residual, and the program is shared.
    D, theta = fit_linear_sg(h, label * y, G)
    A, B, C = theta[:m], theta[m : m + o], theta[m + o]
    return jnp.array(
        [rel(D @ theta, G), rel(A, W @ W.T / n), rel(B, -W.T / n), rel(C, b @ W.T / n)]
    )


_linear_sg_exact_runner = jax.jit(jax.vmap(_linear_sg_exact_one, (0, 0, 0, 0, None)))


@x64
def linear_sg_exact(
    key: jax.Array, instances: int, *, label: bool = True, sizes: tuple[int, int, int] = (64, 6, 3)
) -> list[Claim]:
    """Item 1: residual ≤ 1e-10 and (A, B, C) to 1e-8 relative, worst over instances.

    Args:
        key: PRNG key for the instances.
        instances: how many random affine upper networks to check.
        label: False drops ``y`` from the SG (the negative control).
        sizes: ``(n, dim h, dim y)``.

    Returns:
        The records: residual and (A, B, C) rows, or the control row.

    Example:
        >>> [c.passed for c in linear_sg_exact(jax.random.key(0), 2, sizes=(16, 3, 2))]
        [True, True]
    """
    n, m, o = sizes
    data = affine_instances(rng(key), instances, n, m, o)
    errs = _linear_sg_exact_runner(*data, jnp.float64(label))
    worst = jnp.max(errs, axis=0)
    tag = "" if label else "/no-label"
    out = [
        at_most(
            f"linear-sg-exact{tag}/residual",
            "§3 (Prop. 1 ex.)",
            worst[0],
            1e-10,
            instances,
            f"n={n}, dim h={m}, dim y={o}",
        )
    ]
    if not label:
        return [control(out[0], "SG(h) = hA + C without the label")]
    out.append(
        at_most(
            "linear-sg-exact/A,B,C",
            "§3 (Prop. 1 ex.)",
            jnp.max(worst[1:]),
            1e-8,
            instances,
            "A=WWᵀ/n, B=−Wᵀ/n, C=bWᵀ/n",
        )
    )
    # Both hold by construction: the set-up's ∂L/∂h = (hW + b − y)Wᵀ/n is affine in
    # (h, y), so least squares fits it exactly; no sgjax code runs.
    return [identity(c, _WHY_AFFINE) for c in out]


_WHY_AFFINE = (
    "∂L/∂h = (hW + b − y)Wᵀ/n is affine in (h, y) by the set-up, so least squares fits "
    "it exactly (residual 0, A, B, C read off); runs no sgjax code"
)


# --------------------------------------------------------------------------- item 2


def _np_forward(layers: list[tuple[np.ndarray, np.ndarray]], h: np.ndarray) -> np.ndarray:
    for W, b in layers:
        h = h @ W + b
    return h


def deep_linear_at_optimum(
    g: np.random.Generator, instances: int, n: int, k: int, width: int, depth: int, loss: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Batches of deep linear nets whose function is the global optimum (OLS or logistic MLE).

    Hidden layers are random scaled orthogonal maps (well conditioned); the last layer
    is solved so that the whole network equals the optimal affine map. Returns the
    layers (each ``(W, b)`` with a leading instance axis), inputs and targets.

    Example:
        >>> layers, X, Y = deep_linear_at_optimum(np.random.default_rng(0), 2, 20, 3, 4, 3, "mse")
        >>> len(layers), X.shape, Y.shape
        (3, (2, 20, 3), (2, 20, 1))
    """
    X = g.normal(size=(instances, n, k))
    Xb = np.concatenate([X, np.ones((instances, n, 1))], axis=2)
    w_true = g.normal(size=(instances, k + 1, 1))
    if loss == "mse":
        Y = Xb @ w_true + 0.5 * g.normal(size=(instances, n, 1))
        w_opt = np.linalg.solve(np.swapaxes(Xb, 1, 2) @ Xb, np.swapaxes(Xb, 1, 2) @ Y)
    else:
        # Labels drawn from a logistic model with small weights: the classes overlap
        # (not separable), so the MLE exists and Newton's method converges.
        z = -0.5 * Xb @ w_true
        Y = (g.uniform(size=(instances, n, 1)) < 1 / (1 + np.exp(z))).astype(float)
        w_opt = np.zeros((instances, k + 1, 1))
        for _ in range(40):  # Newton's method on the convex log loss
            s = 1 / (1 + np.exp(-Xb @ w_opt))
            grad = np.swapaxes(Xb, 1, 2) @ (s - Y)
            H = np.swapaxes(Xb, 1, 2) @ (Xb * (s * (1 - s)))
            w_opt = w_opt - np.linalg.solve(H, grad)
    dims = [k] + [width] * (depth - 1)
    layers = []
    for i in range(depth - 1):
        scale = g.uniform(0.7, 1.4, size=(instances, 1, 1))
        W = scale * np_orthonormal(g, dims[i], dims[i + 1], instances)
        if i == 0 and width < k:
            # A bottleneck: h cannot span the input, so the optimum is reachable only if
            # the first layer's column space holds the optimal weights' directions.
            o = w_opt.shape[2]
            if width < o:
                raise ValueError(f"`width` ({width}) must be ≥ the output dim ({o})")
            M = np.concatenate([w_opt[:, :k], g.normal(size=(instances, k, width - o))], 2)
            W = scale * np.linalg.qr(M)[0]
        b = 0.3 * g.normal(size=(instances, dims[i + 1]))
        layers.append((W, b))

    def fwd(h: np.ndarray) -> np.ndarray:
        for W, b in layers:
            h = h @ W + b[:, None, :]
        return h

    c = fwd(np.zeros((instances, 1, k)))
    M = fwd(np.broadcast_to(np.eye(k), (instances, k, k))) - c
    W_last = np.linalg.pinv(M) @ w_opt[:, :k]
    b_last = w_opt[:, k] - (c @ W_last)[:, 0]
    layers.append((W_last, b_last))
    return layers, X, Y


def _forward(layers: Layers, h: jax.Array) -> jax.Array:
    for W, b in layers:
        h = h @ W + b
    return h


def _loss(p: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    n = p.shape[0]
    if loss == "mse":
        return 0.5 * jnp.sum((p - y) ** 2) / n
    return jnp.sum(jnp.logaddexp(0.0, p) - y * p) / n  # binary log loss on a logit


def _norm(tree: object) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def _prop1_one(
    layers: Layers, X: jax.Array, Y: jax.Array, label: jax.Array, j: int, loss: str
) -> jax.Array:
    lower, upper = layers[:j], layers[j:]
    h, vjp_lower = jax.vjp(lambda lo: _forward(lo, X), lower)

    def upper_loss(up: Layers, h: jax.Array) -> jax.Array:
        return _loss(_forward(up, h), Y, loss)

    g_upper, G = jax.grad(upper_loss, argnums=(0, 1))(upper, h)
    D, theta = fit_linear_sg(h, label * Y, G)  # label 0: the y columns are zero
    SG = D @ theta
    (g_lower_sg,) = vjp_lower(SG)
    g_sg = 2.0 * D.T @ (SG - G)  # ∂L_SG/∂Θ for L_SG = ‖SG − ∂L/∂h‖²
    (g_lower_true,) = vjp_lower(G)
    return jnp.array(
        [
            _norm(g_upper),
            _norm(g_lower_sg),
            _norm(g_sg),
            _norm(g_lower_true),
            _norm(SG),
            _norm(SG - G) / jnp.maximum(_norm(G), 1e-300),
        ]
    )


@functools.cache
def _prop1_runner(j: int, loss: str):
    fn = functools.partial(_prop1_one, j=j, loss=loss)
    return jax.jit(jax.vmap(fn, (0, 0, 0, None)))


@x64
def prop1_critical_points(
    key: jax.Array,
    instances: int,
    *,
    loss: str = "mse",
    label: bool = True,
    sizes: tuple[int, int, int, int, int] = (64, 6, 3, 11, 5),
) -> list[Claim]:
    """Item 2: at a backprop optimum the three SG critical-point conditions hold.

    ``sizes = (n, k, width, depth, j)``: n points in k dims, ``depth`` affine layers
    (10 hidden + output by default) of the given width, the SG after layer ``j``.
    The default is a *bottleneck* (width 3 < k = 6): only there can a wrong SG show.
    If ``h`` spans the input (width ≥ k) the batch least-squares residual ``G − SG`` is
    orthogonal to every lower layer's input, so the fitted SG gives exactly the true
    lower gradient (0) whatever the loss, and the check could not fail.

    ``loss="log"`` (negative control, same model): the linear SG cannot represent
    ``∂L/∂p = σ(p) − y`` and ``‖SG·∂h/∂θ_{<h}‖`` stays well above 0.
    ``label=False`` drops ``y`` from the SG: at a critical point the label-free
    least-squares SG is then *exactly 0* (``p − y`` is orthogonal to ``[h, 1]``), so the
    three conditions hold trivially; that row is an identity, not evidence.

    Example:
        >>> [c.passed for c in prop1_critical_points(jax.random.key(0), 2, sizes=(24, 3, 2, 3, 1))]
        [True]
    """
    if loss not in ("mse", "log"):
        raise ValueError(f"`loss` must be 'mse' or 'log', got {loss!r}")
    n, k, width, depth, j = sizes
    layers, X, Y = deep_linear_at_optimum(rng(key), instances, n, k, width, depth, loss)
    g = np.asarray(_prop1_runner(j, loss)(layers, X, Y, jnp.float64(label)))
    worst = np.max(g, axis=0)
    shape = "bottleneck" if width < k else "wide"
    detail = (
        f"max ‖∂L/∂θ>h‖={worst[0]:.1e}, ‖SG·∂h/∂θ<h‖={worst[1]:.1e}, "
        f"‖∂L_SG/∂θ_SG‖={worst[2]:.1e} (true ‖∂L/∂θ<h‖={worst[3]:.1e}; SG residual "
        f"‖SG − ∂L/∂h‖/‖∂L/∂h‖ ≤ {worst[5]:.1e}); {depth - 1} hidden layers of width "
        f"{width} ({shape}: k={k}), SG after layer {j}, n={n}"
    )
    tag = f"/{shape}"
    if not label:
        return [
            identity(
                at_most(
                    f"prop1/no-label-SG≡0{tag}",
                    "Prop. 1",
                    worst[4],
                    1e-10,
                    instances,
                    "max ‖SG‖ of the label-free least-squares SG at the optimum (so the "
                    "conditions hold trivially; its residual is "
                    f"{np.min(g[:, 5]):.2f}–{worst[5]:.2f} of ‖∂L/∂h‖); " + detail,
                )
            )
        ]
    if loss == "mse":
        # True by the normal equations: under MSE with an affine upper network ∂L/∂h is
        # affine in (h, y), so the least-squares SG *is* ∂L/∂h (residual 0, ∂L_SG/∂θ_SG
        # = 0) and SG·∂h/∂θ<h is backprop's gradient, 0 at backprop's optimum.
        return [
            identity(
                at_most(f"prop1/critical-point{tag}", "Prop. 1", np.max(worst[:3]), 1e-8,
                        instances, detail),
                "the normal equations: under MSE ∂L/∂h is affine in (h, y), so the "
                "least-squares SG equals it and the SG system's conditions are backprop's; "
                "the log-loss control beside it is the informative row",
            )
        ]  # fmt: skip
    # Log loss: the backprop optimum is still critical for L (true gradient ~ 0), but
    # not for the SG system; report the smallest SG-driven gradient over instances.
    least = float(np.min(g[:, 1]))
    return [
        control(
            at_most(f"prop1/critical-point{tag}/log-loss", "Prop. 1", least, 1e-8, instances,
                    detail),
            "log loss in the same model: SG cannot produce ∂L/∂h; min over instances of "
            "‖SG·∂h/∂θ<h‖",
        )
    ]  # fmt: skip


# --------------------------------------------------------------------------- item 3

_X_APPENDIX = (-2.0, -1.0, 1.0, 2.0)


def _appendix_sg_run(
    abc: jax.Array, x: jax.Array, steps: jax.Array, lr: float = 0.01, lr_sg: float = 0.1
) -> jax.Array:
    """Full-batch SG training on L = Σ|ax + b| with a constant SG output c."""

    def step(_: jax.Array, abc: jax.Array) -> jax.Array:
        a, b, c = abc
        delta = jnp.sign(a * x + b)  # true ∂L_i/∂p_i
        # The lower net follows the synthetic gradient c at every point.
        a_new = a - lr * jnp.sum(c * x)
        b_new = b - lr * jnp.sum(c * jnp.ones_like(x))
        c_new = c - lr_sg * jnp.sum(2.0 * (c - delta))  # L_SG = Σ_i (c − δ_i)²
        return jnp.stack([a_new, b_new, c_new])

    return jax.lax.fori_loop(0, steps, step, abc)


def _appendix_bp_run(ab: jax.Array, x: jax.Array, steps: int, lr: float = 0.01) -> jax.Array:
    def step(_: jax.Array, ab: jax.Array) -> jax.Array:
        a, b = ab
        s = jnp.sign(a * x + b)
        return jnp.stack([a - lr * jnp.sum(s * x), b - lr * jnp.sum(s)])

    return jax.lax.fori_loop(0, steps, step, ab)


_appendix_sg = jax.jit(jax.vmap(_appendix_sg_run, (0, None, None)))
_appendix_bp = jax.jit(_appendix_bp_run, static_argnums=2)


@x64
def appendix_a(
    key: jax.Array, instances: int, *, data: tuple[float, ...] = _X_APPENDIX, steps: int = 5000
) -> list[Claim]:
    """Item 3: SG creates new critical points; the stationary region {|b| < |a|, c = 0}.

    Random starts (a, b) with |b| < |a| and any c: after ``steps`` full-batch SG steps
    ``a`` has not moved at all (bit-exact), ``c`` → 0, yet ``|∂L/∂a| = 6`` there.
    With ``data`` whose sum is not 0 (negative control) ``a`` moves.

    Example:
        >>> [c.passed for c in appendix_a(jax.random.key(0), 4, steps=500)]
        [True, True, True, True, True]
    """
    x = jnp.asarray(data, jnp.float64)
    if x.shape != (4,):
        raise ValueError(f"`data` must hold 4 points, got {len(data)}")
    g = rng(key)
    a = g.uniform(0.2, 2.0, instances) * np.where(g.uniform(size=instances) < 0.5, 1.0, -1.0)
    b = g.uniform(-0.95, 0.95, instances) * np.abs(a)
    c = g.uniform(-1.0, 1.0, instances)
    starts = np.stack([a, b, c], axis=1)
    # The random starts plus the paper's two starts, in one batch.
    batch = np.concatenate([starts, [[1.0, 0.5, 0.0], [0.3, -0.2, 0.7]]])
    ends_all = np.asarray(_appendix_sg(batch, x, steps))
    ends, paper_start, other = ends_all[:instances], ends_all[-2], ends_all[-1]
    moved_a = np.max(np.abs(ends[:, 0] - starts[:, 0]))
    c_end = np.max(np.abs(ends[:, 2]))
    xs = np.asarray(data)
    true_da = np.array([np.sum(np.sign(e[0] * xs + e[1]) * xs) for e in ends])
    # The paper's point (a, b, c) = (1, 0, 0): SG update exactly 0, ∂L/∂a = 6.
    at_1 = np.asarray(_appendix_sg(np.array([[1.0, 0.0, 0.0]]), x, 1))[0]
    sg_update = np.max(np.abs(at_1 - np.array([1.0, 0.0, 0.0])))
    bp = np.asarray(_appendix_bp(jnp.array([1.0, 0.5]), x, steps))
    da_at_1 = float(np.sum(np.sign(xs) * xs))
    balanced = sum(data) == 0
    tag = "" if balanced else "/unbalanced-data"
    stationary = at_most(
        f"appendixA{tag}/a-frozen",
        "App. A",
        moved_a,
        0.0,
        instances,
        f"max |a_T − a_0| over starts with |b|<|a|, {steps} steps; max |c_T|={c_end:.1e}; "
        f"min |∂L/∂a| there={np.min(np.abs(true_da)):.3g} (not critical for L)",
    )
    if not balanced:
        return [control(stationary, f"data {data} with Σx ≠ 0")]
    why_frozen = (
        "a's SG update is −lr·c·Σx and the data have Σx = 0, so a cannot move "
        "(bit-exact); hand-written model, no sgjax code"
    )
    return [
        identity(
            at_most(
                "appendixA/(1,0,0)-SG-update",
                "App. A",
                sg_update,
                0.0,
                1,
                f"SG update at (a,b,c)=(1,0,0) is exactly 0 while ∂L/∂a = {da_at_1:g}",
            ),
            "c = 0 sends nothing down, and c's own update Σ(c − sign(ax + b)) is 0 on the "
            "symmetric data",
        ),
        identity(stationary, why_frozen),
        at_most(
            "appendixA/c→0-in-region",
            "App. A",
            c_end,
            1e-6,
            instances,
            f"max |c_T| over starts, {steps} steps",
        ),
        identity(
            at_most(
                "appendixA/paper-start",
                "App. A",
                max(abs(paper_start[0] - 1.0), abs(paper_start[2])),
                1e-6,
                1,
                f"SG from (1, 0.5, 0) ends at ({paper_start[0]:.6g}, {paper_start[1]:.6g}, "
                f"{paper_start[2]:.2g}); from (0.3, −0.2, 0.7) at ({other[0]:.4g}, "
                f"{other[1]:.4g}, {other[2]:.2g})",
            ),
            why_frozen + "; c starts at 0 and stays (Σ sign(ax + b) = 0 there)",
        ),
        at_most(
            "appendixA/backprop-reaches-0",
            "App. A",
            max(abs(bp[0]) / 0.06, abs(bp[1]) / 1e-6),
            1.0,
            1,
            f"backprop from (1, 0.5) ends at a={bp[0]:.3g}, b={bp[1]:.2g} after {steps} steps "
            "(target |a|≤0.06, |b|≤1e-6; measured = max ratio to those)",
        ),
    ]
