"""A training run as three values: what it computes, where it saves, what it reports.

The runners — :func:`sgjax.infra.runner.run_training` (one device, checkpoints) and
:func:`sgjax.pipeline.train_pipelined` (pipelines and their baselines) — take

- a :class:`Run`: the network, rule, loss, optimiser and the schedule (steps, batch size,
  seed, ``p_update``). :meth:`RunConfig.build <sgjax.infra.config.RunConfig.build>` makes
  one from the command line's configuration; build one by hand for a network of your own.
- a :class:`Checkpoints` policy (``run_training`` only): the directory, how often, how many
  are kept, whether to resume.
- :class:`Hooks`: progress bar, which steps are logged, a callback, where messages go.

Each value is checked once, when it is made, and names the argument it refuses.

Example:
    >>> import optax
    >>> from sgjax import nets, rules
    >>> run = Run(nets.mlp([2, 8, 2]), rules.synthetic_gradients(), "xent",
    ...           optax.adam(1e-2), steps=20, batch_size=10)
    >>> run.seed, run.p_update
    (0, 1.0)
    >>> Run(nets.mlp([2, 2]), rules.backprop(), "xent", optax.sgd(0.1), steps=20,
    ...     batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: Run: `batch_size` must be an int ≥ 1, got 0
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import optax

from sgjax import losses as loss_lib
from sgjax import train
from sgjax.nets import Network
from sgjax.sweep import UpdateRule

#: the largest seed: JAX's keys hold 32 bits, and ``jax.random.key(2**32 + s)`` is
#: ``jax.random.key(s)`` (the high bits are dropped), so a larger seed would silently
#: repeat another seed's initialisation.
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, name: str = "--seed") -> int:
    """``seed`` if it is an int in ``0..MAX_SEED``, else a ``ValueError`` naming ``name``.

    Example:
        >>> check_seed(2**32)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --seed must be an integer in 0..4294967295, got 4294967296 (JAX keys ...
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        why = ""
        if MAX_SEED < seed < 2**64:
            why = (
                f" (JAX keys hold 32 bits: seed {seed} would build the same network as seed "
                f"{seed % 2**32})"
            )
        elif seed >= 2**64:
            why = " (JAX keys hold 32 bits)"
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {seed}{why}")
    return seed


def _count(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: `{name}` must be an int ≥ {low}, got {value!r}")


def check_optimizer(owner: str, name: str, value: Any) -> None:
    """A ``TypeError`` naming ``name`` unless ``value`` looks like an optax transformation."""
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(
            f"{owner}: `{name}` must be an optax GradientTransformation (e.g. "
            f"optax.adam(1e-3)), got {type(value).__name__}"
        )


@dataclass(frozen=True)
class Run:
    """What a training run computes.

    Attributes:
        net: the network (any :class:`sgjax.nets.Network`).
        rule: the update rule (:mod:`sgjax.rules`); an SG rule owns its SG optimiser
            (default: ``optimizer``, see :func:`sgjax.rules.synthetic_gradients`).
        loss: the loss or its name (:mod:`sgjax.losses`).
        optimizer: the network's optax transformation (:func:`sgjax.train.stagewise` of one
            when ``p_update`` < 1).
        steps: the run's total number of steps (micro-batches for the pipelines, which
            also accept ``None`` with a time budget).
        batch_size: the (micro-)batch size.
        seed: seeds the batch order, ``p_update``'s draws and, unless ``key`` is given,
            the initialisation (``jax.random.key(seed)``).
        key: the initialisation key of a fresh run (a resumed run's state has it all).
        cosine: also report cos(δ̂_i, ∂L/∂h_i) per hidden boundary (an extra backward pass).
        p_update: each stage's probability of updating at a step (:func:`sgjax.train.make_step`).
        sg_update: what ``p_update`` < 1 does to a stage's SG module (``"with-stage"`` or
            ``"every-step"``).
        config: the :class:`~sgjax.infra.config.RunConfig` this run was built from, if
            any: checkpoints store it, and a resumed run must have the same.
    """

    net: Network
    rule: UpdateRule
    loss: loss_lib.Loss | str
    optimizer: optax.GradientTransformation
    steps: int | None
    batch_size: int
    seed: int = 0
    key: jax.Array | None = None
    cosine: bool = False
    p_update: float = 1.0
    sg_update: str = "with-stage"
    config: Any = None  # a sgjax.infra.config.RunConfig (which imports this module)

    def __post_init__(self) -> None:
        if not isinstance(self.net, Network):
            raise TypeError(f"Run: `net` must be an sgjax.nets.Network, got {self.net!r:.80}")
        if not isinstance(self.rule, UpdateRule):
            raise TypeError(
                f"Run: `rule` must be an sgjax update rule (sgjax.rules.get(name) or a "
                f"constructor in sgjax.rules), got {type(self.rule).__name__}"
            )
        loss_lib.get(self.loss)
        check_optimizer("Run", "optimizer", self.optimizer)
        if self.steps is not None:
            _count("Run", "steps", self.steps, 0)
        _count("Run", "batch_size", self.batch_size, 1)
        check_seed(self.seed, "Run: `seed`")
        train.check_p_update(self.p_update, name="Run: `p_update`", allow_zero=False)
        if self.sg_update not in train.SG_UPDATE_POLICIES:
            raise ValueError(
                f"Run: `sg_update` must be one of {train.SG_UPDATE_POLICIES}, "
                f"got {self.sg_update!r}"
            )

    @property
    def init_key(self) -> jax.Array:
        """The initialisation key: ``key``, else ``jax.random.key(seed)``."""
        return jax.random.key(self.seed) if self.key is None else self.key


@dataclass(frozen=True)
class Checkpoints:
    """Where and how often :func:`~sgjax.infra.runner.run_training` saves.

    Attributes:
        directory: the checkpoint directory. Without ``resume`` it must hold no checkpoint
            (two runs never mix).
        every: save every this many steps (and always at the end).
        keep: how many of the newest checkpoints to keep.
        resume: continue from the newest checkpoint that verifies (a fresh start if there
            is none, said through :attr:`Hooks.log`).
        adopt_older: with ``resume``, first check and hash the checkpoints an older sgjax
            wrote without hashes (without it they are refused, and never overwritten).
        metadata: extra JSON-serialisable data stored with every checkpoint.
    """

    directory: str | os.PathLike
    every: int = 1000
    keep: int = 3
    resume: bool = False
    adopt_older: bool = False
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str | os.PathLike):
            raise TypeError(
                f"Checkpoints: `directory` must be a path, got {type(self.directory).__name__}"
            )
        _count("Checkpoints", "every", self.every, 1)
        _count("Checkpoints", "keep", self.keep, 1)
        if self.adopt_older and not self.resume:
            raise ValueError(
                "Checkpoints: `adopt_older=True` (--adopt-older-checkpoints) needs "
                "`resume=True` (--resume)"
            )


@dataclass(frozen=True)
class Hooks:
    """What a run reports while it trains.

    Attributes:
        progress: show a tqdm progress bar.
        log_every: ``k > 0`` keeps the metrics of every k-th step (and the last) in the
            history and passes them to ``callback``.
        callback: ``callback(step, metrics, state)`` at every logged step (e.g. evaluation
            on a test set); ``metrics`` are numpy arrays.
        log: where to say "resumed from step N" and similar (default: nowhere).
        step_cache: a :class:`~sgjax.infra.runner.StepCache` to reuse compiled steps
            across calls.
    """

    progress: bool = False
    log_every: int = 0
    callback: Callable[[int, dict[str, Any], train.TrainState], None] | None = None
    log: Callable[[str], None] | None = None
    step_cache: StepCache | None = None

    def __post_init__(self) -> None:
        _count("Hooks", "log_every", self.log_every, 0)
        for name in ("callback", "log"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"Hooks: `{name}` must be callable or None")

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)


class StepCache:
    """Jitted steps of recent runs, keyed by the identity of their ingredients.

    Pass one as ``Hooks(step_cache=...)`` to reuse the compiled step when the
    same (net, rule, loss, optimiser) run is resumed or repeated in one process. Entries
    keep their ingredients alive, so an ``id`` cannot be reused while cached.

    Example:
        >>> import optax
        >>> from sgjax import nets, rules
        >>> cache, net, rule, opt = StepCache(), nets.mlp([2, 2]), rules.backprop(), optax.sgd(1.0)
        >>> cache.get(net, rule, "xent", opt, False) is cache.get(net, rule, "xent", opt, False)
        True
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: dict[tuple, tuple[tuple, Callable]] = {}

    def get(
        self,
        net,
        rule,
        loss,
        optimizer,
        cosine: bool,
        p_update=1.0,
        seed=0,
        sg_update="with-stage",
    ) -> Callable:
        parts = (net, rule, loss, optimizer)
        key = (*map(id, parts), cosine, p_update, seed, sg_update)
        hit = self._entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], parts)):
            return hit[1]
        # p_update's draws: their own stream of the run's seed, folded with the step count.
        update_key = jax.random.fold_in(jax.random.key(seed), 0x5D)
        step = train.make_step(
            net, rule, loss, optimizer, cosine=cosine, p_update=p_update,
            update_key=update_key, sg_update=sg_update,
        )  # fmt: skip
        fn = jax.jit(step)
        if len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))  # the oldest entry
        self._entries[key] = (parts, fn)
        return fn
