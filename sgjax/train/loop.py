"""The one training loop, :func:`loop`, with :func:`fit` on top of it, the batches it
draws (:func:`batches`) and :func:`evaluate`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax.nets import Network, check_input
from sgjax.rules import UpdateRule
from sgjax.train.checks import (
    _is_int,
    check_batch_size,
    check_labels,
    check_params,
    check_run,
)
from sgjax.train.diagnose import diagnoser
from sgjax.train.errors import NonFiniteLossError, TrainingInterrupted
from sgjax.train.step import Batch, TrainState, init, make_step


def _batch_sums(net: Network, loss: loss_lib.Loss, params: Any, xb: Any, yb: Any) -> Any:
    """Summed loss and accuracy of one batch (the mean times the batch's size)."""
    p = net.apply(params, xb)
    k = xb.shape[0]
    return loss.fn(p, yb) * k, loss_lib.accuracy(p, yb) * k


@functools.cache
def _jit_with_static(fn: Callable[..., Any], n_static: int) -> Callable[..., Any]:
    return jax.jit(fn, static_argnums=tuple(range(n_static)))


def static_jit(fn: Callable[..., Any], *static: Any) -> Callable[..., Any]:
    """``fn`` with its leading arguments fixed to ``static`` and compiled once per process
    for those values (static arguments of one module-level ``jax.jit`` of ``fn``, hashed
    by value — a network, a loss or a rule by the identity of its functions), so that a
    function called again with the same network every few hundred steps is not traced
    and compiled again. ``fn`` must be a module-level function (its identity is the
    cache key). A static value that cannot be hashed gets a ``jax.jit`` of its own,
    compiled on every call of this function.

    Example:
        >>> import jax.numpy as jnp
        >>> def scale(k, x):
        ...     return k * x
        >>> static_jit(scale, 3)(jnp.ones(2)).tolist()
        [3.0, 3.0]
    """
    try:
        hash(static)
    except TypeError:
        return jax.jit(functools.partial(fn, *static))
    return functools.partial(_jit_with_static(fn, len(static)), *static)


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

    sums = static_jit(_batch_sums, net, loss)
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
    check_batch_size(batch_size, n)
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
    state = init(key, net, rule, optimizer)
    step_fn = jax.jit(make_step(net, rule, loss, optimizer, cosine=cosine))
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
        diagnose=diagnoser(net, rule, loss, optimizer),
    )
    return state, history
