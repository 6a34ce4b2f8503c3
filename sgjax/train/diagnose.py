"""What became non-finite in a refused step: :func:`nonfinite_parts` recomputes the step
outside ``jax.jit`` and names the part; :func:`diagnoser` binds it to one run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax.nets import Network
from sgjax.rules import UpdateRule, apply_rule_update
from sgjax.train.step import Batch, TrainState, _bind


def _finite_tree(tree: Any) -> bool:
    return all(
        bool(np.isfinite(np.asarray(leaf, np.float64)).all())
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    )


_LOW_PRECISION = ("float16", "bfloat16")


def nonfinite_parts(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: Batch,
) -> tuple[list[str], str | None]:
    """Which part of a step became non-finite: recomputes the step outside ``jax.jit``.

    Called after a step reported ``finite = False`` (it costs one eager step). Returns
    ``(parts, advice)``: the parts in the order the step computes them — the input batch,
    the state the step started from, the loss, each stage's gradients, each SG module's
    regression gradients, the optimiser states, each stage's / SG module's parameters
    after the update — and advice for low-precision parameters (``None`` otherwise).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax import nets, rules
        >>> from sgjax.train import init
        >>> net = nets.mlp([2, 4, 2])
        >>> rule = rules.synthetic_gradients(sg_optimizer=optax.sgd(float("inf")))
        >>> s = init(jax.random.key(0), net, rule, optax.sgd(1.0))
        >>> nonfinite_parts(net, rule, "mse", optax.sgd(1.0), s,
        ...                 (jnp.ones((3, 2)), jnp.zeros(3, int)))[0]
        ['the parameters of SG module 1 after the update']
    """
    loss = loss_lib.get(loss)
    rule = _bind(rule, optimizer)
    x, y = batch
    parts: list[str] = []
    if not _finite_tree(x):
        parts.append("the input batch `x`")
    if not _finite_tree(state):
        parts.append("the state the step started from")
    out = rule.gradients(state.rule_state, net, state.params, x, y, loss)
    if not _finite_tree(out.loss):
        parts.append("the loss")
    parts += [
        f"the gradients of stage {i}" for i, g in enumerate(out.grads, 1) if not _finite_tree(g)
    ]
    modules = out.rule_grads if isinstance(out.rule_grads, tuple) else (out.rule_grads,)
    parts += [
        f"the regression gradients of SG module {k}"
        for k, g in enumerate(modules, 1)
        if not _finite_tree(g)
    ]
    updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rule_state = apply_rule_update(rule, state.rule_state, out.rule_grads)
    sg_params = rule_state.params
    if not _finite_tree(opt_state):
        parts.append("the network optimiser's state (e.g. Adam's moments)")
    if not _finite_tree(rule_state.opt_state):
        parts.append("the SG optimiser's state (e.g. Adam's moments)")
    parts += [
        f"the parameters of stage {i} after the update"
        for i, p in enumerate(params, 1)
        if not _finite_tree(p)
    ]
    sg_mods = sg_params if isinstance(sg_params, tuple) else (sg_params,)
    parts += [
        f"the parameters of SG module {k} after the update"
        for k, p in enumerate(sg_mods, 1)
        if not _finite_tree(p)
    ]
    dtypes = {str(jnp.result_type(a)) for a in jax.tree.leaves(state.params)}
    low = sorted(dtypes & set(_LOW_PRECISION))
    advice = None
    if low:
        advice = (
            f"The network's parameters are {'/'.join(low)}: its range and resolution are "
            "too small for an optimiser's state (in float16, Adam's default eps=1e-8 is 0 and "
            "squared gradients underflow to 0 or overflow past 65504). Keep the parameters "
            "and optimiser state in float32 (nets.mlp(..., dtype=jnp.float32)) and compute in "
            f"{low[0]} if you need to, or use an optimiser eps ≥ 1e-4 (optax.adam(lr, eps=1e-4))."
        )
    return parts, advice


def diagnoser(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
) -> Callable[[TrainState, Batch], tuple[list[str], str | None]]:
    """:func:`nonfinite_parts` for one run, as :func:`loop`'s ``diagnose`` argument.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax import nets, rules
        >>> from sgjax.train import init
        >>> net = nets.mlp([2, 4, 2])
        >>> rule = rules.synthetic_gradients(sg_optimizer=optax.sgd(float("inf")))
        >>> d = diagnoser(net, rule, "mse", optax.sgd(1.0))
        >>> d(init(jax.random.key(0), net, rule, optax.sgd(1.0)),
        ...   (jnp.ones((3, 2)), jnp.zeros(3, int)))[0]
        ['the parameters of SG module 1 after the update']
    """

    def diagnose(state: TrainState, batch: Batch) -> tuple[list[str], str | None]:
        return nonfinite_parts(net, rule, loss, optimizer, state, batch)

    return diagnose
