"""Losses L(p, y) averaged over the batch, with their per-example output gradients.

A :class:`Loss` is a named pair of pure functions:

* ``fn(p, y) -> scalar``: the batch **mean** of the per-example loss ℓ(p_b, y_b);
* ``output_grad(p, y) -> ∂ℓ_b/∂p_b``: the per-example gradient (shape of ``p``), i.e.
  ``batch_size · ∂L/∂p``. Synthetic-gradient modules regress onto per-example gradients,
  so that what they learn does not depend on the batch size.

``y`` is either integer class labels of shape ``(batch,)`` (turned into one-hot vectors of
``p``'s width) or real targets of ``p``'s shape (regression). :func:`as_target` does that
conversion and is what label-conditioned SG modules see as ``y``.

Example:
    >>> import jax.numpy as jnp
    >>> p = jnp.array([[0.0, 1.0]]); y = jnp.array([1])
    >>> float(mse.fn(p, y))
    0.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Loss(NamedTuple):
    """A batch-mean loss and its per-example output gradient."""

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    output_grad: Callable[[jax.Array, jax.Array], jax.Array]


def as_target(y: jax.Array, width: int, dtype=jnp.float32) -> jax.Array:
    """Integer labels -> one-hot rows of ``width``; real targets are returned as they are.

    Example:
        >>> as_target(jnp.array([2, 0]), 3).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise ValueError(f"labels `y`: expected shape (batch,), got {tuple(y.shape)}")
        return jax.nn.one_hot(y, width, dtype=dtype)
    if y.ndim != 2 or y.shape[-1] != width:
        raise ValueError(
            f"targets `y`: expected integer labels (batch,) or real targets (batch, {width}), "
            f"got {y.dtype} of shape {tuple(y.shape)}"
        )
    return y


def _mse(p: jax.Array, y: jax.Array) -> jax.Array:
    # ½ mean_b ‖p_b − y_b‖² — the paper's MSE; its per-example gradient is p − y.
    t = as_target(y, p.shape[-1], p.dtype)
    return 0.5 * jnp.mean(jnp.sum(jnp.square(p - t), axis=-1))


def _mse_grad(p: jax.Array, y: jax.Array) -> jax.Array:
    return p - as_target(y, p.shape[-1], p.dtype)


def _xent(p: jax.Array, y: jax.Array) -> jax.Array:
    t = as_target(y, p.shape[-1], p.dtype)
    return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(p, axis=-1), axis=-1))


def _xent_grad(p: jax.Array, y: jax.Array) -> jax.Array:
    # −Σ_k t_k log softmax(p)_k has gradient softmax(p)·Σ_k t_k − t (= softmax(p) − t
    # for one-hot or any normalised target).
    t = as_target(y, p.shape[-1], p.dtype)
    return jax.nn.softmax(p, axis=-1) * jnp.sum(t, axis=-1, keepdims=True) - t


mse = Loss("mse", _mse, _mse_grad)
softmax_cross_entropy = Loss("softmax_cross_entropy", _xent, _xent_grad)

LOSSES = {"mse": mse, "xent": softmax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


def get(name: str | Loss) -> Loss:
    """Look a loss up by name (``"mse"``, ``"xent"``) or pass a :class:`Loss` through.

    Example:
        >>> get("xent").name
        'softmax_cross_entropy'
    """
    if isinstance(name, Loss):
        return name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name]


def accuracy(p: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max equals the label (or the target's arg-max); for a
    sequence output ``(batch, positions, classes)`` with flattened one-hot targets, the
    fraction of positions.

    Example:
        >>> float(accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1])))
        0.5
    """
    if not jnp.issubdtype(y.dtype, jnp.integer) and y.shape != p.shape and y.size == p.size:
        y = y.reshape(p.shape)  # a sequence model's flattened targets: one per position
    label = y if jnp.issubdtype(y.dtype, jnp.integer) else jnp.argmax(y, axis=-1)
    return jnp.mean(jnp.argmax(p, axis=-1) == label)
