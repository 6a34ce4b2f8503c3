"""Long training runs: periodic atomic checkpoints, exact resume, a clean stop on NaN.

:func:`run_training` is :func:`sgjax.train.fit` plus a checkpoint directory (both drive
:func:`sgjax.train.loop`, the one training loop). It trains
until ``state.step == run.steps`` (the *total*, so rerunning the same call with
``Checkpoints(..., resume=True)`` after a crash finishes the same run), saving every
``Checkpoints.every`` steps and at the end. With ``resume`` it restores the newest
checkpoint and continues with the batch that the interrupted run would have used next
(``batches(..., start=step)``); on CPU the result is bit-identical to an uninterrupted
run (tested leaf by leaf with ``np.array_equal``).

A non-finite loss or gradient stops the run with :class:`sgjax.train.NonFiniteLossError`
(the step is not applied, see :func:`sgjax.train.make_step`). The last good state is
saved first if it is finite and newer than the last checkpoint; a state holding NaN or
inf is never written, so the directory keeps only good checkpoints. The error names the
part that became non-finite (:func:`sgjax.train.nonfinite_parts`). Ctrl-C saves the last
finished step and raises :class:`sgjax.train.TrainingInterrupted` (``sgjax train`` turns
SIGTERM, SIGHUP, SIGUSR1/2 and SIGXCPU into the same, see :mod:`sgjax.apps.cli`).
:class:`PipelineRun` gives ``--pipeline`` runs checkpoints, resume and stop signals,
agreed by every process of a multi-process job.

Every checkpoint is saved with the SHA-256 of its files; ``resume=True`` resumes from the
newest one that verifies and names each newer corrupt one on stderr (see
:mod:`sgjax.infra.checkpoint`).

Given its :class:`~sgjax.infra.config.RunConfig`, a run stores it with every checkpoint,
and a resumed run must have the same one (only ``steps`` upward and where outputs go may
change): each differing field is named, old → new.

Example:
    >>> import dataclasses, tempfile, optax
    >>> from sgjax import nets, rules
    >>> from sgjax.infra import data
    >>> ds = data.load("linear2")
    >>> run = Run(nets.mlp([2, 8, 2]), rules.synthetic_gradients(), "xent", optax.adam(1e-2),
    ...           steps=20, batch_size=10)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     state, _ = run_training(run, ds.x_train, ds.y_train,
    ...                             checkpoints=Checkpoints(d, every=8))
    ...     state, _ = run_training(dataclasses.replace(run, steps=30), ds.x_train, ds.y_train,
    ...                             checkpoints=Checkpoints(d, every=8, resume=True))
    ...     with Checkpointer(d) as ckpt:
    ...         int(state.step), ckpt.steps()  # 10 more steps; the newest 3 are kept
    (30, [20, 24, 30])
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from sgjax import train
from sgjax.infra.checkpoint import (
    Checkpointer,
    FirstSaveInterruptedError,
    abstract_state,
    deferred_signals,
)
from sgjax.infra.config import RunConfig, describe_may_change
from sgjax.infra.run import Checkpoints, Hooks, Run, StepCache
from sgjax.train import NonFiniteLossError, TrainingInterrupted, TrainState

# Metadata that must agree between the run that wrote a checkpoint and the one resuming
# it: otherwise the resumed run would silently see other batches.
_MUST_MATCH = ("seed", "batch_size", "num_examples", "rule")


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in metrics.items()}


def run_training(
    run: Run,
    x: Any,
    y: Any,
    *,
    checkpoints: Checkpoints | None = None,
    hooks: Hooks | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train ``run`` to ``run.steps`` total steps, checkpointing as ``checkpoints`` says.

    Args:
        run: what to train (:class:`~sgjax.infra.run.Run`; ``run.steps`` is the total
            number of steps of the run, not the number still to do). Its ``config`` (a
            :class:`~sgjax.infra.config.RunConfig`), if any, is stored with every
            checkpoint; a resumed run must have the same (up to
            :data:`~sgjax.infra.config.MAY_CHANGE`), else a ``ValueError`` names each
            differing field, old → new.
        x, y: the training data (validated once: input width, label range).
        checkpoints: a :class:`~sgjax.infra.run.Checkpoints` policy; ``None`` trains without
            checkpoints. With ``resume``, the newest checkpoint is restored: checkpoints
            are verified against the hashes written when they were saved, newer ones that
            fail are named on stderr and the newest good one is resumed from; if none
            verifies, :class:`~sgjax.infra.checkpoint.CorruptCheckpointError`. Without
            ``resume``, a directory that already holds checkpoints is an error.
        hooks: progress bar, logged steps, callback and log (:class:`~sgjax.infra.run.Hooks`).

    Returns:
        ``(state, history)``; ``history`` holds ``{"step": s, **metrics}`` of the logged
        steps *of this call*. If the checkpoint already reached ``run.steps``, nothing is
        trained and ``history`` is the metrics stored with that checkpoint.

    Raises:
        NonFiniteLossError: a step's loss or gradient was not finite; ``err.state`` is the
            last good state and ``err.checkpoint_step`` the newest checkpoint (or None).
        TrainingInterrupted: Ctrl-C; the last finished step was saved first when
            checkpointing (``err.checkpoint_step``).
        ValueError: bad arguments, or a checkpoint written by an incompatible run.
    """
    if not isinstance(run, Run):
        raise TypeError(
            f"run_training: `run` must be an sgjax.infra.run.Run (or RunConfig.build(...)), "
            f"got {type(run).__name__}"
        )
    for name, value, kind in (("checkpoints", checkpoints, Checkpoints), ("hooks", hooks, Hooks)):
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"run_training: `{name}` must be an sgjax.infra.run.{kind.__name__} or None, "
                f"got {type(value).__name__}"
            )
    hooks = hooks or Hooks()
    if run.steps is None:
        raise ValueError("run_training: `run.steps` must be an int ≥ 0, got None")
    steps, seed = run.steps, run.seed
    net, rule, loss, optimizer = run.net, run.rule, run.loss, run.optimizer
    train.check_run(net, x, y, steps=steps, batch_size=run.batch_size, log_every=hooks.log_every)
    meta: dict[str, Any] = {
        "seed": seed,
        "batch_size": run.batch_size,
        "num_examples": len(x),
        "rule": rule.name,
        "steps": steps,
        **((checkpoints.metadata if checkpoints else None) or {}),
    }
    if run.config is not None:
        meta["run_config"] = run.config.to_dict()
    step_fn = (hooks.step_cache or StepCache(1)).get(
        net, rule, loss, optimizer, run.cosine, run.p_update, seed, run.sg_update
    )
    ckpt = (
        Checkpointer(checkpoints.directory, keep=checkpoints.keep)
        if checkpoints is not None
        else None
    )
    if ckpt is not None and ckpt.stale_lock:
        _warn(ckpt.stale_lock)
    try:
        state: TrainState | None = None
        if ckpt is not None and checkpoints is not None:
            target = abstract_state(train.init, run.init_key, net, rule, optimizer)
            if checkpoints.adopt_older:
                adopted = ckpt.adopt_older(target)
                hooks.say(
                    f"checked and hashed the checkpoints of steps {adopted} (written by an "
                    "older sgjax)"
                    if adopted
                    else "--adopt-older-checkpoints: no checkpoint of an older sgjax found"
                )
            restored = _restore(
                ckpt, target, resume=checkpoints.resume, meta=meta, config=run.config,
                say=hooks.say,
            )  # fmt: skip
            if restored is not None:
                state, last = restored
                if int(state.step) >= steps:
                    hist = [
                        {"step": int(state.step), **{k: np.asarray(v) for k, v in last.items()}}
                    ]
                    return state, hist if last else []
        if state is None:
            state = train.init(run.init_key, net, rule, optimizer)
        every = checkpoints.every if checkpoints is not None else 1
        saver = _Saver(ckpt, meta, every, hooks.log_every, steps, hooks.callback, int(state.step))
        data = train.batches(x, y, run.batch_size, seed=seed, start=int(state.step))
        try:
            state = train.loop(
                step_fn,
                state,
                data,
                steps=steps,
                on_step=saver.on_step,
                progress=hooks.progress,
                desc=rule.name,
                diagnose=train.diagnoser(net, rule, loss, optimizer),
            )
        except NonFiniteLossError as err:
            raise saver.stopped(err) from None
        except TrainingInterrupted as err:
            raise saver.interrupted(err) from None
        return state, saver.history
    finally:
        if ckpt is not None:
            ckpt.close()


def _restore(
    ckpt: Checkpointer,
    target: Any,
    *,
    resume: bool,
    meta: dict[str, Any],
    config: RunConfig | None,
    say: Callable[[str], None],
) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest checkpoint as ``(state, last metrics)``, or None for a fresh start."""
    steps = meta["steps"]
    existing = ckpt.latest_step()
    if existing is not None and not resume:
        raise ValueError(
            f"{ckpt.directory} already holds checkpoints (newest: step {existing}); pass "
            "--resume (resume=True) to continue that run, or use an empty directory"
        )
    if existing is None:
        if resume:
            say(f"--resume: no checkpoint in {ckpt.directory}; starting a new run at step 0")
        return None
    try:  # a corrupt newest checkpoint: named on stderr, the newest that verifies is used
        state, saved = ckpt.restore_newest_good(target, report=_warn)
    except FirstSaveInterruptedError as e:  # killed during the first save: start again
        _warn(str(e))
        return None
    for k in _MUST_MATCH:
        if saved.get(k) != meta[k]:
            raise ValueError(
                f"cannot resume from {ckpt.directory}: its run had {k}={saved.get(k)!r}, "
                f"this one has {k}={meta[k]!r}; the batches would differ. Use the "
                "original settings or another directory."
            )
    if config is not None and "run_config" in saved:
        problems = config.resume_problems(saved["run_config"], int(state.step))
        if problems:
            raise ValueError(
                f"cannot resume from {ckpt.directory}: the run differs from the one that "
                f"wrote it: {'; '.join(problems)}. Use the original settings or another "
                f"directory ({describe_may_change()})."
            )
    else:
        if config is not None:
            say(
                f"the checkpoint in {ckpt.directory} stores no run configuration (written by "
                "an older sgjax or without one): only the seed, batch size, dataset size and "
                "rule were compared"
            )
        if int(state.step) > steps:
            raise ValueError(
                f"cannot resume from {ckpt.directory}: the checkpoint is at step "
                f"{int(state.step)}, past the {steps} steps asked for (a run cannot go back)"
            )
    say(f"resumed from step {int(state.step)} ({ckpt.directory})")
    return state, saved.get("last_metrics") or {}


def _warn(message: str) -> None:
    print(f"sgjax: warning: {message}", file=sys.stderr, flush=True)


class _Saver:
    """What the loop's ``on_step`` hook does for the runner: log, call back, checkpoint."""

    def __init__(self, ckpt, meta, ckpt_every, log_every, steps, callback, start):
        self.ckpt, self.meta, self.every, self.log_every = ckpt, meta, ckpt_every, log_every
        self.steps, self.callback = steps, callback
        self.history: list[dict[str, Any]] = []
        self.last_saved = start if ckpt is not None and ckpt.latest_step() == start else None
        self.good_metrics: dict[str, Any] = {}  # those of the step that produced the state

    def save(self, state: TrainState, metrics: dict[str, Any]) -> None:
        assert self.ckpt is not None
        # Ctrl-C or a stop signal during the save is handled once it is complete (and
        # recorded): the interrupted run then has nothing more to save.
        with deferred_signals():
            self.ckpt.save(state, {**self.meta, "last_metrics": _jsonable(metrics)})
            self.last_saved = int(state.step)

    def on_step(self, n: int, metrics: dict[str, Any], state: TrainState) -> None:
        self.good_metrics = metrics
        if self.log_every and (n % self.log_every == 0 or n == self.steps):
            m = jax.tree.map(np.asarray, metrics)
            self.history.append({"step": n, **m})
            if self.callback is not None:
                self.callback(n, m, state)
        if self.ckpt is not None and (n % self.every == 0 or n == self.steps):
            self.save(state, metrics)

    def _save_last_good(self, state: TrainState) -> str:
        """Save ``state`` if newer than the last checkpoint; a note if it could not be."""
        good = int(state.step)
        if self.ckpt is None or self.last_saved == good:
            return ""
        # ``state`` can still hold inf (a finite gradient times a huge learning rate
        # overflows); then the older checkpoint stays the newest: Checkpointer.save
        # refuses non-finite states.
        try:
            self.save(state, self.good_metrics)
        except FloatingPointError:
            return f" The state at step {good} already held NaN/inf and was not saved."
        return ""

    def stopped(self, err: NonFiniteLossError) -> NonFiniteLossError:
        """The error for a non-finite step, after saving the last good state if that is safe."""
        note = self._save_last_good(err.state) if err.state is not None else ""
        if self.ckpt is not None:
            where = (
                f"the newest checkpoint (step {self.last_saved}) in {self.ckpt.directory} is "
                "the last good state"
                if self.last_saved is not None
                else f"no good checkpoint was written to {self.ckpt.directory}"
            )
            err.add_details(f"{note} Checkpoints: {where}.")
        err.checkpoint_step = self.last_saved
        return err

    def interrupted(self, err: TrainingInterrupted) -> TrainingInterrupted:
        """Ctrl-C: save the last finished step (when checkpointing) and say where it is."""
        self._save_last_good(err.state)
        err.checkpoint_step = self.last_saved
        if self.ckpt is not None:
            err.checkpoint_dir = str(self.ckpt.directory)
        return err


# --------------------------------------------------------------------------------------
# --pipeline runs: checkpoints, stop signals, agreed by every process of the job


class PipelineInterrupted(KeyboardInterrupt):
    """A ``--pipeline`` run stopped by Ctrl-C or a stop signal, after a checkpoint.

    ``step`` is the micro-batches trained, ``checkpoint_step`` the newest checkpoint
    (None without a checkpoint directory), ``signum`` the signal.
    """

    def __init__(self, signum: int, step: int, checkpoint_step: int | None, where: str | None):
        super().__init__(f"stopped after micro-batch {step}")
        self.signum, self.step = signum, step
        self.checkpoint_step, self.checkpoint_dir = checkpoint_step, where


class LostProcessError(ConnectionError):
    """A process of a multi-process job lost contact with another (which died)."""

    one_line = True  # the command line prints it as one message, no traceback


def _any_process(flag: bool) -> bool:
    """True in every process when ``flag`` is true in any (a collective)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


class PipelineRun:
    """Checkpoint/resume and stop signals for :func:`sgjax.pipeline.train_pipelined`.

    Pass :meth:`start` as its ``start`` and :meth:`on_call` as its ``on_call``, inside
    ``with run.signals():``. In every process: the newest checkpoint that verifies is
    restored (``resume``); after every call whose micro-batch count crosses a multiple
    of ``every`` (or reaches ``steps``), the whole state is gathered and process 0 saves
    it; Ctrl-C or a stop signal in *any* process stops *every* process at the same call,
    after a checkpoint, with :class:`PipelineInterrupted` (a process stopping alone
    would leave the others waiting in a collective). Only states at a whole number of
    calls (``per_call`` micro-batches) are saved: a resumed run continues there,
    bit-identical to a run never stopped.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike | None,
        *,
        steps: int,
        per_call: int,
        every: int,
        keep: int = 3,
        resume: bool = False,
        meta: dict[str, Any],
        config: RunConfig | None = None,
        say: Callable[[str], None] = lambda _m: None,
    ):
        from sgjax.infra.pipeline_checkpoint import PipelineCheckpointer

        if resume and ckpt_dir is None:
            raise ValueError("--resume needs --checkpoint-dir (the run to continue)")
        self.steps, self.per_call, self.every = steps, per_call, every
        self.resume, self.config, self.say = resume, config, say
        self.meta = {**meta, "chunk": per_call}
        self.pending: list[int] = []
        self.last_saved: int | None = None
        self.ckpt = (
            PipelineCheckpointer(ckpt_dir, keep=keep, writer=jax.process_index() == 0)
            if ckpt_dir is not None
            else None
        )
        if self.ckpt is not None and self.ckpt.stale_lock:
            _warn(self.ckpt.stale_lock)
        if self.ckpt is not None and not resume and self.ckpt.latest_step() is not None:
            self.close()
            raise ValueError(
                f"{ckpt_dir} already holds checkpoints (newest: micro-batch "
                f"{self.ckpt.latest_step()}); pass --resume to continue that run, or use an "
                "empty directory"
            )

    def start(self, initial: Any) -> tuple[Any, int] | None:
        """The state to resume from (``train_pipelined``'s ``start``), or None."""
        if self.ckpt is None or not self.resume:
            return None
        if self.ckpt.latest_step() is None:
            self.say(f"--resume: no checkpoint in {self.ckpt.directory}; starting a new run")
            return None
        state, saved = self.ckpt.restore_newest_good(initial, report=_warn)
        where = self.ckpt.directory
        for k in (*_MUST_MATCH, "chunk"):
            if saved.get(k) != self.meta.get(k):
                raise ValueError(
                    f"cannot resume from {where}: its run had {k}={saved.get(k)!r}, this one "
                    f"has {k}={self.meta.get(k)!r}. Use the original settings or another "
                    "directory."
                )
        seen = int(saved["step"])
        if self.config is not None:
            problems = self.config.resume_problems(saved.get("run_config", {}), seen)
            if problems:
                raise ValueError(
                    f"cannot resume from {where}: the run differs from the one that wrote "
                    f"it: {'; '.join(problems)}. Use the original settings or another "
                    f"directory ({describe_may_change()})."
                )
        if seen >= self.steps:
            raise ValueError(
                f"the run in {where} is complete ({seen} micro-batches); raise --steps to "
                "continue it"
            )
        self.last_saved = seen
        self.say(f"resumed from micro-batch {seen} ({where})")
        return state, seen

    def on_call(self, seen: int, get_state: Callable[[], Any]) -> None:
        """After each call: checkpoint when due; stop every process on a signal."""
        stop = _any_process(bool(self.pending))
        whole = seen % self.per_call == 0
        last = self.last_saved if self.last_saved is not None else 0
        due = seen // self.every > last // self.every or seen == self.steps
        if self.ckpt is not None and whole and (due or stop) and seen != self.last_saved:
            tree = get_state()  # every process: a collective
            if self.ckpt.writer:
                self.ckpt.save(seen, tree, self.meta)
            self.last_saved = seen
        if stop:
            signum = self.pending[0] if self.pending else int(signal.SIGTERM)
            where = str(self.ckpt.directory) if self.ckpt is not None else None
            raise PipelineInterrupted(signum, seen, self.last_saved, where)

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Ctrl-C and the stop signals are noted, to be acted on at the next call's end.

        The previous handlers come back at the end, unless the block ends with an error
        (then the process is about to exit with it; a late stop signal stays noted)."""
        import threading

        names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in names:
                num = getattr(signal, name, None)
                if num is not None:
                    previous[num] = signal.signal(num, lambda n, _f: self.pending.append(n))
        try:
            yield
        except Exception:
            # Ending with an error (e.g. another process died and the launcher now stops
            # this one): a stop signal must not replace that error with a traceback, so
            # the handlers stay noting ones.
            raise
        except BaseException:
            for num, old in previous.items():
                signal.signal(num, old)
            raise
        else:
            for num, old in previous.items():
                signal.signal(num, old)

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()
