"""Small float64 helpers shared by the claim modules (call inside ``jax.enable_x64``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
import jax.numpy as jnp

P = ParamSpec("P")
R = TypeVar("R")


def ones_col(n: int) -> jax.Array:
    return jnp.ones((n, 1))


def fit_linear_sg(
    h: jax.Array, y: jax.Array, G: jax.Array, *, label: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Least-squares fit of ``SG(h, y) = hA + yB + C`` (or ``hA + C``) onto targets ``G``.

    Returns the design matrix ``D = [h | y | 1]`` and the stacked parameters
    ``Θ = [A; B; C]`` (minimum-norm where ``D`` is rank deficient).
    """
    cols = [h, y, ones_col(h.shape[0])] if label else [h, ones_col(h.shape[0])]
    D = jnp.concatenate(cols, axis=1)
    theta = jnp.linalg.lstsq(D, G)[0]
    return D, theta


def rel(a: jax.Array, b: jax.Array) -> jax.Array:
    """``‖a − b‖ / ‖b‖`` (Frobenius), guarded against ``b = 0``."""
    return jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-300)


def orthonormal(key: jax.Array, n_in: int, n_out: int) -> jax.Array:
    """A random ``n_in × n_out`` matrix with orthonormal rows or columns (Haar)."""
    big, small = max(n_in, n_out), min(n_in, n_out)
    Q, R = jnp.linalg.qr(jax.random.normal(key, (big, small)))
    Q = Q * jnp.sign(jnp.diag(R))
    return Q if n_in >= n_out else Q.T


def keys(key: jax.Array, instances: int) -> jax.Array:
    return jax.random.split(key, instances)


def x64(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with 64-bit JAX types enabled (the library default stays float32)."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped
