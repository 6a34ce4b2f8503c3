"""``sgjax bench`` section ``theory``: a claim-style check, vmapped against a Python loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _own_theorem1_run(key: jax.Array, d: int, S: int, steps: int) -> jax.Array:
    """Theorem 1's setting (linear regression, linear SG ``(α+1)p − (β+1)y + γ`` between
    p and the loss, both trained by gradient steps): distance to the least-squares fit."""
    kx, kw = jax.random.split(key)
    Xb = jnp.concatenate([jax.random.normal(kx, (d, S)), jnp.ones((1, S))], axis=0)
    y = jax.random.normal(kw, (d + 1,)) @ Xb
    G = Xb @ Xb.T
    mu = 0.5 / jnp.linalg.eigvalsh(G)[-1]
    W_ols = jnp.linalg.solve(G, Xb @ y)

    def step(carry, _):
        W, omega = carry
        p = W @ Xb
        A = jnp.stack([p, -y, jnp.ones_like(y)], axis=1)
        xi = A @ omega
        sg = p - y + xi
        # The SG's own step is line-searched as in the theorem: ν = ‖Aᵀξ‖² / ‖AAᵀξ‖².
        Atxi = A.T @ xi
        AAtxi = A @ Atxi
        den = AAtxi @ AAtxi
        nu = jnp.where(den > 0, (Atxi @ Atxi) / jnp.where(den > 0, den, 1.0), 0.0)
        return (W - mu * sg @ Xb.T, omega - nu * Atxi), None

    (W, _), _ = jax.lax.scan(step, (jnp.zeros(d + 1), jnp.array([-1.0, -1.0, 0.0])), None, steps)
    return jnp.linalg.norm(W - W_ols)


def _theory_claim(steps: int, n: int) -> tuple[str, Callable[[Any], jax.Array], Any]:
    """The per-instance check to sweep and ``n`` instances of its input (leading axis).

    The bench keeps its own copy of the Theorem 1 run (sgjax does not import ``theory``:
    the claims sit above the library), so the figure measures how a vmapped claim check
    scales, not any one version of the claim package.
    """
    return (
        f"Theorem 1 linear-SG regression (d=5, S=50, {steps} steps, line-searched SG step)",
        lambda k: _own_theorem1_run(k, 5, 50, steps),
        jax.random.split(jax.random.key(0), n),
    )


def bench_theory(cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Instances per second of a claim check: ``jit(vmap(check))`` over all instances
    against a Python loop calling ``jit(check)`` once per instance (compile excluded).

    Example:
        >>> from sgjax.apps.bench.sizes import QUICK
        >>> r = bench_theory({**QUICK, "theory_instances": 2, "theory_steps": 3},
        ...                  log=lambda s: None)
        >>> r["instances"], r["max_rel_diff"] < 1e-6
        (2, True)
    """
    n, steps = cfg["theory_instances"], cfg["theory_steps"]
    with jax.enable_x64(True):  # the claims are checked in float64
        name, check, inputs = _theory_claim(steps, n)
        each = [jax.tree.map(lambda a, i=i: a[i], inputs) for i in range(n)]
        one = jax.jit(check)
        many = jax.jit(jax.vmap(check))
        jax.block_until_ready((one(each[0]), many(inputs)))  # compile both
        t0 = time.perf_counter()
        loop_out = jnp.stack([one(item) for item in each])
        jax.block_until_ready(loop_out)
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        vm_out = jax.block_until_ready(many(inputs))
        t_vmap = time.perf_counter() - t0
        # Batched kernels may sum in another order: compare relative to the values' scale.
        scale = float(jnp.max(jnp.abs(jnp.nan_to_num(loop_out))))
        diff = float(jnp.max(jnp.abs(jnp.nan_to_num(vm_out - loop_out)))) / max(scale, 1e-300)
    log(f"  theory: {name}: loop {t_loop:.2f} s, vmap {t_vmap:.2f} s")
    return {
        "claim": name,
        "instances": n,
        "loop_s": t_loop,
        "vmap_s": t_vmap,
        "loop_per_s": n / t_loop,
        "vmap_per_s": n / t_vmap,
        "speedup": t_loop / t_vmap,
        "max_rel_diff": diff,
    }


def format_theory(r: dict[str, Any]) -> str:
    return (
        f"Theory sweep: {r['claim']}\n"
        f"{r['instances']} instances: Python loop {r['loop_per_s']:.1f}/s, vmapped "
        f"{r['vmap_per_s']:.1f}/s, speed-up {r['speedup']:.1f}x "
        f"(max |vmap - loop| / max |loop| = {r['max_rel_diff']:.1e})"
    )
