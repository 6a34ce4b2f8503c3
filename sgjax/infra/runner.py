"""Long training runs: periodic atomic checkpoints, exact resume, a clean stop on NaN.

:func:`run_training` is :func:`sgjax.train.fit` plus a checkpoint directory. It trains
until ``state.step == steps`` (``steps`` is the *total*, so rerunning the same call with
``resume=True`` after a crash finishes the same run), saving every ``ckpt_every``
steps and at the end. With ``resume=True`` it restores the newest checkpoint and
continues with the batch that the interrupted run would have used next
(``batches(..., start=step)``); on CPU the result is bit-identical to an uninterrupted
run (tested leaf by leaf with ``np.array_equal``).

A non-finite loss or gradient stops the run with :class:`sgjax.train.NonFiniteLossError`
(the step is not applied, see :func:`sgjax.train.make_step`). The last good state is
saved first if it is finite and newer than the last checkpoint; a state holding NaN or
inf is never written, so the directory keeps only good checkpoints.

Example:
    >>> import tempfile, optax
    >>> from sgjax import nets, rules
    >>> from sgjax.infra import data
    >>> ds = data.load("linear2")
    >>> net, rule = nets.mlp([2, 8, 2]), rules.synthetic_gradients()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     state, _ = run_training(net, rule, "xent", optax.adam(1e-2), ds.x_train,
    ...                             ds.y_train, steps=20, batch_size=10, ckpt_dir=d,
    ...                             ckpt_every=8)
    ...     state, _ = run_training(net, rule, "xent", optax.adam(1e-2), ds.x_train,
    ...                             ds.y_train, steps=30, batch_size=10, ckpt_dir=d,
    ...                             ckpt_every=8, resume=True)  # 10 more steps
    ...     with Checkpointer(d) as ckpt:
    ...         int(state.step), ckpt.steps()  # the newest 3 are kept
    (30, [20, 24, 30])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax import train
from sgjax.infra.checkpoint import Checkpointer, abstract_state
from sgjax.nets import Network, check_input
from sgjax.rules import UpdateRule
from sgjax.train import NonFiniteLossError, TrainState

# Metadata that must agree between the run that wrote a checkpoint and the one resuming
# it: otherwise the resumed run would silently see other batches.
_MUST_MATCH = ("seed", "batch_size", "num_examples", "rule")


# Jitted steps of recent runs, keyed by the identity of their ingredients (kept alive in
# the entry, so an id cannot be reused while cached): a resumed or repeated run in the
# same process does not compile again.
_STEP_CACHE: dict[tuple, tuple[tuple, Callable]] = {}
_STEP_CACHE_SIZE = 8


def _jitted_step(
    net, rule, loss, optimizer, sg_optimizer, cosine, p_update=1.0, seed=0
) -> Callable:
    parts = (net, rule, loss, optimizer, sg_optimizer)
    key = (*map(id, parts), cosine, p_update, seed)
    hit = _STEP_CACHE.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], parts)):
        return hit[1]
    # p_update's draws: their own stream of the run's seed, folded with the step count.
    update_key = jax.random.fold_in(jax.random.key(seed), 0x5D)
    step = train.make_step(
        net, rule, loss, optimizer, sg_optimizer, cosine=cosine, p_update=p_update,
        update_key=update_key,
    )  # fmt: skip
    fn = jax.jit(step)
    if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
        _STEP_CACHE.pop(next(iter(_STEP_CACHE)))  # the oldest entry
    _STEP_CACHE[key] = (parts, fn)
    return fn


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in metrics.items()}


def run_training(
    net: Network,
    rule: UpdateRule,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    x: Any,
    y: Any,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    key: jax.Array | None = None,
    sg_optimizer: optax.GradientTransformation | None = None,
    cosine: bool = False,
    ckpt_dir: str | os.PathLike | None = None,
    ckpt_every: int = 1000,
    keep: int = 3,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
    log_every: int = 0,
    callback: Callable[[int, dict[str, Any], TrainState], None] | None = None,
    p_update: float = 1.0,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train to ``steps`` total steps, checkpointing to ``ckpt_dir``; returns (state, history).

    Args:
        net, rule, loss, optimizer, sg_optimizer, cosine: as for :func:`sgjax.train.fit`.
        x, y: the training data (validated once: input width, label range).
        steps: the total number of steps of the run (not the number still to do).
        batch_size: mini-batch size.
        seed: seeds the batch order and, unless ``key`` is given, the initialisation
            (``jax.random.key(seed)``).
        key: initialisation key of a fresh run (ignored when resuming: the state has it all).
        ckpt_dir: checkpoint directory; ``None`` trains without checkpoints.
        ckpt_every: save every this many steps (and always at the end).
        keep: how many of the newest checkpoints to keep.
        resume: continue from the newest checkpoint in ``ckpt_dir`` (a fresh start if it
            holds none). Without it, a ``ckpt_dir`` that already holds checkpoints is an
            error, so that two runs never mix.
        metadata: extra JSON-serialisable data stored with every checkpoint (e.g. the
            command-line configuration).
        progress: show a tqdm progress bar.
        log_every: ``k > 0`` keeps the metrics of every k-th step (and the last) in the
            history and passes them to ``callback``.
        callback: ``callback(step, metrics, state)`` at every logged step (e.g. evaluation
            on a test set); ``metrics`` are numpy arrays.
        p_update: stochastic updates, see :func:`sgjax.train.make_step` (needs
            :func:`sgjax.train.stagewise` optimisers when < 1); the draws follow ``seed``.

    Returns:
        ``(state, history)``; ``history`` holds ``{"step": s, **metrics}`` of the logged
        steps *of this call*. If the checkpoint already reached ``steps``, nothing is
        trained and ``history`` is the metrics stored with that checkpoint.

    Raises:
        NonFiniteLossError: a step's loss or gradient was not finite; ``err.state`` is the
            last good state and ``err.checkpoint_step`` the newest checkpoint (or None).
        ValueError: bad arguments, or a checkpoint written by an incompatible run.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int ≥ 0, got {steps!r}")
    if not isinstance(ckpt_every, int) or ckpt_every < 1:
        raise ValueError(f"`ckpt_every` must be an int ≥ 1, got {ckpt_every!r}")
    if not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"`log_every` must be an int ≥ 0, got {log_every!r}")
    if resume and ckpt_dir is None:
        raise ValueError("`resume=True` needs a `ckpt_dir` to resume from")
    check_input(net, x)
    train.check_labels(y, net.out_dim)
    if not 1 <= batch_size <= len(x):
        raise ValueError(
            f"`batch_size` must be in 1..{len(x)} (the dataset size), got {batch_size}"
        )
    key = jax.random.key(seed) if key is None else key
    meta: dict[str, Any] = {
        "seed": seed,
        "batch_size": batch_size,
        "num_examples": len(x),
        "rule": rule.name,
        "steps": steps,
        **(metadata or {}),
    }
    ckpt = Checkpointer(ckpt_dir, keep=keep) if ckpt_dir is not None else None
    try:
        return _run(
            net, rule, loss, optimizer, sg_optimizer, x, y, steps, batch_size, seed, key,
            cosine, ckpt, ckpt_every, resume, meta, progress, log_every, callback, p_update,
        )  # fmt: skip
    finally:
        if ckpt is not None:
            ckpt.close()


def _run(
    net, rule, loss, optimizer, sg_optimizer, x, y, steps, batch_size, seed, key, cosine,
    ckpt, ckpt_every, resume, meta, progress, log_every, callback, p_update=1.0,
):  # fmt: skip
    state: TrainState | None = None
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        existing = ckpt.latest_step()
        if existing is not None and not resume:
            raise ValueError(
                f"{ckpt.directory} already holds checkpoints (newest: step {existing}); pass "
                "resume=True (--resume) to continue that run, or use an empty directory"
            )
        if existing is not None:
            target = abstract_state(train.init, key, net, rule, optimizer, sg_optimizer)
            state, saved = ckpt.restore(target)
            for k in _MUST_MATCH:
                if saved.get(k) != meta[k]:
                    raise ValueError(
                        f"cannot resume from {ckpt.directory}: its run had {k}={saved.get(k)!r}, "
                        f"this one has {k}={meta[k]!r}; the batches would differ. Use the "
                        "original settings or another directory."
                    )
            if int(state.step) >= steps:
                last = saved.get("last_metrics") or {}
                hist = [{"step": int(state.step), **{k: np.asarray(v) for k, v in last.items()}}]
                return state, hist if last else []
    if state is None:
        state = train.init(key, net, rule, optimizer, sg_optimizer)
    step_fn = _jitted_step(net, rule, loss, optimizer, sg_optimizer, cosine, p_update, seed)
    start = int(state.step)
    data = train.batches(x, y, batch_size, seed=seed, start=start)
    last_saved = start if ckpt is not None and ckpt.latest_step() == start else None

    def save(s: TrainState, metrics: dict[str, Any]) -> None:
        nonlocal last_saved
        assert ckpt is not None
        ckpt.save(s, {**meta, "last_metrics": _jsonable(metrics)})
        last_saved = int(s.step)

    it: Any = range(start, steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=rule.name, unit="step", initial=start, total=steps, leave=False)
    metrics: dict[str, Any] = {}
    good_metrics: dict[str, Any] = {}  # those of the step that produced `state`
    for i in it:
        xb, yb = next(data)
        new_state, metrics = step_fn(state, (jnp.asarray(xb), jnp.asarray(yb)))
        if not bool(metrics["finite"]):
            raise _stop(i + 1, float(metrics["loss"]), state, ckpt, last_saved, save, good_metrics)
        state, good_metrics = new_state, metrics
        n = i + 1
        logged = log_every and (n % log_every == 0 or n == steps)
        if logged:
            m = jax.tree.map(np.asarray, metrics)
            history.append({"step": n, **m})
            if callback is not None:
                callback(n, m, state)
        if ckpt is not None and (n % ckpt_every == 0 or n == steps):
            save(state, metrics)
    return state, history


def _stop(step, loss, state, ckpt, last_saved, save, good_metrics) -> NonFiniteLossError:
    """The error for a non-finite step, after saving the last good state if that is safe."""
    err = NonFiniteLossError(step, loss, state)
    ckpt_step = last_saved
    if ckpt is not None:
        note = ""
        good = int(state.step)
        if last_saved != good:
            # ``state`` is the state before the failed step. It can still hold inf (a finite
            # gradient times a huge learning rate overflows); then the older checkpoint
            # stays the newest: Checkpointer.save refuses non-finite states.
            try:
                save(state, good_metrics)
                ckpt_step = good
            except FloatingPointError:
                note = f" The state at step {good} already held NaN/inf and was not saved."
        where = (
            f"the newest checkpoint (step {ckpt_step}) in {ckpt.directory} is the last good state"
            if ckpt_step is not None
            else f"no good checkpoint was written to {ckpt.directory}"
        )
        err.args = (f"{err.args[0]}{note} Checkpoints: {where}.",)
    err.checkpoint_step = ckpt_step
    return err
