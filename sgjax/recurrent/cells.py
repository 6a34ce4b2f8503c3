"""Recurrent cells as pure ``(init, apply)`` pairs.

A :class:`Cell` steps a state ``s`` of per-example width ``state_dim`` with an input ``x``:

* ``init(key, in_dim, dtype) -> params``;
* ``apply(params, s, x_BxI) -> (s_next, out_BxH)`` — ``out`` is what a readout
  sees (the hidden vector h);
* ``state_dim`` — the width of ``s`` (of all its leaves together, per example);
  ``out_dim`` — the width of ``out``;
* ``init_state(batch, dtype) -> s`` (optional) — the initial state. Without it the state
  is one ``(batch, state_dim)`` array starting at zero.

The built-in cells keep one array (the LSTM's state is ``[h, c]``, width ``2·hidden``). A
cell of your own may keep any pytree of ``(batch, ...)`` arrays — an ``(h, c)`` tuple —
given ``init_state``: the window step flattens it to one ``(batch, state_dim)`` vector
(leaves in ``jax.tree`` order) where the boundary SG reads it and the gradient flows back
into each leaf (:func:`sgjax.recurrent.core.flat_state`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> cell = lstm(8)
    >>> p = cell.init(jax.random.key(0), 3)
    >>> s, h = cell.apply(p, jnp.zeros((2, cell.state_dim)), jnp.ones((2, 3)))
    >>> s.shape, h.shape
    ((2, 16), (2, 8))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any


class Cell(NamedTuple):
    """A recurrent cell: ``init(key, in_dim, dtype)``, ``apply(params, s, x) -> (s', out)``,
    and optionally ``init_state(batch, dtype) -> s`` for a state other than one array."""

    init: Callable[..., Params]
    apply: Callable[[Params, Any, jax.Array], tuple[Any, jax.Array]]
    state_dim: int
    out_dim: int
    name: str
    init_state: Callable[[int, Any], Any] | None = None


def _check_hidden(hidden: int) -> int:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"`hidden` must be an int ≥ 1, got {hidden!r}")
    return hidden


def _glorot(key: jax.Array, shape: tuple[int, int], dtype) -> jax.Array:
    return jax.nn.initializers.glorot_uniform()(key, shape, dtype)


def vanilla(hidden: int) -> Cell:
    """Elman RNN: ``s' = tanh(x Wx + s Wh + b)``, ``out = s'``.

    ``Wh`` starts orthogonal, ``Wx`` Glorot-uniform, ``b`` zero.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = vanilla(4)
        >>> p = cell.init(jax.random.key(0), 2)
        >>> s, out = cell.apply(p, jnp.zeros((3, 4)), jnp.ones((3, 2)))
        >>> bool(jnp.array_equal(s, out)), s.shape
        (True, (3, 4))
    """
    H = _check_hidden(hidden)

    def init(key: jax.Array, in_dim: int, dtype=jnp.float32) -> Params:
        kx, kh = jax.random.split(key)
        return {
            "Wx": _glorot(kx, (in_dim, H), dtype),
            "Wh": jax.nn.initializers.orthogonal()(kh, (H, H), dtype),
            "b": jnp.zeros((H,), dtype),
        }

    def apply(p: Params, s: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        s_next = jnp.tanh(x @ p["Wx"] + s @ p["Wh"] + p["b"])
        return s_next, s_next

    return Cell(init, apply, H, H, "vanilla")


def lstm(hidden: int) -> Cell:
    """LSTM without peepholes; state ``[h, c]`` of width ``2·hidden``, ``out = h``.

    Gates ``i, f, g, o = split(x Wx + h Wh + b)``; ``c' = σ(f)·c + σ(i)·tanh(g)``,
    ``h' = σ(o)·tanh(c')``. The forget-gate bias starts at 1.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cell = lstm(4)
        >>> p = cell.init(jax.random.key(0), 2)
        >>> s, h = cell.apply(p, jnp.zeros((3, 8)), jnp.ones((3, 2)))
        >>> bool(jnp.array_equal(s[:, :4], h))
        True
    """
    H = _check_hidden(hidden)

    def init(key: jax.Array, in_dim: int, dtype=jnp.float32) -> Params:
        kx, kh = jax.random.split(key)
        b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(1.0)
        return {
            "Wx": _glorot(kx, (in_dim, 4 * H), dtype),
            "Wh": jax.nn.initializers.orthogonal()(kh, (H, 4 * H), dtype),
            "b": b,
        }

    def apply(p: Params, s: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, c = s[:, :H], s[:, H:]
        z = x @ p["Wx"] + h @ p["Wh"] + p["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_next = jax.nn.sigmoid(o) * jnp.tanh(c_next)
        return jnp.concatenate([h_next, c_next], axis=-1), h_next

    return Cell(init, apply, 2 * H, H, "lstm")


CELLS: dict[str, Callable[[int], Cell]] = {"vanilla": vanilla, "lstm": lstm}


def get(name: str | Cell, hidden: int | None = None) -> Cell:
    """A cell by name (with ``hidden`` units) or a :class:`Cell` passed through.

    Example:
        >>> get("lstm", 3).state_dim
        6
    """
    if isinstance(name, Cell):
        return name
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(CELLS)}")
    if hidden is None:
        raise ValueError(f"cell {name!r}: pass `hidden` (the number of units)")
    return CELLS[name](hidden)
