"""Training: ``TrainState``, ``init``, ``make_step``, ``evaluate``, and the one training
``loop`` with ``fit`` on top of it. (A little over 400 lines: the step, the checks of its
inputs and the loop that drives it are read together.)

``make_step(net, rule, loss, optimizer, sg_optimizer)`` returns a pure function
``step(state, (x, y)) -> (state, metrics)``: ``jax.jit`` compiles it once, ``jax.vmap``
maps it over seeds (vmap ``init`` over keys and the step with ``in_axes=(0, None)``).
The network's parameters are updated by ``optimizer`` from the rule's gradients; the SG
modules, if the rule has any, by ``sg_optimizer`` from their regression losses.

A step whose loss or gradients are not finite leaves the state unchanged and reports
``metrics["finite"] = False``; :func:`fit` turns that into a :class:`NonFiniteLossError`
naming the step, so that a diverging run stops with its last good state instead of
silently training on NaNs.

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
    ['accuracy', 'finite', 'loss', 'sg_loss']
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
    """Raised by :func:`fit` when a step produced a non-finite loss or gradient."""

    def __init__(self, step: int, loss: float, state: TrainState):
        super().__init__(
            f"step {step}: the loss or a gradient became non-finite (loss = {loss}); the "
            "update was not applied and training stopped. Lower the learning rates, or check "
            "the inputs for NaN/inf. The last good state is in `err.state`."
        )
        self.step = step
        self.loss = loss
        self.state = state
        #: the newest checkpoint of the run, when it was checkpointed (set by the runner)
        self.checkpoint_step: int | None = None


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


def _all_finite(tree: Any) -> jax.Array:
    # x * 0 is 0 for finite x and NaN for ±inf and NaN, so one sum per leaf tells all
    # (XLA keeps float x * 0: it is not folded without fast-math). One reduction per leaf
    # and no stack: fewer kernels to compile than isfinite + all + stack + all.
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(x * 0, dtype=jnp.float32)
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

    Metrics: ``loss`` and ``accuracy`` (of this batch, before the update), ``sg_loss``
    (one entry per SG module), ``finite``, ``cosine`` (shape ``(N-1,)``) if asked, and
    ``updated`` (shape ``(N,)``: which stages updated) with a :func:`stagewise` optimiser.

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
        if len(modules):
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
        check_input(net, x)
        check_stagewise(state)
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
        finite = jnp.isfinite(out.loss) & _all_finite(
            (out.grads, out.rule_grads, params, rule_state.params)
        )
        new = TrainState(state.step + 1, params, opt_state, rule_state, sg_opt_state)
        new, updated = skip(state, new)
        # A non-finite step is not applied: the state stays at its last good value. (A
        # select per leaf, not lax.cond: XLA fuses the selects into the optimiser's
        # kernels, while a conditional copies the whole new state through a temporary,
        # 3.6x the temporary memory of SG-everywhere on a 50-stage net.)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {
            "loss": out.loss,
            "accuracy": loss_lib.accuracy(out.p, y),
            "sg_loss": out.sg_loss,
            "finite": finite,
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
    check_input(net, x)
    check_labels(y, net.out_dim)
    n = len(x)
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
    if not 1 <= batch_size <= n:
        raise ValueError(f"`batch_size` must be in 1..{n} (the dataset size), got {batch_size}")
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
) -> TrainState:
    """The one training loop: apply ``step_fn`` from ``state.step`` until ``steps`` in total.

    Used by :func:`fit`, :func:`sgjax.infra.runner.run_training` (which adds checkpoints
    through ``on_step``) and the experiments (snapshots through ``on_step``).
    ``on_step(n, metrics, state)`` runs after every applied step (``n`` = ``state.step``;
    ``metrics`` are device arrays). A non-finite step raises :class:`NonFiniteLossError`
    carrying the last good state; Ctrl-C raises :class:`TrainingInterrupted` carrying the
    state of the last finished step.

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
            new, metrics = step_fn(state, (jnp.asarray(xb), jnp.asarray(yb)))
            if not bool(metrics["finite"]):
                raise NonFiniteLossError(i + 1, float(metrics["loss"]), state)
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
    )
    return state, history


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
        ValueError: `batch_size` must be in 1..4 (the dataset size), got 5
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int ≥ 0, got {steps!r}")
    if not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"`log_every` must be an int ≥ 0, got {log_every!r}")
    check_input(net, x)
    check_labels(y, net.out_dim)
    if not 1 <= batch_size <= len(x):
        raise ValueError(
            f"`batch_size` must be in 1..{len(x)} (the dataset size), got {batch_size}"
        )
