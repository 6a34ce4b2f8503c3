"""Proposition 2: ε-tracking synthetic gradients give convergence (paper.md §2.5).

* The cosine lemma (item 14): ``‖e‖ ≤ r‖g‖`` with ``r = (1−δ)/(1+δ)`` gives
  ``cos(g, g + e) ≥ δ``; the tight bound is ``√(1 − r²)``.
* Vanishing (relative) SG error (item 15): gradient descent on a least-squares
  problem ``L = ½‖Jθ − y‖²`` whose gradient is corrupted by a random error of norm
  ``(1/3)‖g‖`` still converges to ``θ*``.
* Non-vanishing error (item 16): a constant error ``e`` on ``∂L/∂h`` (``h = Jθ``)
  moves the fixed point to ``θ* − H⁻¹Jᵀe`` (``H = JᵀJ``), linearly in ``ε = ‖e‖``.

Negative controls: the cosine bound with ``‖e‖`` up to ``(1/r)‖g‖``; gradient descent
with a constant error checked against ``θ*``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from theory._common import keys, x64
from theory.record import Claim, at_least, at_most, control


def _unit(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    v = jax.random.normal(key, shape)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _cosine_one(key: jax.Array, dim: int, samples: int, r_scale: float) -> jax.Array:
    kd, kg, ke, ku = jax.random.split(key, 4)
    delta = jax.random.uniform(kd, (), minval=0.05, maxval=0.95)
    r = (1 - delta) / (1 + delta)
    g = jax.random.normal(kg, (dim,))
    # Half the errors on the boundary ‖e‖ = r‖g‖ (the worst case), half inside.
    u = jnp.where(jnp.arange(samples) < samples // 2, 1.0, jax.random.uniform(ku, (samples,)))
    e = _unit(ke, (samples, dim)) * (r_scale * r * u * jnp.linalg.norm(g))[:, None]
    d = g + e
    cos = (d @ g) / (jnp.linalg.norm(d, axis=1) * jnp.linalg.norm(g))
    return jnp.array([jnp.min(cos) - delta, jnp.min(cos) - jnp.sqrt(1 - r**2)])


@x64
def cosine_lemma(
    key: jax.Array, instances: int, *, r_scale: float = 1.0, dims: tuple[int, ...] = (2, 3, 10)
) -> list[Claim]:
    """Item 14: min cos(g, g+e) − δ ≥ 0 over random δ, g and 1e5 errors in all."""
    samples = max(100_000 // max(instances, 1), 200)
    worst = []
    for i, dim in enumerate(dims):
        f = jax.jit(jax.vmap(lambda k, dim=dim: _cosine_one(k, dim, samples, r_scale)))
        worst.append(jnp.min(f(keys(jax.random.fold_in(key, i), instances)), axis=0))
    w = jnp.min(jnp.stack(worst), axis=0)
    n = instances * len(dims)
    detail = f"{n} (δ, g) pairs, {samples} errors each, dims {dims}"
    if r_scale != 1.0:
        claim = at_least("prop2/cosine≥δ", "Prop. 2 (proof)", w[0], 0.0, n, detail)
        return [control(claim, f"‖e‖ up to {r_scale:g}·r‖g‖")]
    return [
        at_least("prop2/cosine≥δ", "Prop. 2 (proof)", w[0], 0.0, n, "min cos − δ; " + detail),
        at_least(
            "prop2/cosine≥√(1−r²)",
            "Prop. 2 (proof)",
            w[1],
            -1e-12,
            n,
            "min cos − √(1−r²), the tight bound",
        ),
    ]


def _lsq_instance(key: jax.Array, n: int, d: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    kj, ky = jax.random.split(key)
    J = jax.random.normal(kj, (n, d))
    y = jax.random.normal(ky, (n,))
    theta_star = jnp.linalg.lstsq(J, y)[0]
    return J, y, theta_star


def _noisy_gd_one(
    key: jax.Array, n: int, d: int, steps: int, eps: float | jax.Array, relative: bool
) -> jax.Array:
    kp, kn, ke = jax.random.split(key, 3)
    J, y, theta_star = _lsq_instance(kp, n, d)
    lr = 1.0 / jnp.linalg.eigvalsh(J.T @ J)[-1]
    e_const = eps * _unit(ke, (n,))  # a fixed SG error on ∂L/∂h, h = Jθ

    def step(theta: jax.Array, k: jax.Array) -> tuple[jax.Array, None]:
        g = J.T @ (J @ theta - y)
        if relative:
            err = _unit(k, (d,)) * jnp.linalg.norm(g) / 3.0  # vanishes with g
        else:
            err = J.T @ e_const  # SG = ∂L/∂h + e: error e·∂h/∂θ on the update
        return theta - lr * (g + err), None

    theta, _ = jax.lax.scan(step, jnp.zeros(d), jax.random.split(kn, steps))
    predicted = theta_star - jnp.linalg.solve(J.T @ J, J.T @ e_const)
    return jnp.array([jnp.linalg.norm(theta - theta_star), jnp.linalg.norm(theta - predicted)])


@x64
def vanishing_error(
    key: jax.Array,
    instances: int,
    *,
    relative: bool = True,
    sizes: tuple[int, int] = (20, 8),
    steps: int = 20_000,
) -> list[Claim]:
    """Item 15: GD with error of norm ‖g‖/3 converges: ‖θ − θ*‖ ≤ 1e-10."""
    n, d = sizes
    f = jax.jit(jax.vmap(lambda k: _noisy_gd_one(k, n, d, steps, 0.1, relative)))
    r = f(keys(key, instances))
    claim = at_most(
        "prop2/relative-error-converges" if relative else "prop2/constant-error",
        "Prop. 2",
        jnp.max(r[:, 0]),
        1e-10,
        instances,
        f"max ‖θ − θ*‖ after {steps} steps at lr = 1/λ_max; J {n}×{d}",
    )
    if relative:
        return [claim]
    return [control(claim, "constant SG error, ‖e‖ = 0.1 (does not vanish)")]


@x64
def constant_error_bias(
    key: jax.Array, instances: int, *, sizes: tuple[int, int] = (20, 8), steps: int = 20_000
) -> list[Claim]:
    """Item 16: constant error ⇒ fixed point θ* − H⁻¹Jᵀe; distance ∝ ε."""
    n, d = sizes
    f = jax.jit(jax.vmap(lambda k, eps: _noisy_gd_one(k, n, d, steps, eps, False), (0, None)))
    # Same keys for both ε: the same problem and the same error direction.
    out = {eps: f(keys(key, instances), eps) for eps in (0.1, 1.0)}
    ratio = out[1.0][:, 0] / out[0.1][:, 0]
    return [
        at_most(
            "prop2/biased-fixed-point",
            "Prop. 2 (violated)",
            jnp.maximum(jnp.max(out[0.1][:, 1]), jnp.max(out[1.0][:, 1])),
            1e-8,
            instances,
            f"max ‖θ_T − (θ* − H⁻¹Jᵀe)‖ for ε ∈ {{0.1, 1}}; median ‖θ_T − θ*‖ at ε=1: "
            f"{float(jnp.median(out[1.0][:, 0])):.3g}",
        ),
        at_most(
            "prop2/bias-linear-in-ε",
            "Prop. 2 (violated)",
            jnp.max(jnp.abs(ratio - 10.0)),
            0.5,
            instances,
            "max |dist(ε=1)/dist(ε=0.1) − 10|",
        ),
    ]
