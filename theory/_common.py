"""Small float64 helpers shared by the claim modules (call inside ``jax.enable_x64``).

Compile time, not run time, dominates almost every check here (the problems are
tiny), so the modules build each jitted, vmapped runner once (``functools.cache``
keyed by its static configuration) and reuse it across calls, negative controls and
hypothesis examples; flags that only change values (not shapes) are traced
arguments, so a claim and its control share one compiled program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

P = ParamSpec("P")
R = TypeVar("R")


def ones_col(n: int) -> jax.Array:
    """A column of ones, shape ``(n, 1)`` (the bias column of a design matrix)."""
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


def rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key: instance data is drawn on the host.

    Every large ``jax.random`` draw costs about a second of XLA compile time on CPU,
    far more than the checks themselves, so random problem instances are drawn with
    NumPy (deterministically from ``key``) and handed to the jitted runners as arrays.

    Example:
        >>> a = rng(jax.random.key(3)).normal(size=2)
        >>> bool((a == rng(jax.random.key(3)).normal(size=2)).all())
        True
    """
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def np_orthonormal(g: np.random.Generator, n_in: int, n_out: int, batch: int) -> np.ndarray:
    """``batch`` random ``n_in × n_out`` matrices with orthonormal rows or columns (Haar).

    Example:
        >>> Q = np_orthonormal(np.random.default_rng(0), 5, 3, 2)
        >>> Q.shape, bool(np.allclose(Q[0].T @ Q[0], np.eye(3)))
        ((2, 5, 3), True)
    """
    big, small = max(n_in, n_out), min(n_in, n_out)
    Q, R = np.linalg.qr(g.normal(size=(batch, big, small)))
    Q = Q * np.sign(np.diagonal(R, axis1=1, axis2=2))[:, None, :]
    return Q if n_in >= n_out else np.swapaxes(Q, 1, 2)


def keys(key: jax.Array, instances: int) -> jax.Array:
    """``instances`` independent keys, one per random problem instance."""
    if not isinstance(instances, int) or instances < 1:
        raise ValueError(f"`instances` must be a positive int, got {instances!r}")
    return jax.random.split(key, instances)


def x64(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with 64-bit JAX types enabled (the library default stays float32).

    Also turns ``jax_threefry_partitionable`` off inside ``fn``: with it on (the
    JAX default) XLA spends seconds compiling every large ``jax.random`` draw, which
    was most of the run time of ``sgjax verify``; the streams differ, not their law.
    """

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with jax.enable_x64(True), jax.threefry_partitionable(False):
            return fn(*args, **kwargs)

    return wrapped
