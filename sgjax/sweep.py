"""The machinery every update rule shares: a forward trace with one VJP per stage, and the
downward sweep that lets a rule choose the signal δ̂_i at each boundary.

A rule (:mod:`sgjax.rules`) is an :class:`UpdateRule`, a NamedTuple of pure functions in
the manner of optax: ``init(key, net) -> RuleState`` and ``gradients(state, net, params, x,
y, loss) -> RuleOutput``. Most rules are one call of :func:`sweep` with a ``signal``
function ``signal(b, h, g, y_vec, e, g_true) -> (delta, aux)`` that turns the gradient
``g`` arriving at boundary ``b`` into the signal δ̂_b the stage below follows.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from sgjax import nets, losses
    >>> net = nets.mlp([3, 4, 2]); params = net.init(jax.random.key(0))
    >>> x, y = jnp.ones((5, 3)), jnp.zeros(5, int)
    >>> value, p, grads, signals, aux = sweep(net, params, x, y, losses.mse, pass_through)
    >>> [s.shape for s in signals]
    [(5, 4), (5, 2)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from sgjax import losses as loss_lib
from sgjax.nets import Network, check_input

Params = Any


class RuleState(NamedTuple):
    """State of a rule: ``params`` are trained (SG modules), ``fixed`` are not (FA/DFA);
    ``opt_state`` is the rule's own optimiser state for ``params`` (one per SG module)."""

    params: Any = ()
    fixed: Any = ()
    opt_state: Any = ()


class RuleOutput(NamedTuple):
    """What :attr:`UpdateRule.gradients` returns for one batch.

    Attributes:
        loss: the batch-mean loss L(p, y).
        p: the network output.
        grads: per-stage parameter gradients (the network's parameter tree).
        rule_grads: gradients of the SG regression losses w.r.t. ``RuleState.params``.
        signals: per-example δ̂_i for boundaries i = 1..N (``signals[i - 1]``).
        sg_loss: mean ‖t − SG(h, y)‖² of each SG module, shape ``(modules,)``.
    """

    loss: jax.Array
    p: jax.Array
    grads: tuple
    rule_grads: Any
    signals: tuple
    sg_loss: jax.Array


class UpdateRule(NamedTuple):
    """An update rule: ``init(key, net) -> RuleState`` and
    ``gradients(state, net, params, x, y, loss) -> RuleOutput``.

    A rule with trainable modules owns their optimiser, as optax's ``lookahead`` owns its
    inner state: ``update(state, rule_grads) -> RuleState`` applies one step of it to
    ``RuleState.params`` (``None``: nothing to train). ``boundaries(net)`` gives the
    boundary (1..N) of each entry of ``RuleState.params``; :func:`sgjax.train.make_step`
    uses it to update a module together with its stage (``p_update``). ``bind(optimizer)``
    is the rule with its module optimiser defaulting to ``optimizer`` (the network's),
    for a rule built without one (``None``: the rule needs no default); see
    :func:`bind`. ``options`` are the keyword arguments it was built with, as
    ``(name, value)`` pairs (the pipelines read an SG rule's from them)."""

    init: Callable[[jax.Array, Network], RuleState]
    gradients: Callable[..., RuleOutput]
    name: str
    boundaries: Callable[[Network], tuple[int, ...]] | None = None
    update: Callable[[RuleState, Any], RuleState] | None = None
    bind: Callable[[Any], UpdateRule] | None = None
    options: tuple[tuple[str, Any], ...] = ()  # what it was built with (hashable)


def bind(rule: UpdateRule, optimizer: Any) -> UpdateRule:
    """``rule`` with its module optimiser defaulting to ``optimizer`` (the network's).

    :func:`sgjax.train.init` and :func:`sgjax.train.make_step` call it, so that an SG rule
    built without an ``sg_optimizer`` trains its modules with the network's optimiser; a
    rule that was given one, or has no modules, is returned as it is.
    """
    return rule.bind(optimizer) if rule.bind is not None else rule


def apply_rule_update(rule: UpdateRule, state: RuleState, rule_grads: Any) -> RuleState:
    """One step of the rule's own optimiser on its modules (the state as is, if none)."""
    return rule.update(state, rule_grads) if rule.update is not None else state


# signal(boundary, h, g, y_vec, e, g_true) -> (delta, aux); aux is collected per boundary.
# g is the gradient arriving at the boundary through the rule's own signals above it,
# g_true the exact ∂ℓ/∂h_b (None unless the sweep was asked to carry it).
SignalFn = Callable[..., tuple[jax.Array, Any]]


def sweep(
    net: Network,
    params: Sequence[Params],
    x: jax.Array,
    y: jax.Array,
    loss: loss_lib.Loss,
    signal: SignalFn,
    stage_fns: Sequence[Callable] | None = None,
    exact: bool = False,
) -> tuple[jax.Array, jax.Array, tuple, tuple, dict]:
    """Forward with per-stage VJPs, then the downward sweep driven by ``signal``.

    Returns ``(loss value, p, per-stage parameter gradients, signals, aux by boundary)``.
    ``stage_fns`` replaces the stages' ``apply`` (FA sends errors through other matrices).
    With ``exact=True`` the exact gradient is carried down beside the rule's own (one more
    VJP per stage on the same forward trace) and handed to ``signal`` as ``g_true``.
    """
    check_input(net, x)
    if len(params) != net.depth:
        raise ValueError(f"`params`: expected one entry per stage ({net.depth}), got {len(params)}")
    fns = stage_fns if stage_fns is not None else [s.apply for s in net.stages]
    hs, vjps = [x], []
    for fn, theta in zip(fns, params):
        # h_{i-1} enters as a primal of this stage's own VJP: no gradient crosses a stage
        # boundary except through the signal the rule chooses.
        h, vjp = jax.vjp(fn, theta, jax.lax.stop_gradient(hs[-1]))
        hs.append(h)
        vjps.append(vjp)
    p = hs[-1]
    value = loss.fn(p, y)
    # the labels as one row per example, as wide as the flattened output (net.out_dim):
    # a classifier's (batch, classes), a sequence model's (batch, context · vocab)
    y_vec = loss_lib.as_target(y, net.out_dim, p.dtype)
    e = jax.lax.stop_gradient(loss.output_grad(p, y))  # per-example ∂ℓ/∂p
    batch = x.shape[0]
    n = net.depth
    grads: list = [None] * n
    signals: list = [None] * n
    aux: dict = {}
    g = g_true = e
    for b in range(n, 0, -1):  # boundary b = output of stage b
        delta, aux[b] = signal(b, hs[b], jax.lax.stop_gradient(g), y_vec, e, g_true)
        signals[b - 1] = delta
        g_theta, g = vjps[b - 1](delta.astype(hs[b].dtype))
        if exact and b > 1:
            g_true = vjps[b - 1](g_true)[1]
        # Signals are per example, so the VJP gives the gradient of the *summed* loss.
        grads[b - 1] = jax.tree.map(lambda t: t / batch, g_theta)
    return value, p, tuple(grads), tuple(signals), aux


def pass_through(b, h, g, y_vec, e, g_true):
    """The backprop signal: δ̂_b = g, the gradient that arrives (no aux)."""
    del b, h, y_vec, e, g_true
    return g, None


def exact_signals(
    net: Network, params: Sequence[Params], x: jax.Array, y: jax.Array, loss: loss_lib.Loss
) -> tuple[jax.Array, ...]:
    """The true per-example gradients ∂ℓ_b/∂h_i for boundaries i = 1..N (backprop).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets, losses
        >>> net = nets.mlp([3, 4, 2])
        >>> params = net.init(jax.random.key(0))
        >>> [g.shape for g in exact_signals(net, params, jnp.ones((5, 3)), jnp.zeros(5, int),
        ...                                 losses.mse)]
        [(5, 4), (5, 2)]
    """
    _, _, _, signals, _ = sweep(net, params, x, y, loss, pass_through)
    return signals
