"""The paper's Table 1 as data: each rule's signal at a hidden boundary written as an SG
loss — the triple (SG(h), target t, L_SG) of :class:`Table1Row` — and
:func:`table1_signal`, which evaluates it. Each rule of :mod:`sgjax.rules` registers its
row function (``_row_*`` here) with its :class:`~sgjax.rules.RuleSpec`;
:func:`sgjax.rules.table1_errors` checks a rule's signals against its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax.nets import Network
from sgjax.rule_checks import resolve_at
from sgjax.sweep import RuleState, UpdateRule, exact_signals

Params = Any
# --------------------------------------------------------------------------------------
# Table 1 as data: each rule's (SG, target, L_SG) triple at a hidden boundary.


def _neg_inner(t: jax.Array, s: jax.Array) -> jax.Array:
    return -jnp.sum(t * s)


def _sq_dist(t: jax.Array, s: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(t - s))


class Table1Row(NamedTuple):
    """One cell of the paper's Table 1: the rule's signal at one boundary as an SG loss.

    The signal is ``∂/∂h L_SG(t, SG(h))`` with the target ``t`` held constant — or, for the
    SG rules (``follows_sg``), ``SG(h) + prop · ∂/∂h L_SG(t, SG(h))``. ``l_sg`` is summed
    over the batch, so its gradient is per example. :func:`table1_signal` evaluates it.
    """

    sg: Callable[[jax.Array], jax.Array]
    target: jax.Array
    l_sg: Callable[[jax.Array, jax.Array], jax.Array]
    follows_sg: bool = False
    prop: float = 1.0


class Table1Context(NamedTuple):
    """What a rule's Table 1 row may refer to (one batch, one rule state)."""

    net: Network
    params: Sequence[Params]
    state: RuleState
    hs: list  # [x, h_1, ..., h_N = p]
    signals: tuple  # the rule's own δ̂_1..δ̂_N
    exact: tuple  # true ∂ℓ/∂h_1..∂ℓ/∂h_N
    y_vec: jax.Array


def table1_signal(row: Table1Row, h: jax.Array) -> jax.Array:
    """The signal a :class:`Table1Row` prescribes at activation ``h``.

    Example:
        >>> import jax.numpy as jnp
        >>> row = Table1Row(sg=lambda h: h, target=-jnp.ones((1, 2)), l_sg=_neg_inner)
        >>> table1_signal(row, jnp.zeros((1, 2))).tolist()  # Bprop: δ̂ = −t = ∂L/∂h
        [[1.0, 1.0]]
    """
    grad = jax.grad(lambda hh: row.l_sg(jax.lax.stop_gradient(row.target), row.sg(hh)))(h)
    return row.sg(h) + row.prop * grad if row.follows_sg else grad


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def _row_backprop(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    return Table1Row(lambda h: h, -c.exact[b - 1], _neg_inner)  # SG(h) = h, t = −∂L/∂h


def _row_fa(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    # SG(h) = the stage above with B_b in place of Wᵀ in its backward pass (hA through the
    # activation), t = −(the FA signal above).
    stage, theta, B = c.net.stages[b], c.params[b], c.state.fixed[b - 1]
    fb = stage.feedback_apply
    assert fb is not None  # feedback_alignment.init refuses stages without it
    return Table1Row(lambda h: fb(theta, B, h), -c.signals[b], _neg_inner)


def _row_dfa(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    B = c.state.fixed[b - 1]  # SG(h) = hA with A = Bᵀ, t = −∂L/∂p
    return Table1Row(lambda h: _flat(h) @ B.T, -_flat(c.exact[-1]), _neg_inner)


def _row_kickback(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    e = _flat(c.exact[-1])  # SG(h) = h1, t = −∂L/∂p
    return Table1Row(lambda h: _flat(h) @ jnp.ones((_flat(h).shape[1], e.shape[1])), -e, _neg_inner)


def _row_sg(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    boundaries = resolve_at(options.get("at"), c.net.depth)
    # The gradient arriving at b: the signal above sent through the stage above.
    _, vjp = jax.vjp(lambda h: c.net.stages[b].apply(c.params[b], h), c.hs[b])
    arriving = vjp(c.signals[b])[0]
    if b not in boundaries:  # exact backprop from the module above: SG(h) = h, t = −g
        return Table1Row(lambda h: h, -arriving, _neg_inner)
    estimator = est_lib.get(options.get("estimator", "conditioned"))
    theta = c.state.params[boundaries.index(b)]
    t = c.exact[b - 1] if options.get("targets") == "true" else arriving
    return Table1Row(
        lambda h: estimator.apply(theta, h, c.y_vec),
        t,
        _sq_dist,
        follows_sg=True,
        prop=float(options.get("prop", 0.0)),
    )


def row_errors(
    row_fn: Callable[[Table1Context, int, Mapping[str, Any]], Table1Row],
    options: Mapping[str, Any],
    rule: UpdateRule,
    state: RuleState,
    net: Network,
    params: Sequence[Params],
    x: jax.Array,
    y: jax.Array,
    loss: loss_lib.Loss,
) -> jax.Array:
    """Max |δ̂ − the signal of ``row_fn``'s row| at each hidden boundary, for ``rule`` (built
    with ``options``) run with ``state`` (:func:`sgjax.rules.table1_errors` by name)."""
    out = rule.gradients(state, net, params, x, y, loss)
    hs = net.hidden(params, x)
    ctx = Table1Context(
        net,
        params,
        state,
        hs,
        out.signals,
        exact_signals(net, params, x, y, loss),
        loss_lib.as_target(y, net.out_dim, out.p.dtype),
    )
    errs = [
        jnp.max(jnp.abs(table1_signal(row_fn(ctx, b, options), hs[b]) - out.signals[b - 1]))
        for b in range(1, net.depth)
    ]
    return jnp.stack(errs) if errs else jnp.zeros((0,))
