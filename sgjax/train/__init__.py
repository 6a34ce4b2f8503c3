"""Training: ``TrainState``, ``init``, ``make_step``, ``evaluate``, and the one training
``loop`` with ``fit`` on top of it. One module per concern, everything re-exported here
(``sgjax.train.<name>``):

==========================  ==========================================================
module                      holds
==========================  ==========================================================
:mod:`sgjax.train.step`     ``TrainState``, ``init``, ``make_step``, ``stagewise``
:mod:`sgjax.train.loop`     ``loop``, ``fit``, ``batches``, ``evaluate``
:mod:`sgjax.train.checks`   ``check_params``, ``check_batch``, ``check_data``, ``check_run``
:mod:`sgjax.train.errors`   ``NonFiniteLossError``, ``TrainingInterrupted``, ``check_step``
:mod:`sgjax.train.diagnose` ``nonfinite_parts``, ``diagnoser``
==========================  ==========================================================

``make_step(net, rule, loss, optimizer)`` returns a pure function
``step(state, (x, y)) -> (state, metrics)``: ``jax.jit`` compiles it once, ``jax.vmap``
maps it over seeds (vmap ``init`` over keys and the step with ``in_axes=(0, None)``).
The network's parameters are updated by ``optimizer`` from the rule's gradients; the SG
modules, if the rule has any, by the rule's own optimiser (``rule.update``; an SG rule
built without ``sg_optimizer`` uses ``optimizer``, see :func:`sgjax.sweep.bind`).

A step whose loss, gradients, updated parameters or optimiser states are not finite
leaves the state unchanged and reports ``metrics["finite"] = False``; a batch with integer
labels outside ``[0, classes)`` is refused the same way and counted in
``metrics["bad_labels"]`` (checked inside the jitted step: ``one_hot`` would silently turn
such a label into a zero target). :func:`check_step` turns either into an exception in a
hand-written loop; :func:`fit` raises :class:`NonFiniteLossError` naming the step and the
part that became non-finite, so that a diverging run stops with its last good state
instead of silently training on NaNs.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from sgjax import nets, rules, losses, train
    >>> net = nets.mlp([4, 16, 3])
    >>> rule = rules.synthetic_gradients()
    >>> state = train.init(jax.random.key(0), net, rule, optax.adam(1e-3))
    >>> step = jax.jit(train.make_step(net, rule, losses.softmax_cross_entropy,
    ...                                optax.adam(1e-3)))
    >>> state, metrics = step(state, (jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)))
    >>> sorted(metrics)
    ['accuracy', 'bad_labels', 'finite', 'loss', 'sg_loss']
    >>> _, m = step(state, (jnp.ones((8, 4)), jnp.full(8, 3)))  # 3 is not a class of 3
    >>> int(m["bad_labels"]), bool(m["finite"])
    (8, True)
"""

from __future__ import annotations

from sgjax.train.checks import (
    check_batch,
    check_data,
    check_labels,
    check_params,
    check_run,
)
from sgjax.train.diagnose import diagnoser, nonfinite_parts
from sgjax.train.errors import (
    BadLabelsError,
    NonFiniteLossError,
    TrainingInterrupted,
    check_step,
)
from sgjax.train.loop import batches, evaluate, fit, loop, static_jit
from sgjax.train.step import (
    SG_UPDATE_POLICIES,
    Batch,
    StagewiseState,
    TrainState,
    check_p_update,
    init,
    make_step,
    stagewise,
)
from sgjax.train.step import (
    _all_finite as _all_finite,  # the pipeline's guard and tests use it
)

__all__ = [
    "SG_UPDATE_POLICIES",
    "BadLabelsError",
    "Batch",
    "NonFiniteLossError",
    "StagewiseState",
    "TrainState",
    "TrainingInterrupted",
    "batches",
    "check_batch",
    "check_data",
    "check_labels",
    "check_p_update",
    "check_params",
    "check_run",
    "check_step",
    "diagnoser",
    "evaluate",
    "fit",
    "init",
    "loop",
    "make_step",
    "nonfinite_parts",
    "stagewise",
    "static_jit",
]
