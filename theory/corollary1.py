"""Corollary 1: deep linear MSE network, linear SG between hidden layers, gated step.

paper.md §2.6, item 17 of §6. The main model may move only while the SG error ``e``
(after the SG's own update) satisfies equation (2),
``‖e·∂h/∂θ_{<h}‖ < ⅓‖∂L/∂θ_{<h}‖`` — we gate on the error *of the update* itself,
which is what the proof bounds (the paper bounds it by ``‖e‖·‖∂h/∂θ_{<h}‖``, a
stricter gate). Then ``μ = ε``, else ``μ = 0``. The SG ``hA + yB + C`` is zero
initialised and regresses onto the true ``∂L/∂h`` with a normalised step
``ν = 1/λ_max(DᵀD)``, ``D = [h | y | 1]``.

Negative control: the step size as printed, ``μ = ε·max(0, ‖e‖ − …)`` (a sign typo),
moves the model only while tracking is *lost*; it stalls away from the optimum.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from theory._common import keys, orthonormal, x64
from theory.record import Claim, at_most, control

Layers = list[tuple[jax.Array, jax.Array]]


def _forward(layers: Layers, h: jax.Array) -> jax.Array:
    for W, b in layers:
        h = h @ W + b
    return h


def _norm(tree: object) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def _run_one(
    key: jax.Array,
    n: int,
    k: int,
    o: int,
    width: int,
    depth: int,
    j: int,
    steps: int,
    eps: float,
    printed: bool,
) -> jax.Array:
    kx, kt, kn, kl = jax.random.split(key, 4)
    X = jax.random.normal(kx, (n, k))
    Xb = jnp.concatenate([X, jnp.ones((n, 1))], axis=1)
    Y = Xb @ jax.random.normal(kt, (k + 1, o)) + 0.5 * jax.random.normal(kn, (n, o))
    resid = Y - Xb @ jnp.linalg.lstsq(Xb, Y)[0]
    L_opt = 0.5 * jnp.sum(resid**2) / n
    dims = [k] + [width] * (depth - 1) + [o]
    lk = jax.random.split(kl, depth)
    layers = [
        (orthonormal(lk[i], dims[i], dims[i + 1]), jnp.zeros(dims[i + 1])) for i in range(depth)
    ]
    theta_sg = jnp.zeros((width + o + 1, width))

    def loss_up(up: Layers, h: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum((_forward(up, h) - Y) ** 2) / n

    def step(carry: tuple, _: None) -> tuple[tuple, jax.Array]:
        lower, upper, theta_sg = carry
        h, vjp_lower = jax.vjp(lambda lo: _forward(lo, X), lower)
        g_up, G = jax.grad(loss_up, argnums=(0, 1))(upper, h)
        D = jnp.concatenate([h, Y, jnp.ones((n, 1))], axis=1)
        nu = 1.0 / jnp.linalg.eigvalsh(D.T @ D)[-1]
        theta_sg = theta_sg - nu * D.T @ (D @ theta_sg - G)
        SG = D @ theta_sg
        (g_low_true,) = vjp_lower(G)
        (g_low_err,) = vjp_lower(SG - G)
        (g_low_sg,) = vjp_lower(SG)
        tracking = _norm(g_low_err) < _norm(g_low_true) / 3.0  # equation (2)
        open_ = jnp.logical_not(tracking) if printed else tracking
        mu = jnp.where(open_, eps, 0.0)
        lower = jax.tree.map(lambda t, g: t - mu * g, lower, g_low_sg)
        upper = jax.tree.map(lambda t, g: t - mu * g, upper, g_up)
        gap = (loss_up(upper, h) - L_opt) / L_opt  # before this step's update
        return (lower, upper, theta_sg), (open_, gap)

    carry = (layers[:j], layers[j:], theta_sg)
    (lower, upper, _), (opened, gaps) = jax.lax.scan(step, carry, None, length=steps)
    L = 0.5 * jnp.sum((_forward(upper, _forward(lower, X)) - Y) ** 2) / n
    # Gate statistics: the first `early` steps (zero-initialised SG), and the later
    # steps while the loss is still above the optimum (gap > 1e-8 relative); once at
    # the optimum the gradient is at rounding level and (2) cannot be met any more.
    early = 10
    later = (jnp.arange(steps) >= early) & (gaps > 1e-8)
    closed_later = jnp.sum(jnp.where(later, 1.0 - opened, 0.0)) / jnp.maximum(jnp.sum(later), 1)
    return jnp.array([(L - L_opt) / L_opt, 1 - jnp.mean(opened[:early]), closed_later])


@x64
def corollary1(
    key: jax.Array,
    instances: int,
    *,
    printed: bool = False,
    sizes: tuple[int, int, int, int, int, int] = (32, 3, 2, 4, 4, 2),
    steps: int = 4000,
    eps: float = 0.05,
) -> list[Claim]:
    """Item 17: final loss equals the OLS optimum to 1e-4 relative; gate statistics."""
    n, k, o, width, depth, j = sizes
    f = jax.jit(jax.vmap(lambda kk: _run_one(kk, n, k, o, width, depth, j, steps, eps, printed)))
    r = f(keys(key, instances))
    shape = (
        f"{depth - 1} hidden layers of width {width}, SG after layer {j}, {steps} steps, ε={eps}"
    )
    conv = at_most(
        "cor1/gated-reaches-OLS",
        "Cor. 1",
        jnp.max(r[:, 0]),
        1e-4,
        instances,
        f"max (L − L_OLS)/L_OLS; {shape}",
    )
    if printed:
        return [control(conv, "step size as printed (gate sign flipped)")]
    gate = (
        f"; gate closed (μ = 0) on {float(jnp.mean(r[:, 1])):.0%} of the first 10 steps and "
        f"{float(jnp.mean(r[:, 2])):.0%} of later steps before convergence (means): one SG "
        "step per main step, so the gate flickers while the SG catches up"
    )
    return [dataclasses.replace(conv, detail=conv.detail + gate)]
