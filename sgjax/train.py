"""Training: ``TrainState``, ``init``, ``make_step``, ``evaluate``, and the one training
``loop`` with ``fit`` on top of it. (A little over 400 lines: the step, the checks of its
inputs and the loop that drives it are read together.)

``make_step(net, rule, loss, optimizer, sg_optimizer)`` returns a pure function
``step(state, (x, y)) -> (state, metrics)``: ``jax.jit`` compiles it once, ``jax.vmap``
maps it over seeds (vmap ``init`` over keys and the step with ``in_axes=(0, None)``).
The network's parameters are updated by ``optimizer`` from the rule's gradients; the SG
modules, if the rule has any, by ``sg_optimizer`` from their regression losses.

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

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax.nets import Network, check_input
from sgjax.rules import RuleState, UpdateRule, exact_signals

Batch = tuple[jax.Array, jax.Array]


class TrainState(NamedTuple):
    """Everything a run carries from one step to the next."""

    step: jax.Array
    params: tuple
    opt_state: Any
    rule_state: RuleState
    sg_opt_state: Any


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`loop`: ``state`` is the state after the last finished step.

    A :class:`KeyboardInterrupt`, so that code that does not know it still stops; the
    runner saves ``state`` to the checkpoint directory and sets ``checkpoint_step``.
    """

    def __init__(self, state: TrainState):
        super().__init__(f"interrupted after step {int(state.step)}")
        self.state = state
        self.step = int(state.step)
        #: the newest checkpoint of the run, when it was checkpointed (set by the runner)
        self.checkpoint_step: int | None = None
        self.checkpoint_dir: str | None = None


class NonFiniteLossError(FloatingPointError):
    """Raised by :func:`fit` when a step produced a non-finite loss, gradient or state.

    ``parts`` names what became non-finite (see :func:`nonfinite_parts`), when known.
    """

    def __init__(
        self,
        step: int,
        loss: float,
        state: TrainState | None,
        parts: list[str] | None = None,
        advice: str | None = None,
    ):
        if parts:
            what = f"{', '.join(parts)} became non-finite (the loss was {loss})"
        elif parts is None:
            what = f"the loss or a gradient became non-finite (loss = {loss})"
        else:
            what = (
                f"a value became non-finite inside the compiled step (loss = {loss}); "
                "recomputed outside it, every part was finite (a borderline overflow)"
            )
        if advice is None:
            advice = "Lower the learning rates, or check the inputs for NaN/inf."
        at = f"step {step}" if step >= 0 else "a step"
        #: what happened and what to do, without the Python-only hint about ``err.state``
        self.summary = f"{at}: {what}; the update was not applied and training stopped. {advice}"
        self.step = step
        self.loss = loss
        self.state = state
        self.parts = list(parts or [])
        #: the newest checkpoint of the run, when it was checkpointed (set by the runner)
        self.checkpoint_step: int | None = None
        self.details = ""  # e.g. where the checkpoints are (added by the runner)
        super().__init__(str(self))

    def __str__(self) -> str:
        hint = " The last good state is in `err.state`." if self.state is not None else ""
        return f"{self.summary}{hint}{self.details}"

    def add_details(self, text: str) -> None:
        """Append ``text`` (a sentence, with its leading space) to the message."""
        self.details += text
        self.args = (str(self),)

    def cli_message(self) -> str:
        """The message for a command-line user: no ``err.state`` (a Python attribute)."""
        return f"{self.summary}{self.details}"


class BadLabelsError(ValueError):
    """Raised by :func:`check_step` when a batch held labels outside the network's classes."""


def init(
    key: jax.Array,
    net: Network,
    rule: UpdateRule,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
) -> TrainState:
    """Initialise the network, the rule (SG modules or feedback matrices) and optimisers.

    ``sg_optimizer`` defaults to ``optimizer`` (a separate state is kept either way).

    Example:
        >>> import jax, optax
        >>> from sgjax import nets, rules
        >>> s = init(jax.random.key(0), nets.mlp([4, 8, 3]), rules.synthetic_gradients(),
        ...          optax.adam(1e-3))
        >>> int(s.step), len(s.params), len(s.rule_state.params)
        (0, 2, 1)
    """
    k_net, k_rule = jax.random.split(key)
    params = net.init(k_net)
    rule_state = rule.init(k_rule, net)
    sg_opt = optimizer if sg_optimizer is None else sg_optimizer
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rule_state=rule_state,
        sg_opt_state=sg_opt.init(rule_state.params),
    )


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    a, b = a.reshape(-1), b.reshape(-1)
    denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(denom > 0, jnp.dot(a, b) / jnp.where(denom > 0, denom, 1.0), 0.0)


def _zero_or_nan(x: Any) -> jax.Array | None:
    """``x * 0`` as float32: 0 where x is finite, NaN where not (None for integer leaves)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.abs(x)
    elif not jnp.issubdtype(x.dtype, jnp.floating):
        return None  # integers are always finite
    return (x * 0).astype(jnp.float32)


def _all_finite(ref: Any, *trees: Any) -> jax.Array:
    """True iff every floating-point element of ``trees`` is finite.

    ``x * 0`` is 0 for finite x and NaN for ±inf and NaN (XLA keeps float ``x * 0``: it
    is not folded without fast-math), and a sum of zeros and NaNs is 0 exactly when no
    NaN is in it, in any order. Every subtree of ``trees`` shaped like ``ref`` (the
    parameters: their gradients, new values, Adam's two moments) is added leaf by leaf
    into one array per parameter, so the step runs one reduction per parameter instead
    of one per leaf of every tree (17 instead of ~50 for the SG MLP): fewer kernels to
    compile and to run. Grouping per parameter, not per shape, keeps each reduction next
    to that parameter's update, so no gradient is held longer than before (grouping all
    same-shape leaves made the 50-stage SG step's peak 14 % larger). The other leaves
    (e.g. Adam's step count) get one reduction each.
    """
    ref_leaves, ref_def = jax.tree.flatten(ref)
    shapes = [jnp.shape(x) for x in ref_leaves]

    def like_ref(t: Any) -> bool:
        return bool(ref_leaves) and jax.tree.structure(t) == ref_def  # type: ignore[operator]

    groups: list[jax.Array | None] = [None] * len(ref_leaves)
    rest: list[jax.Array] = []
    for tree in trees:
        for sub in jax.tree.leaves(tree, is_leaf=like_ref):
            aligned = like_ref(sub) and [jnp.shape(x) for x in jax.tree.leaves(sub)] == shapes
            for k, x in enumerate(jax.tree.leaves(sub)):
                z = _zero_or_nan(x)
                if z is None:
                    continue
                if not aligned:
                    rest.append(z)
                    continue
                g = groups[k]
                groups[k] = z if g is None else g + z
    total = jnp.zeros((), jnp.float32)
    for z in [*groups, *rest]:
        if z is not None:
            total = total + jnp.sum(z)
    return total == 0


class StagewiseState(NamedTuple):
    """The state of :func:`stagewise`: one inner optimiser state per stage (or module)."""

    states: tuple


def stagewise(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Apply ``optimizer`` to each entry of a params *tuple* with its own state.

    The update of every entry is the one ``optimizer`` would give on the whole tuple when
    each entry is updated at every step (Adam: same moments, same step count), but each
    stage now owns its state — Adam's step count included — so that a stage that skips
    an update (``make_step(..., p_update=p)``) keeps its whole state as it was: its next
    update is the one it would make had the skipped steps not happened.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = stagewise(optax.adam(1e-3))
        >>> state = opt.init((jnp.zeros(2), jnp.zeros(3)))
        >>> len(state.states)
        2
    """

    def init(params: Any) -> StagewiseState:
        if not isinstance(params, tuple | list):
            raise TypeError(
                "stagewise: expected the parameters as a tuple with one entry per stage "
                f"(or SG module), got {type(params).__name__}"
            )
        return StagewiseState(tuple(optimizer.init(p) for p in params))

    def update(updates: Any, state: StagewiseState, params: Any = None) -> tuple:
        if not isinstance(state, StagewiseState) or len(state.states) != len(updates):
            raise ValueError(
                f"stagewise: the optimiser state does not hold one state per entry of the "
                f"{len(updates)} updates; was it made by this optimiser's `init`?"
            )
        ps = tuple(params) if params is not None else (None,) * len(updates)
        outs = [optimizer.update(u, st, p) for u, st, p in zip(updates, state.states, ps)]
        return tuple(o[0] for o in outs), StagewiseState(tuple(o[1] for o in outs))

    return optax.GradientTransformation(init, update)


#: what ``make_step(..., p_update=p)`` does to the SG modules (see ``sg_update``)
SG_UPDATE_POLICIES = ("with-stage", "every-step")


def _check_p_update(p_update: Any) -> float:
    if (
        isinstance(p_update, bool)
        or not isinstance(p_update, int | float)
        or not 0.0 <= p_update <= 1.0
    ):
        raise ValueError(f"make_step: `p_update` must be a number in [0, 1], got {p_update!r}")
    return float(p_update)


def make_step(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
    *,
    cosine: bool = False,
    p_update: float = 1.0,
    update_key: jax.Array | None = None,
    sg_update: str = "with-stage",
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the pure training step ``step(state, (x, y)) -> (state, metrics)``.

    Args:
        net: the network.
        rule: an :class:`~sgjax.rules.UpdateRule`.
        loss: a :class:`~sgjax.losses.Loss` or its name (``"xent"``, ``"mse"``).
        optimizer: optax transformation for the network's parameters.
        sg_optimizer: optax transformation for the SG modules (default: ``optimizer``).
        cosine: also report, per hidden boundary, the cosine between the signal δ̂_i the
            rule used and the true ∂L/∂h_i (costs one more forward and backward pass).
        p_update: stochastic updates (DNI paper §3.3): at each step, each stage — with the
            SG module at its output boundary, if any — applies its update with probability
            ``p_update``, independently of the others; a skipped stage's parameters *and*
            optimiser state stay exactly as they were. The gradients are computed as
            usual (a skipped stage still passes its signal down). Needs one optimiser
            state per stage: ``optimizer`` (and ``sg_optimizer``, when the rule has
            modules) must be :func:`stagewise` optimisers, in :func:`init` too.
        update_key: the key of the draws (default ``jax.random.key(0)``); the draw of
            step ``s`` uses ``fold_in(update_key, s)``, so the step stays pure, a resumed
            run draws what an uninterrupted one would, and ``jax.vmap`` over states gives
            every replica the same pattern unless each builds its step with its own key.
        sg_update: what ``p_update`` does to the SG modules. ``"with-stage"`` (default):
            the module at a stage's output boundary is skipped together with that stage;
            ``"every-step"``: the modules regress at every step whichever stages update
            (the DNI paper's text does not settle which it used; docs/results/p-update
            measures both).

    Metrics: ``loss`` and ``accuracy`` (of this batch, before the update), ``sg_loss``
    (one entry per SG module), ``finite``, ``bad_labels`` (how many integer labels fall
    outside ``[0, classes)``; the update is refused when > 0), ``cosine`` (shape
    ``(N-1,)``) if asked, and ``updated`` (shape ``(N,)``: which stages updated) with a
    :func:`stagewise` optimiser. Check them in a loop with :func:`check_step`.

    Example (stochastic updates):
        >>> import optax
        >>> from sgjax import nets, rules, losses
        >>> net, rule = nets.mlp([4, 8, 8, 3]), rules.synthetic_gradients()
        >>> opt = stagewise(optax.adam(1e-3))
        >>> state = init(jax.random.key(0), net, rule, opt)
        >>> step = jax.jit(make_step(net, rule, "xent", opt, p_update=0.5))
        >>> state, m = step(state, (jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)))
        >>> m["updated"].shape
        (3,)
    """
    loss = loss_lib.get(loss)
    sg_opt = optimizer if sg_optimizer is None else sg_optimizer
    p_update = _check_p_update(p_update)
    if sg_update not in SG_UPDATE_POLICIES:
        raise ValueError(
            f"make_step: `sg_update` must be one of {SG_UPDATE_POLICIES}, got {sg_update!r}"
        )
    base_key = jax.random.key(0) if update_key is None else update_key

    def check_stagewise(state: TrainState) -> None:
        """Before any work: p_update < 1 needs one optimiser state per stage and module."""
        stagewise_net = isinstance(state.opt_state, StagewiseState)
        modules = state.rule_state.params
        if p_update < 1.0 and not stagewise_net:
            raise ValueError(
                f"make_step: `p_update`={p_update} skips the updates of some stages, and a "
                "skipped stage must keep its optimiser state, so each stage needs its own: "
                "use `optimizer=train.stagewise(optax.adam(...))` in train.init and make_step"
            )
        if not stagewise_net:
            return
        if len(modules) and not isinstance(state.sg_opt_state, StagewiseState):
            raise ValueError(
                "make_step: with a stagewise `optimizer`, the SG modules need one optimiser "
                "state each too: pass `sg_optimizer=train.stagewise(...)` (train.init and "
                "make_step)"
            )
        if len(modules) and rule.boundaries is None:
            raise ValueError(
                f"make_step: rule {rule.name!r} has {len(modules)} trainable modules but no "
                "`boundaries`, so `p_update` cannot tell which stage each belongs to"
            )

    def skip(state: TrainState, new: TrainState) -> tuple[TrainState, jax.Array | None]:
        """Keep the old params and optimiser state of the stages that do not update."""
        if not isinstance(state.opt_state, StagewiseState):
            return new, None
        modules = state.rule_state.params
        draw = jax.random.uniform(jax.random.fold_in(base_key, state.step), (net.depth,))
        mask = draw < p_update

        def pick(m: jax.Array, n: Any, o: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(m, a, b), n, o)

        params = tuple(
            pick(mask[i], n, o) for i, (n, o) in enumerate(zip(new.params, state.params))
        )
        opt_state = StagewiseState(
            tuple(
                pick(mask[i], n, o)
                for i, (n, o) in enumerate(zip(new.opt_state.states, state.opt_state.states))
            )
        )
        rule_state, sg_opt_state = new.rule_state, new.sg_opt_state
        if len(modules) and sg_update == "with-stage":
            owner = [b - 1 for b in rule.boundaries(net)]  # type: ignore[misc]
            rule_state = rule_state._replace(
                params=tuple(
                    pick(mask[i], n, o) for i, n, o in zip(owner, rule_state.params, modules)
                )
            )
            sg_opt_state = StagewiseState(
                tuple(
                    pick(mask[i], n, o)
                    for i, n, o in zip(owner, sg_opt_state.states, state.sg_opt_state.states)
                )
            )
        return new._replace(
            params=params, opt_state=opt_state, rule_state=rule_state, sg_opt_state=sg_opt_state
        ), mask

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        x, y = batch
        check_batch(net, x, y)
        check_stagewise(state)
        bad_labels = _count_bad_labels(y, net.out_dim)
        out = rule.gradients(state.rule_state, net, state.params, x, y, loss)
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sg_updates, sg_opt_state = sg_opt.update(
            out.rule_grads, state.sg_opt_state, state.rule_state.params
        )
        rule_state = state.rule_state._replace(
            params=optax.apply_updates(state.rule_state.params, sg_updates)
        )
        # Finite loss and gradients can still overflow into the new parameters (a huge
        # learning rate), so the updated parameters are checked too.
        finite = (
            jnp.isfinite(out.loss)
            & _all_finite(state.params, out.grads, params, opt_state)
            & _all_finite(state.rule_state.params, out.rule_grads, rule_state.params, sg_opt_state)
        )
        apply = finite & (bad_labels == 0)
        new = TrainState(state.step + 1, params, opt_state, rule_state, sg_opt_state)
        new, updated = skip(state, new)
        # A non-finite step is not applied: the state stays at its last good value. (A
        # select per leaf, not lax.cond: XLA fuses the selects into the optimiser's
        # kernels, while a conditional copies the whole new state through a temporary,
        # 3.6x the temporary memory of SG-everywhere on a 50-stage net.)
        new = jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, state)
        metrics = {
            "loss": out.loss,
            "accuracy": loss_lib.accuracy(out.p, y),
            "sg_loss": out.sg_loss,
            "finite": finite,
            "bad_labels": bad_labels,
        }
        if updated is not None:
            metrics["updated"] = updated
        if cosine:
            true = exact_signals(net, state.params, x, y, loss)
            metrics["cosine"] = (
                jnp.stack([_cosine(d, t) for d, t in zip(out.signals[:-1], true[:-1])])
                if net.depth > 1
                else jnp.zeros((0,))
            )
        return new, metrics

    return step


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
    sg_optimizer: optax.GradientTransformation | None,
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
        >>> net, rule = nets.mlp([2, 4, 2]), rules.synthetic_gradients()
        >>> s = init(jax.random.key(0), net, rule, optax.sgd(1.0))
        >>> nonfinite_parts(net, rule, "mse", optax.sgd(1.0), optax.sgd(float("inf")), s,
        ...                 (jnp.ones((3, 2)), jnp.zeros(3, int)))[0]
        ['the parameters of SG module 1 after the update']
    """
    loss = loss_lib.get(loss)
    sg_opt = optimizer if sg_optimizer is None else sg_optimizer
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
    sg_updates, sg_opt_state = sg_opt.update(
        out.rule_grads, state.sg_opt_state, state.rule_state.params
    )
    sg_params = optax.apply_updates(state.rule_state.params, sg_updates)
    if not _finite_tree(opt_state):
        parts.append("the network optimiser's state (e.g. Adam's moments)")
    if not _finite_tree(sg_opt_state):
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


def _count_bad_labels(y: jax.Array, num_classes: int) -> jax.Array:
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        return jnp.zeros((), jnp.int32)
    return jnp.sum((y < 0) | (y >= num_classes), dtype=jnp.int32)


def check_batch(net: Network, x: Any, y: Any) -> None:
    """Raise ``ValueError`` if ``(x, y)`` is not a non-empty batch of matching size.

    Checks shapes only, so it works on traced arrays inside ``jax.jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> from sgjax import nets
        >>> check_batch(nets.mlp([3, 2]), jnp.zeros((5, 3)), jnp.zeros(4, int))
        Traceback (most recent call last):
        ...
        ValueError: batch: `x` holds 5 examples but `y` holds 4; they must match
    """
    check_input(net, x)
    nx = int(np.shape(x)[0])
    ny_shape = np.shape(y)
    if not ny_shape:
        raise ValueError(f"batch: `y` must have a batch axis of size {nx}, got a scalar")
    if int(ny_shape[0]) != nx:
        raise ValueError(
            f"batch: `x` holds {nx} examples but `y` holds {int(ny_shape[0])}; they must match"
        )
    if nx == 0:
        raise ValueError("batch: `x` and `y` are empty (0 examples); a batch needs ≥ 1")


def check_step(metrics: dict[str, Any], step: int | None = None) -> None:
    """Raise if a step's metrics say its update was refused (for hand-written loops).

    Raises :class:`BadLabelsError` when the batch held labels outside the network's
    classes, :class:`NonFiniteLossError` when the loss, a gradient or the new state was
    not finite. In both cases the step returned the state unchanged. Works on the
    metrics of a vmapped step too (any seed failing raises). It reads two scalars back
    from the device, i.e. waits for the step to finish.

    Example:
        >>> check_step({"finite": True, "bad_labels": 2, "loss": 0.0}, step=7)
        Traceback (most recent call last):
        ...
        sgjax.train.BadLabelsError: step 7: 2 label(s) of the batch lie outside the network's classes; the update was not applied. Check the labels (integers in [0, classes)).
    """  # noqa: E501
    where = f"step {step}: " if step is not None else ""
    bad = np.asarray(metrics.get("bad_labels", 0))
    finite = np.asarray(metrics["finite"])
    loss = np.asarray(metrics["loss"])
    if bad.ndim:  # vmapped over seeds: name each seed that failed, with its own count
        idx = [int(i) for i in np.flatnonzero(bad.reshape(-1))]
        if idx:
            counts = ", ".join(f"seed index {i}: {int(bad.reshape(-1)[i])}" for i in idx)
            raise BadLabelsError(
                f"{where}label(s) of the batch lie outside the network's classes ({counts}; of "
                f"{bad.size} vmapped seeds); the update was not applied. Check the labels "
                "(integers in [0, classes))."
            )
    elif int(bad):
        raise BadLabelsError(
            f"{where}{int(bad)} label(s) of the batch lie outside the network's classes; the "
            "update was not applied. Check the labels (integers in [0, classes))."
        )
    if not bool(np.all(finite)):
        at = -1 if step is None else step
        if finite.ndim == 0:
            raise NonFiniteLossError(at, float(loss.reshape(-1)[0]) if loss.size else 0.0, None)
        idx = [int(i) for i in np.flatnonzero(~finite.reshape(-1))]
        losses = loss.reshape(-1) if loss.size == finite.size else np.full(finite.size, np.nan)
        which = "seed index" if len(idx) == 1 else "seed indices"
        err = NonFiniteLossError(
            at,
            float(losses[idx[0]]),
            None,
            [
                f"the loss or a gradient of {which} {', '.join(map(str, idx))} (of "
                f"{finite.size} vmapped seeds; losses: "
                + ", ".join(f"{float(losses[i])}" for i in idx[:5])
                + ")"
            ],
        )
        err.seeds = idx  # type: ignore[attr-defined]
        raise err


def check_labels(y: Any, num_classes: int, *, name: str = "y") -> None:
    """Raise ``ValueError`` if integer labels fall outside ``[0, num_classes)``.

    Example:
        >>> check_labels(np.array([0, 3]), 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: labels `y`: expected integers in [0, 3) ... got values such as 3 (range 0..3)
    """
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        return
    if y.ndim != 1:
        raise ValueError(f"labels `{name}`: expected shape (batch,), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(
            f"labels `{name}`: expected integers in [0, {num_classes}) (the network has "
            f"{num_classes} outputs), got values such as {int(bad[0])} "
            f"(range {int(y.min())}..{int(y.max())})"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_params(net: Network, params: Any, *, name: str = "params") -> None:
    """Raise ``ValueError`` unless ``params`` has the structure and shapes ``net.init`` gives.

    Parameters of another network (other depth or widths) would otherwise be used where
    they happen to fit (``zip`` drops extra stages, a dense layer takes any width), and
    parameters of a vmapped ``init`` (one leading axis for the seeds) fail with a bare
    shape error; both are named here.

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> net = nets.mlp([4, 8, 3])
        >>> check_params(net, nets.mlp([4, 8, 8, 3]).init(jax.random.key(0)))
        Traceback (most recent call last):
        ...
        ValueError: `params`: expected one entry per stage of the network (2), got 3
        >>> seeds = jax.vmap(net.init)(jax.random.split(jax.random.key(0), 5))
        >>> check_params(net, seeds)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `params` look vmapped: every array has an extra leading axis of size 5 ...
    """
    if not isinstance(params, tuple | list):
        raise ValueError(
            f"`{name}`: expected a sequence with one entry per stage ({net.depth}), got "
            f"{type(params).__name__}"
        )
    if len(params) != net.depth:
        raise ValueError(
            f"`{name}`: expected one entry per stage of the network ({net.depth}), got "
            f"{len(params)}"
        )
    want = jax.eval_shape(net.init, jax.random.key(0))
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(tuple(params))
    if want_def != got_def:  # type: ignore[operator]
        raise ValueError(
            f"`{name}`: the parameter tree does not match the network's: expected "
            f"{[jax.tree_util.keystr(p) for p, _ in want_leaves]}, got "
            f"{[jax.tree_util.keystr(p) for p, _ in got_leaves]}"
        )
    diffs = [
        (jax.tree_util.keystr(p), tuple(np.shape(g)), tuple(w.shape))
        for (p, g), (_, w) in zip(got_leaves, want_leaves)
        if tuple(np.shape(g)) != tuple(w.shape)
    ]
    if not diffs:
        return
    leading = {g[0] for _, g, w in diffs if len(g) == len(w) + 1 and g[1:] == w}
    if len(leading) == 1 and len(diffs) == len(want_leaves):
        k = leading.pop()
        raise ValueError(
            f"`{name}` look vmapped: every array has an extra leading axis of size {k} "
            f"(e.g. {diffs[0][0]}: {diffs[0][1]}, the network needs {diffs[0][2]}). Pass one "
            f"seed's parameters, `jax.tree.map(lambda a: a[i], {name})`, or vmap the call "
            "over the seeds"
        )
    shown = "; ".join(f"{p}: {g}, the network needs {w}" for p, g, w in diffs[:3])
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    raise ValueError(f"`{name}` do not fit the network (made for another network?): {shown}{more}")


def evaluate(
    net: Network,
    params: Any,
    loss: loss_lib.Loss | str,
    x: Any,
    y: Any,
    *,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean loss and accuracy of ``params`` on ``(x, y)``, in batches.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets
        >>> net = nets.mlp([2, 3])
        >>> r = evaluate(net, net.init(jax.random.key(0)), "xent", jnp.ones((4, 2)),
        ...              jnp.zeros(4, jnp.int32))
        >>> sorted(r)
        ['accuracy', 'loss']
    """
    loss = loss_lib.get(loss)
    check_params(net, params)
    check_input(net, x)
    check_labels(y, net.out_dim)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"evaluate: `batch_size` must be an int ≥ 1, got {batch_size!r}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"evaluate: `x` holds {n} examples but `y` holds {len(y)}")
    if n == 0:
        raise ValueError("evaluate: `x` is empty")

    @jax.jit
    def sums(params, xb, yb):
        p = net.apply(params, xb)
        k = xb.shape[0]
        return loss.fn(p, yb) * k, loss_lib.accuracy(p, yb) * k

    tot_l = tot_a = 0.0
    for i in range(0, n, batch_size):
        l_sum, a_sum = sums(
            params, jnp.asarray(x[i : i + batch_size]), jnp.asarray(y[i : i + batch_size])
        )
        tot_l += float(l_sum)
        tot_a += float(a_sum)
    return {"loss": tot_l / n, "accuracy": tot_a / n}


def check_data(net: Network, x: Any, y: Any, batch_size: Any) -> None:
    """Validate a training set and batch size before training (:func:`fit`, the runner).

    Checks the input width, the label range, that ``x`` and ``y`` hold as many examples,
    and that ``batch_size`` is an int in ``1..len(x)``.

    Example:
        >>> import numpy as np
        >>> from sgjax import nets
        >>> check_data(nets.mlp([2, 3]), np.zeros((10, 2)), np.zeros(10, int), 32.0)
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be an int in 1..10 (the dataset size), got 32.0 (float)
    """
    check_input(net, x)
    n = len(x)
    if len(y) != n:
        raise ValueError(
            f"`x` holds {n} examples but `y` holds {len(y)}; they must match one to one"
        )
    check_labels(y, net.out_dim)
    if not _is_int(batch_size) or not 1 <= batch_size <= n:
        raise ValueError(
            f"`batch_size` must be an int in 1..{n} (the dataset size), got {batch_size!r}"
            + ("" if _is_int(batch_size) else f" ({type(batch_size).__name__})")
        )


def batches(
    x: Any, y: Any, batch_size: int, *, seed: int = 0, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled mini-batches, a fresh permutation per epoch (seeded).

    ``start`` skips that many batches, so that a resumed run sees exactly the batches an
    uninterrupted run would have seen.

    Example:
        >>> x, y = np.arange(10.0)[:, None], np.arange(10)
        >>> xb, yb = next(batches(x, y, 4, seed=0))
        >>> xb.shape, yb.shape
        ((4, 1), (4,))
    """
    n = len(x)
    if not _is_int(batch_size) or not 1 <= batch_size <= n:
        raise ValueError(
            f"`batch_size` must be an int in 1..{n} (the dataset size), got {batch_size!r}"
        )
    per_epoch = n // batch_size
    epoch, offset = divmod(start, per_epoch)
    while True:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        for j in range(offset, per_epoch):
            idx = perm[j * batch_size : (j + 1) * batch_size]
            yield x[idx], y[idx]
        epoch, offset = epoch + 1, 0


def loop(
    step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    data: Iterator[tuple[Any, Any]],
    *,
    steps: int,
    on_step: Callable[[int, dict[str, jax.Array], TrainState], None] | None = None,
    progress: bool = False,
    desc: str = "",
    diagnose: Callable[[TrainState, Batch], tuple[list[str], str | None]] | None = None,
) -> TrainState:
    """The one training loop: apply ``step_fn`` from ``state.step`` until ``steps`` in total.

    Used by :func:`fit`, :func:`sgjax.infra.runner.run_training` (which adds checkpoints
    through ``on_step``) and the experiments (snapshots through ``on_step``).
    ``on_step(n, metrics, state)`` runs after every applied step (``n`` = ``state.step``;
    ``metrics`` are device arrays). A non-finite step raises :class:`NonFiniteLossError`
    carrying the last good state (and, given ``diagnose(state, batch) -> (parts, advice)``,
    e.g. :func:`diagnoser`, which parts became non-finite); Ctrl-C raises
    :class:`TrainingInterrupted` carrying the state of the last finished step.

    Example:
        >>> import optax
        >>> from sgjax import nets, rules
        >>> net, rule, opt = nets.mlp([1, 2]), rules.backprop(), optax.sgd(0.1)
        >>> x, y = np.ones((4, 1), np.float32), np.zeros(4, np.int32)
        >>> s = loop(jax.jit(make_step(net, rule, "xent", opt)),
        ...          init(jax.random.key(0), net, rule, opt), batches(x, y, 2), steps=3)
        >>> int(s.step)
        3
    """
    it: Any = range(int(state.step), steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="step", initial=int(state.step), total=steps, leave=False)
    try:
        for i in it:
            xb, yb = next(data)
            batch = (jnp.asarray(xb), jnp.asarray(yb))
            new, metrics = step_fn(state, batch)
            if not bool(metrics["finite"]):
                parts, advice = diagnose(state, batch) if diagnose is not None else (None, None)
                raise NonFiniteLossError(i + 1, float(metrics["loss"]), state, parts, advice)
            state = new
            if on_step is not None:
                on_step(i + 1, metrics, state)
    except KeyboardInterrupt:
        raise TrainingInterrupted(state) from None
    finally:
        if progress:
            it.close()
    return state


def fit(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    x: Any,
    y: Any,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    sg_optimizer: optax.GradientTransformation | None = None,
    seed: int = 0,
    cosine: bool = False,
    progress: bool = False,
    log_every: int = 0,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train for ``steps`` steps on ``(x, y)``; returns the state and logged metrics.

    Validates the data once (input width, label range), jits the step, and raises
    :class:`NonFiniteLossError` at the first non-finite step. ``log_every = k > 0`` keeps
    the metrics of every k-th step (and the last). ``seed`` orders the batches. For long
    runs with checkpoints, see :func:`sgjax.infra.runner.run_training`.

    Example:
        >>> import jax, optax
        >>> from sgjax import nets, rules
        >>> from sgjax.infra import data
        >>> ds = data.digits()
        >>> state, hist = fit(nets.mlp([64, 32, 10]), rules.backprop(), "xent",
        ...                   optax.adam(1e-2), ds.x_train, ds.y_train, steps=20,
        ...                   batch_size=32, key=jax.random.key(0), log_every=10)
        >>> int(state.step), [h["step"] for h in hist]
        (20, [10, 20])
    """
    check_run(net, x, y, steps=steps, batch_size=batch_size, log_every=log_every)
    state = init(key, net, rule, optimizer, sg_optimizer)
    step_fn = jax.jit(make_step(net, rule, loss, optimizer, sg_optimizer, cosine=cosine))
    history: list[dict[str, Any]] = []

    def log(n: int, metrics: dict[str, jax.Array], _state: TrainState) -> None:
        if log_every and (n % log_every == 0 or n == steps):
            history.append({"step": n, **jax.tree.map(np.asarray, metrics)})

    state = loop(
        step_fn,
        state,
        batches(x, y, batch_size, seed=seed),
        steps=steps,
        on_step=log,
        progress=progress,
        desc=rule.name,
        diagnose=diagnoser(net, rule, loss, optimizer, sg_optimizer),
    )
    return state, history


def diagnoser(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
) -> Callable[[TrainState, Batch], tuple[list[str], str | None]]:
    """:func:`nonfinite_parts` for one run, as :func:`loop`'s ``diagnose`` argument.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax import nets, rules
        >>> net, rule = nets.mlp([2, 4, 2]), rules.synthetic_gradients()
        >>> d = diagnoser(net, rule, "mse", optax.sgd(1.0), optax.sgd(float("inf")))
        >>> d(init(jax.random.key(0), net, rule, optax.sgd(1.0)),
        ...   (jnp.ones((3, 2)), jnp.zeros(3, int)))[0]
        ['the parameters of SG module 1 after the update']
    """

    def diagnose(state: TrainState, batch: Batch) -> tuple[list[str], str | None]:
        return nonfinite_parts(net, rule, loss, optimizer, sg_optimizer, state, batch)

    return diagnose


def check_run(
    net: Network, x: Any, y: Any, *, steps: int, batch_size: int, log_every: int = 0
) -> None:
    """Validate a run's arguments once, before any work (shared by fit and the runner).

    Example:
        >>> from sgjax import nets
        >>> check_run(nets.mlp([2, 3]), np.zeros((4, 2)), np.zeros(4, int), steps=1,
        ...           batch_size=5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be an int in 1..4 (the dataset size), got 5
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int ≥ 0, got {steps!r}")
    if not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"`log_every` must be an int ≥ 0, got {log_every!r}")
    check_data(net, x, y, batch_size)  # input width, labels, len(x) == len(y), batch_size
