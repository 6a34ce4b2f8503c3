"""The training step: :class:`TrainState`, :func:`init`, :func:`make_step` (the pure
``step(state, (x, y)) -> (state, metrics)``), the finiteness guard of an update and
:func:`stagewise` optimisers (one state per stage, for stochastic updates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgjax import losses as loss_lib
from sgjax.nets import Network
from sgjax.rules import RuleState, UpdateRule, apply_rule_update, bind, exact_signals
from sgjax.train.checks import _count_bad_labels, check_batch

Batch = tuple[jax.Array, jax.Array]


class TrainState(NamedTuple):
    """Everything a run carries from one step to the next (the SG modules and their
    optimiser state live in ``rule_state``: the rule owns them)."""

    step: jax.Array
    params: tuple
    opt_state: Any
    rule_state: RuleState


def init(
    key: jax.Array,
    net: Network,
    rule: UpdateRule,
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initialise the network, the rule (SG modules or feedback matrices) and optimisers.

    The rule initialises its own state (an SG rule: its modules and their optimiser's
    state; built without ``sg_optimizer``, that optimiser is ``optimizer``).

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
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rule_state=_bind(rule, optimizer).init(k_rule, net),
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

    out = _Stagewise(init, update)
    out.inner = optimizer
    return out


class _Stagewise(optax.GradientTransformation):
    """What :func:`stagewise` returns: an optax transformation that knows its ``inner`` one
    (a namedtuple subclass without ``__slots__``, so it can carry the attribute)."""

    inner: optax.GradientTransformation


def _bind(rule: UpdateRule, optimizer: optax.GradientTransformation) -> UpdateRule:
    """``rule`` with its module optimiser defaulting to ``optimizer``: for a
    :func:`stagewise` one, its inner transformation (the SG rule keeps one state per
    module anyway)."""
    return bind(rule, optimizer.inner if isinstance(optimizer, _Stagewise) else optimizer)


#: what ``make_step(..., p_update=p)`` does to the SG modules (see ``sg_update``)
SG_UPDATE_POLICIES = ("with-stage", "every-step")


def check_p_update(
    p_update: Any, *, name: str = "make_step: `p_update`", allow_zero: bool = True
) -> float:
    """``p_update`` as a float if it is a number in [0, 1] (``(0, 1]`` without
    ``allow_zero``: the command line's, where 0 would train nothing), else a ``ValueError``
    naming ``name``. The one check of the value (make_step and RunConfig call it).

    Example:
        >>> check_p_update(0, name="`p_update` (--p-update)", allow_zero=False)
        Traceback (most recent call last):
        ...
        ValueError: `p_update` (--p-update) must be a number in (0, 1], got 0 (0 would skip \
every update: the network would never train)
    """
    number = isinstance(p_update, int | float) and not isinstance(p_update, bool)
    if not number or not (0.0 <= p_update <= 1.0) or (not allow_zero and p_update == 0):
        never = (
            " (0 would skip every update: the network would never train)"
            if number and p_update == 0
            else ""
        )
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {p_update!r}{never}")
    return float(p_update)


def make_step(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
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
        optimizer: optax transformation for the network's parameters (and the SG
            modules' too, for an SG rule built without ``sg_optimizer``).
        cosine: also report, per hidden boundary, the cosine between the signal δ̂_i the
            rule used and the true ∂L/∂h_i (costs one more forward and backward pass).
        p_update: stochastic updates (DNI paper §3.3): at each step, each stage — with the
            SG module at its output boundary, if any — applies its update with probability
            ``p_update``, independently of the others; a skipped stage's parameters *and*
            optimiser state stay exactly as they were. The gradients are computed as
            usual (a skipped stage still passes its signal down). Needs one optimiser
            state per stage: ``optimizer`` must be a :func:`stagewise` optimiser, in
            :func:`init` too (the SG rule keeps one optimiser state per module anyway).
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
    rule = _bind(rule, optimizer)
    p_update = check_p_update(p_update)
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
        rule_state = new.rule_state
        if len(modules) and sg_update == "with-stage":
            # a module (its parameters and its own optimiser state) goes with its stage
            owner = [b - 1 for b in rule.boundaries(net)]  # type: ignore[misc]
            old = state.rule_state
            rule_state = rule_state._replace(
                params=tuple(
                    pick(mask[i], n, o) for i, n, o in zip(owner, rule_state.params, old.params)
                ),
                opt_state=tuple(
                    pick(mask[i], n, o)
                    for i, n, o in zip(owner, rule_state.opt_state, old.opt_state)
                ),
            )
        return new._replace(params=params, opt_state=opt_state, rule_state=rule_state), mask

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        x, y = batch
        check_batch(net, x, y)
        check_stagewise(state)
        bad_labels = _count_bad_labels(y, net.out_dim)
        out = rule.gradients(state.rule_state, net, state.params, x, y, loss)
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rule_state = apply_rule_update(rule, state.rule_state, out.rule_grads)
        # Finite loss and gradients can still overflow into the new parameters (a huge
        # learning rate), so the updated parameters are checked too.
        finite = jnp.isfinite(out.loss) & _all_finite(state.params, out.grads, params, opt_state)
        finite = finite & _rule_finite(state.rule_state, out.rule_grads, rule_state)
        apply = finite & (bad_labels == 0)
        new = TrainState(state.step + 1, params, opt_state, rule_state)
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


def _rule_finite(old: RuleState, rule_grads: Any, new: RuleState) -> jax.Array:
    """:func:`_all_finite` of the rule's trained part: per SG module when they come as a
    tuple with one optimiser state each (one reduction per parameter of each module)."""
    per_module = (
        isinstance(old.params, tuple)
        and isinstance(new.opt_state, tuple)
        and isinstance(rule_grads, tuple)
        and len(old.params) == len(new.opt_state) == len(rule_grads)
    )
    if not per_module:
        return _all_finite(old.params, rule_grads, new.params, new.opt_state)
    ok = jnp.ones((), bool)
    for p, g, q, o in zip(old.params, rule_grads, new.params, new.opt_state):
        ok = ok & _all_finite(p, g, q, o)
    return ok
