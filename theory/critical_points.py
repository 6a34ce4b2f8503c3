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

import jax
import jax.numpy as jnp

from theory._common import fit_linear_sg, keys, orthonormal, rel, x64
from theory.record import Claim, at_most, control

# --------------------------------------------------------------------------- item 1


def _affine_instance(key: jax.Array, n: int, m: int, o: int) -> tuple[jax.Array, ...]:
    kh, ky, kw, kb = jax.random.split(key, 4)
    h = jax.random.normal(kh, (n, m))
    y = jax.random.normal(ky, (n, o))  # continuous targets: (A, B, C) identifiable
    W = jax.random.normal(kw, (m, o)) / jnp.sqrt(m)
    b = jax.random.normal(kb, (o,))
    return h, y, W, b


def _linear_sg_exact_one(key: jax.Array, n: int, m: int, o: int, label: bool) -> jax.Array:
    h, y, W, b = _affine_instance(key, n, m, o)
    G = (h @ W + b - y) @ W.T / n  # ∂L/∂h for L = ½ mean_i ‖h_i W + b − y_i‖²
    D, theta = fit_linear_sg(h, y, G, label=label)
    residual = rel(D @ theta, G)
    if not label:
        return jnp.array([residual, jnp.nan, jnp.nan, jnp.nan])
    A, B, C = theta[:m], theta[m : m + o], theta[m + o]
    return jnp.array([residual, rel(A, W @ W.T / n), rel(B, -W.T / n), rel(C, b @ W.T / n)])


@x64
def linear_sg_exact(
    key: jax.Array, instances: int, *, label: bool = True, sizes: tuple[int, int, int] = (64, 6, 3)
) -> list[Claim]:
    """Item 1: residual ≤ 1e-10 and (A, B, C) to 1e-8 relative, worst over instances."""
    n, m, o = sizes
    with jax.enable_x64(True):
        errs = jax.jit(
            jax.vmap(lambda k: _linear_sg_exact_one(k, n, m, o, label)), static_argnums=()
        )(keys(key, instances))
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
    if label:
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
    return out


# --------------------------------------------------------------------------- item 2


def _deep_linear_at_optimum(
    key: jax.Array, n: int, k: int, width: int, depth: int, loss: str
) -> tuple[list[tuple[jax.Array, jax.Array]], jax.Array, jax.Array]:
    """A deep linear net whose function is the global optimum (OLS or logistic MLE).

    Hidden layers are random scaled orthogonal maps (well conditioned); the last
    layer is solved so that the whole network equals the optimal affine map.
    """
    kx, kt, kn, kl = jax.random.split(key, 4)
    X = jax.random.normal(kx, (n, k))
    Xb = jnp.concatenate([X, jnp.ones((n, 1))], axis=1)
    w_true = jax.random.normal(kt, (k + 1, 1))
    if loss == "mse":
        Y = Xb @ w_true + 0.5 * jax.random.normal(kn, (n, 1))
        w_opt = jnp.linalg.lstsq(Xb, Y)[0]
    else:
        # Labels drawn from a logistic model: classes overlap, so the MLE exists.
        Y = (jax.random.uniform(kn, (n, 1)) < jax.nn.sigmoid(Xb @ w_true)).astype(X.dtype)

        def newton(w: jax.Array, _: None) -> tuple[jax.Array, None]:
            s = jax.nn.sigmoid(Xb @ w)
            g = Xb.T @ (s - Y)
            H = Xb.T @ (Xb * (s * (1 - s)))
            return w - jnp.linalg.solve(H, g), None

        w_opt, _ = jax.lax.scan(newton, jnp.zeros((k + 1, 1)), None, length=40)
    layers = []
    dims = [k] + [width] * (depth - 1)
    lkeys = jax.random.split(kl, 3 * depth)
    for i in range(depth - 1):
        scale = jax.random.uniform(lkeys[3 * i], (), minval=0.7, maxval=1.4)
        W = scale * orthonormal(lkeys[3 * i + 1], dims[i], dims[i + 1])
        b = 0.3 * jax.random.normal(lkeys[3 * i + 2], (dims[i + 1],))
        layers.append((W, b))
    c = _forward(layers, jnp.zeros((1, k)))
    M = _forward(layers, jnp.eye(k)) - c
    W_last = jnp.linalg.pinv(M) @ w_opt[:k]
    b_last = w_opt[k] - (c @ W_last)[0]
    layers.append((W_last, b_last))
    return layers, X, Y


def _forward(layers: list[tuple[jax.Array, jax.Array]], h: jax.Array) -> jax.Array:
    for W, b in layers:
        h = h @ W + b
    return h


def _loss(p: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    n = p.shape[0]
    if loss == "mse":
        return 0.5 * jnp.sum((p - y) ** 2) / n
    return jnp.sum(jnp.logaddexp(0.0, p) - y * p) / n  # binary log loss on a logit


def _prop1_one(
    key: jax.Array, n: int, k: int, width: int, depth: int, j: int, loss: str
) -> jax.Array:
    layers, X, Y = _deep_linear_at_optimum(key, n, k, width, depth, loss)
    lower, upper = layers[:j], layers[j:]
    h, vjp_lower = jax.vjp(lambda lo: _forward(lo, X), lower)

    def upper_loss(up: list[tuple[jax.Array, jax.Array]], h: jax.Array) -> jax.Array:
        return _loss(_forward(up, h), Y, loss)

    g_upper, G = jax.grad(upper_loss, argnums=(0, 1))(upper, h)
    D, theta = fit_linear_sg(h, Y, G)
    SG = D @ theta
    (g_lower_sg,) = vjp_lower(SG)
    g_sg = 2.0 * D.T @ (SG - G)  # ∂L_SG/∂Θ for L_SG = ‖SG − ∂L/∂h‖²

    def norm(tree: object) -> jax.Array:
        return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))

    (g_lower_true,) = vjp_lower(G)
    return jnp.array([norm(g_upper), norm(g_lower_sg), norm(g_sg), norm(g_lower_true)])


@x64
def prop1_critical_points(
    key: jax.Array,
    instances: int,
    *,
    loss: str = "mse",
    sizes: tuple[int, int, int, int, int] = (64, 3, 5, 11, 5),
) -> list[Claim]:
    """Item 2: at a backprop optimum the three SG critical-point conditions hold.

    ``sizes = (n, k, width, depth, j)``: n points in k dims, ``depth`` affine layers
    (10 hidden + output by default) of the given width, the SG after layer ``j``.
    With ``loss="log"`` (negative control; use it on the shallow model,
    ``sizes=(n, k, 1, 1, 1)``, SG between logit and loss) the linear SG cannot represent
    ``∂L/∂p = σ(p) − y`` and ``‖SG·∂h/∂θ_{<h}‖`` stays well above 0.

    Why the control is shallow: if the lower network is linear and ``h`` spans the
    input (width ≥ k), the batch least-squares residual ``G − SG`` is orthogonal to
    every lower layer's input, so the fitted SG gives *exactly* the true lower
    gradient whatever the loss. Only a lower net whose ``h`` does not span its inputs
    (the logit of a shallow model; or a non-linear one) exposes the failure.
    """
    n, k, width, depth, j = sizes
    with jax.enable_x64(True):
        f = jax.jit(jax.vmap(lambda kk: _prop1_one(kk, n, k, width, depth, j, loss)))
        g = f(keys(key, instances))
        worst = jnp.max(g, axis=0)
    detail = (
        f"max ‖∂L/∂θ>h‖={float(worst[0]):.1e}, ‖SG·∂h/∂θ<h‖={float(worst[1]):.1e}, "
        f"‖∂L_SG/∂θ_SG‖={float(worst[2]):.1e} (true ‖∂L/∂θ<h‖={float(worst[3]):.1e}); "
        f"{depth - 1} hidden layers, SG after layer {j}"
    )
    if loss == "mse":
        return [
            at_most("prop1/critical-point", "Prop. 1", jnp.max(worst[:3]), 1e-8, instances, detail)
        ]
    # Log loss: the backprop optimum is still critical for L (true gradient ~ 0), but
    # not for the SG system; report the smallest SG-driven gradient over instances.
    least = float(jnp.min(g[:, 1]))
    return [
        control(
            at_most("prop1/log-loss", "Prop. 1", least, 1e-8, instances, detail),
            "log loss: SG cannot produce ∂L/∂h; min over instances of ‖SG·∂h/∂θ<h‖",
        )
    ]


# --------------------------------------------------------------------------- item 3

_X_APPENDIX = (-2.0, -1.0, 1.0, 2.0)


def _appendix_sg_run(
    abc: jax.Array, x: jax.Array, steps: int, lr: float = 0.01, lr_sg: float = 0.1
) -> jax.Array:
    """Full-batch SG training on L = Σ|ax + b| with a constant SG output c."""

    def step(abc: jax.Array, _: None) -> tuple[jax.Array, None]:
        a, b, c = abc
        delta = jnp.sign(a * x + b)  # true ∂L_i/∂p_i
        # The lower net follows the synthetic gradient c at every point.
        a_new = a - lr * jnp.sum(c * x)
        b_new = b - lr * jnp.sum(c * jnp.ones_like(x))
        c_new = c - lr_sg * jnp.sum(2.0 * (c - delta))  # L_SG = Σ_i (c − δ_i)²
        return jnp.stack([a_new, b_new, c_new]), None

    out, _ = jax.lax.scan(step, abc, None, length=steps)
    return out


def _appendix_bp_run(ab: jax.Array, x: jax.Array, steps: int, lr: float = 0.01) -> jax.Array:
    def step(ab: jax.Array, _: None) -> tuple[jax.Array, None]:
        a, b = ab
        s = jnp.sign(a * x + b)
        return jnp.stack([a - lr * jnp.sum(s * x), b - lr * jnp.sum(s)]), None

    out, _ = jax.lax.scan(step, ab, None, length=steps)
    return out


@x64
def appendix_a(
    key: jax.Array, instances: int, *, data: tuple[float, ...] = _X_APPENDIX, steps: int = 5000
) -> list[Claim]:
    """Item 3: SG creates new critical points; the stationary region {|b| < |a|, c = 0}.

    Random starts (a, b) with |b| < |a| and any c: after ``steps`` full-batch SG steps
    ``a`` has not moved at all (bit-exact), ``c`` → 0, yet ``|∂L/∂a| = 6`` there.
    With ``data`` whose sum is not 0 (negative control) ``a`` moves.
    """
    with jax.enable_x64(True):
        x = jnp.asarray(data)
        ka, kb, kc = jax.random.split(key, 3)
        a = jax.random.uniform(ka, (instances,), minval=0.2, maxval=2.0)
        a = a * jnp.where(jax.random.bernoulli(kc, 0.5, (instances,)), 1.0, -1.0)
        b = jax.random.uniform(kb, (instances,), minval=-0.95, maxval=0.95) * jnp.abs(a)
        c = jax.random.uniform(kc, (instances,), minval=-1.0, maxval=1.0)
        starts = jnp.stack([a, b, c], axis=1)
        ends = jax.jit(jax.vmap(lambda s: _appendix_sg_run(s, x, steps)))(starts)
        moved_a = jnp.max(jnp.abs(ends[:, 0] - starts[:, 0]))
        c_end = jnp.max(jnp.abs(ends[:, 2]))
        true_da = jax.vmap(lambda e: jnp.sum(jnp.sign(e[0] * x + e[1]) * x))(ends)
        # The paper's point (a, b, c) = (1, 0, 0): SG update exactly 0, ∂L/∂a = 6.
        at_1 = _appendix_sg_run(jnp.array([1.0, 0.0, 0.0]), x, 1)
        sg_update = jnp.max(jnp.abs(at_1 - jnp.array([1.0, 0.0, 0.0])))
        paper_start = _appendix_sg_run(jnp.array([1.0, 0.5, 0.0]), x, steps)
        bp = _appendix_bp_run(jnp.array([1.0, 0.5]), x, steps)
        other = _appendix_sg_run(jnp.array([0.3, -0.2, 0.7]), x, steps)
        da_at_1 = float(jnp.sum(jnp.sign(x) * x))
    balanced = sum(data) == 0
    tag = "" if balanced else "/unbalanced-data"
    stationary = at_most(
        f"appendixA{tag}/a-frozen",
        "App. A",
        moved_a,
        0.0,
        instances,
        f"max |a_T − a_0| over starts with |b|<|a|; max |c_T|={float(c_end):.1e}; "
        f"min |∂L/∂a| there={float(jnp.min(jnp.abs(true_da))):.3g} (not critical for L)",
    )
    if not balanced:
        return [control(stationary, f"data {data} with Σx ≠ 0")]
    return [
        at_most(
            "appendixA/(1,0,0)-SG-update",
            "App. A",
            sg_update,
            0.0,
            1,
            f"SG update at (a,b,c)=(1,0,0) is exactly 0 while ∂L/∂a = {da_at_1:g}",
        ),
        stationary,
        at_most(
            "appendixA/c→0-in-region", "App. A", c_end, 1e-6, instances, "max |c_T| over starts"
        ),
        at_most(
            "appendixA/paper-start",
            "App. A",
            max(abs(float(paper_start[0]) - 1.0), abs(float(paper_start[2]))),
            1e-6,
            1,
            f"SG from (1, 0.5, 0) ends at ({float(paper_start[0]):.6g}, "
            f"{float(paper_start[1]):.6g}, {float(paper_start[2]):.2g}); from (0.3, −0.2, 0.7) "
            f"at ({float(other[0]):.4g}, {float(other[1]):.4g}, {float(other[2]):.2g})",
        ),
        at_most(
            "appendixA/backprop-reaches-0",
            "App. A",
            max(abs(float(bp[0])) / 0.06, abs(float(bp[1])) / 1e-6),
            1.0,
            1,
            f"backprop from (1, 0.5) ends at a={float(bp[0]):.3g}, b={float(bp[1]):.2g} "
            "(target |a|≤0.06, |b|≤1e-6; measured = max ratio to those)",
        ),
    ]
