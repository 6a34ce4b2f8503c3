"""Full-BPTT references of the recurrent harness (diagnostics and test oracles).

:func:`boundary_states_and_gradients` runs full BPTT over the whole sequence and returns
the true gradient at every window boundary — what an exact boundary SG would output;
:func:`sg_cosines` compares the SG's predictions with it; :func:`make_evaluator` is the
no-gradient loss of a chunk (validation). They need the whole sequence at once (memory
O(L)), unlike the window step of :mod:`sgjax.recurrent.core` (O(T)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax.recurrent.core import sg_input, unroll, window_loss
from sgjax.recurrent.harness import (
    Harness,
    Model,
    Params,
    check_sequence,
    flat_state,
    initial_carry,
    unflat_state,
)


def _padded(h: Harness, x, y, m):
    L, B = np.shape(x)[:2]
    T = h.window
    K = -(-L // T)
    P = K * T - L
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    m = jnp.ones((L, B), x.dtype) if m is None else jnp.asarray(m, x.dtype)
    if P:
        x = jnp.concatenate([x, jnp.zeros((P, *x.shape[1:]), x.dtype)])
        y = jnp.concatenate([y, jnp.zeros((P, *y.shape[1:]), y.dtype)])
        m = jnp.concatenate([m, jnp.zeros((P, B), m.dtype)])
    r = lambda a: a.reshape((K, T, *a.shape[1:]))  # noqa: E731
    return r(x), r(y), r(m), K


def boundary_states_and_gradients(
    h: Harness, params: Params, x: Any, y: Any, m: Any = None, carry: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Full BPTT on the whole sequence: ``(loss, states s_k (K,B,S), true per-example
    ∂(loss of steps ≥ kT)/∂s_k (K,B,S))`` at every window start k = 0..K−1 (states as
    :func:`flat_state`).

    The gradient of the loss of the steps from kT on with respect to s_k is what an exact
    boundary SG would output; this is the reference for the SG cosine diagnostic (and the
    oracle of the tests). It needs the whole sequence at once (memory O(L)).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax.recurrent import cells
        >>> from sgjax.recurrent.core import Model, harness, init_params
        >>> h = harness(Model(cells.vanilla(3), 2, 2), window=2, method="bptt")
        >>> p = init_params(h.model, jax.random.key(0))
        >>> _, s, g = boundary_states_and_gradients(h, p, jnp.ones((6, 4, 2)),
        ...                                         jnp.zeros((6, 4), int))
        >>> s.shape, g.shape
        ((3, 4, 3), (3, 4, 3))
    """
    xs, ys, ms, K = _padded(h, x, y, m)
    B = xs.shape[2]
    s0 = initial_carry(h, B, xs.dtype) if carry is None else carry

    def total(eps):
        def body(s, inp):
            xw, yw, mw, e = inp
            f = flat_state(s) + e
            loss, (s_T, _) = window_loss(h.model, params, unflat_state(s, f), xw, yw, mw)
            return s_T, (loss, f)

        _, (losses, starts) = jax.lax.scan(body, s0, (xs, ys, ms, eps))
        return jnp.sum(losses), starts

    eps = jnp.zeros((K, B, h.model.cell.state_dim), xs.dtype)
    (loss, starts), g = jax.value_and_grad(total, has_aux=True)(eps)
    return loss, starts, g * B


def sg_cosines(
    h: Harness,
    params: Params,
    sg_params: Params,
    x: Any,
    y: Any,
    m: Any = None,
    ctx: Any = None,
    carry: Any = None,
) -> jax.Array:
    """Per boundary k = 1..K−1: mean over the batch of cos(SG(s_k, c_k), true ∂L_{≥k}/∂s_k).

    Diagnostic only (full BPTT on the same batch). Examples whose true gradient is zero
    count as cosine 0.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax.recurrent import cells
        >>> from sgjax.recurrent.core import Model, harness, init
        >>> h = harness(Model(cells.vanilla(3), 2, 2), window=2)
        >>> st = init(h, jax.random.key(0), optax.sgd(0.1))
        >>> sg_cosines(h, st.params, st.sg_params, jnp.ones((6, 4, 2)),
        ...            jnp.zeros((6, 4), int)).tolist()  # the zero SG: cosine 0
        [0.0, 0.0]
    """
    if h.sg is None:
        raise ValueError("sg_cosines: the harness has no SG module (method 'bptt')")
    check_sequence(h, x, y, m, ctx)
    return _sg_cosines(h, params, sg_params, x, y, m, ctx, carry)


@jax.jit(static_argnums=0)
def _sg_cosines(h: Harness, params, sg_params, x, y, m, ctx, carry) -> jax.Array:
    L, B = x.shape[:2]
    _, starts, g = boundary_states_and_gradients(h, params, x, y, m, carry)
    K = starts.shape[0]
    C = max(h.context_dim, 1)
    c = jnp.zeros((L, B, C), starts.dtype) if ctx is None else jnp.asarray(ctx, starts.dtype)
    cs = c[jnp.arange(K) * h.window]
    sg = h.sg
    assert sg is not None
    pred = jax.vmap(lambda s, ck: sg.apply(sg_params, sg_input(h, s), ck))(starts, cs)
    g = g[..., : h.sg_width]
    num = jnp.sum(pred * g, axis=-1)
    den = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(g, axis=-1)
    cos = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.mean(cos, axis=-1)[1:]


def make_evaluator(model: Model) -> Callable:
    """A jitted ``(params, carry, x, y, m) -> (loss_sum, count, carry)`` over a chunk (no
    gradient): loss in nats summed over the unmasked steps and examples."""

    @jax.jit
    def evaluate(params, carry, x, y, m):
        s_T, _, losses, _ = unroll(model, params, carry, x, y, m)
        return jnp.sum(losses), jnp.sum(m), s_T

    return evaluate
