"""Save and restore a full :class:`~sgjax.train.TrainState`, atomically, keeping the last k.

A checkpoint directory holds one sub-directory per saved step (``<dir>/<step>/``) with
two items: ``state`` (every leaf of the ``TrainState``: step, network parameters,
optimiser state, rule state — SG modules with their optimiser's state, or FA/DFA
matrices) and ``meta`` (a JSON dict: the data seed, batch size, dataset size, the rule's
name, the last metrics, and whatever the caller adds). The data position is the step:
:func:`sgjax.train.batches` with ``start=step`` replays the exact batch sequence, so
state + step + seed are all a resumed run needs to continue bit for bit.

Storage is orbax-checkpoint's ``CheckpointManager`` (it ships with flax): every save is
written to a temporary directory and renamed into place when complete, so a crash
mid-save never leaves a half-written checkpoint that looks finished (orbax ignores the
temporary directories and deletes them on the next open); only the newest ``keep``
checkpoints are kept, the oldest removed only once the new one is hashed and verified
(so a directory needs room for keep + 1). Saves are synchronous: on the 2-core CPU an
MNIST-MLP-sized state (1.6M floats) takes about 0.1 s, negligible at the save intervals
used. One :class:`Checkpointer` holds a directory at a time (``flock`` on
``sgjax.lock``); a failed save (a full disk) raises :class:`CheckpointWriteError` and
deletes nothing but its own partial files; Ctrl-C and the stop signals wait until a
save in progress is complete (:func:`deferred_signals`).
:class:`sgjax.infra.pipeline_checkpoint.PipelineCheckpointer` does the same for
``--pipeline`` runs, on these pieces (the lock, the manifest, the failure message).

Restoring needs the *structure* of the state (orbax stores arrays, not Python types):
pass a ``TrainState`` or its abstract shapes (:func:`abstract_state`), and the restored
leaves come back with the same tree, shapes and dtypes.

A state with a non-finite leaf is never written (:class:`NonFiniteStateError`): a
checkpoint directory only ever holds good states.

Corruption is detected. After a save completes, the SHA-256 and size of every file of
the checkpoint are written to ``<dir>/<step>/sgjax_sha256.json`` (atomically, last);
:meth:`Checkpointer.restore` checks them before reading anything, and checks the
restored values are finite. A checkpoint whose files were changed, truncated, zeroed or
deleted, whose hash manifest is missing (the process stopped between the save and the
hashing) or unreadable, raises :class:`CorruptCheckpointError` naming the file and the
checkpoints that are still good. A checkpoint without a manifest is never trusted: if it
is the only one and carries this format's mark (:data:`FORMAT_KEY`: a run killed during
its first save), ``--resume`` starts again from step 0 and says so; checkpoints without
the mark (an older sgjax's) are refused and never overwritten —
:meth:`Checkpointer.adopt_older` checks and hashes them; read one anyway with
``Checkpointer.restore(..., verify_hash=False)``.

The policy for resuming (:meth:`Checkpointer.restore_newest_good`, used by
``--resume``): the newest checkpoint that verifies is restored and every newer one that
does not is reported in one message (printed by the runner); nothing is deleted or moved
— a bad checkpoint is overwritten when the resumed run saves that step again. If no
checkpoint verifies, the resume is refused with the list of what is wrong with each.

Example:
    >>> import tempfile, jax, optax
    >>> from sgjax import nets, rules, train
    >>> net, rule = nets.mlp([4, 8, 3]), rules.backprop()
    >>> state = train.init(jax.random.key(0), net, rule, optax.sgd(0.1))
    >>> with tempfile.TemporaryDirectory() as d, Checkpointer(d, keep=2) as ckpt:
    ...     step = ckpt.save(state, {"seed": 0})
    ...     restored, meta = ckpt.restore(state)
    ...     W, W0 = restored.params[0]["W"], state.params[0]["W"]
    ...     ckpt.steps(), meta["seed"], bool((W == W0).all())
    ([0], 0, True)

The pieces shared with :mod:`sgjax.infra.pipeline_checkpoint` (the directory lock, the
manifest and its verification, signal deferral, quieting orbax's threads, the errors) live
in :mod:`sgjax.infra.checkpoint_files` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sgjax.infra.checkpoint_files import (
    _ASIDE,
    _OLDER_SG_FIELD,
    _PIPE_STATE,
    _UNHASHED,
    FORMAT,
    FORMAT_KEY,
    CheckpointWriteError,
    CorruptCheckpointError,
    FirstSaveInterruptedError,
    NonFiniteStateError,
    OlderFormatError,
    OlderLayoutError,
    _DirLock,
    _mb,
    _quiet_dropped_callbacks,
    _quiet_orbax,
    _remove_settled,
    _restore_set_aside,
    _root_cause,
    _size,
    _tolerate_closed_loops,
    unhashed_kind,
    verify,
    write_manifest,
)
from sgjax.infra.checkpoint_files import (  # re-exported for users and pipeline_checkpoint
    _PIPE_META as _PIPE_META,
)
from sgjax.infra.checkpoint_files import (
    LOCK as LOCK,
)
from sgjax.infra.checkpoint_files import (
    MANIFEST as MANIFEST,
)
from sgjax.infra.checkpoint_files import (
    CheckpointDirInUseError as CheckpointDirInUseError,
)
from sgjax.infra.checkpoint_files import (
    deferred_signals as deferred_signals,
)
from sgjax.train import TrainState


def abstract_state(state_fn, *args, **kwargs) -> Any:
    """The shapes and dtypes of ``state_fn(*args, **kwargs)`` without computing it.

    Use it to build the restore target cheaply, e.g.
    ``abstract_state(train.init, key, net, rule, optimizer)``.

    Example:
        >>> import jax, optax
        >>> from sgjax import nets, rules, train
        >>> a = abstract_state(train.init, jax.random.key(0), nets.mlp([2, 3]),
        ...                    rules.backprop(), optax.sgd(0.1))
        >>> a.params[0]["W"].shape
        (2, 3)
    """
    return jax.eval_shape(lambda: state_fn(*args, **kwargs))


def _finite(tree: Any) -> bool:
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            return False
    return True


def _restore_target(target: Any) -> Any:
    """ShapeDtypeStructs with a concrete sharding (orbax needs one to place arrays)."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(leaf, target)


def _orbax_name(path: tuple) -> str:
    """A key path as orbax names the stored array: ``opt_state.0.mu.1.W``."""
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey, SequenceKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _write_failure(
    directory: Path, steps: Sequence[int], keep: int, what: str, step: int, err: BaseException
) -> CheckpointWriteError:
    """The one-line error of a failed save of ``what`` (``"step 12"``): the cause, what was
    kept (and verifies), the room the directory needs, how to go on."""
    reason, errno = _root_cause(err)
    kept = [s for s in steps if not verify(directory / str(s))]
    size = max((_size(directory / str(s)) for s in kept), default=0)
    room = (
        f"; each checkpoint takes about {_mb(size)}, and the directory needs room for "
        f"{keep + 1} of them (keep={keep}, plus the new one, written and verified before the "
        "oldest is removed)"
        if size
        else ""
    )
    todo = "free some space" if errno == 28 else "fix the cause"
    return CheckpointWriteError(
        f"could not write the checkpoint of {what} to {directory}: {reason}. "
        "Nothing was deleted: "
        + (
            f"the checkpoints of steps {kept} are kept and verify"
            if kept
            else "no checkpoint had been written yet"
        )
        + f"{room}. To go on, {todo}, then rerun with --resume",
        step,
        kept,
    )


class Checkpointer:
    """Atomic save/restore of ``TrainState`` + JSON metadata in ``directory``, newest ``keep``.

    Args:
        directory: where the checkpoints go (created if missing).
        keep: how many of the newest checkpoints to keep (≥ 1).

    Only one ``Checkpointer`` (in any process) holds a directory at a time: the second
    gets :class:`CheckpointDirInUseError` naming the first's pid, host and command. A lock
    left by a killed process is taken over, and :attr:`stale_lock` says whose it was.

    Use it as a context manager, or call :meth:`close` when done.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int ≥ 1, got {keep!r}")
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.keep = keep
        self.directory = Path(directory).expanduser().resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"checkpoint directory {self.directory} exists and is not a directory")
        piped = sorted(p.parent.name for p in self.directory.glob(f"*/{_PIPE_STATE}"))
        if piped:
            raise ValueError(
                f"{self.directory} holds checkpoints of a --pipeline run (micro-batches "
                f"{piped}); resume it with the same --pipeline N, or use another directory"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _DirLock(self.directory)  # first: nothing below touches another's run
        #: what was found of a lock left by a killed run (None: there was none)
        self.stale_lock = self._lock.stale
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        ocp = self._ocp
        # Leftovers of a save that was killed midway: never complete, so never a
        # checkpoint. Removed here, synchronously (orbax's own clean-up runs in the
        # background and may not have finished when the manager is closed).
        if self.directory.is_dir():
            for tmp in self.directory.glob(f"*{ocp.utils.TMP_DIR_SUFFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)
            _restore_set_aside(self.directory)
        self._mgr = ocp.CheckpointManager(
            self.directory,
            # Named handlers, so that a fresh manager can read an existing checkpoint's
            # metadata (and nothing logs "could not be restored").
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                # No retention by orbax (it removes the oldest before the new one is
                # hashed): save() removes old checkpoints once the new one verifies.
                enable_async_checkpointing=False,
                create=True,
            ),
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, oldest first."""
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None if there is none."""
        return self._mgr.latest_step()

    def save(self, state: TrainState, metadata: dict[str, Any] | None = None) -> int:
        """Write ``state`` (at its own ``state.step``) and ``metadata``; returns the step.

        Raises:
            NonFiniteStateError: a leaf of ``state`` is NaN or inf (nothing is written).
            ValueError: ``metadata`` is not JSON-serialisable.
        """
        ocp = self._ocp
        step = int(state.step)
        if not _finite(state):
            raise NonFiniteStateError(
                f"refusing to checkpoint step {step}: the state holds NaN or inf; the "
                f"checkpoints in {self.directory} (steps {self.steps()}) are kept as they are"
            )
        meta = {"step": step, **(metadata or {}), FORMAT_KEY: FORMAT}
        try:
            json.dumps(meta)
        except TypeError as e:
            raise ValueError(f"checkpoint `metadata` must be JSON-serialisable: {e}") from e
        where = self.directory / str(step)
        aside = self.directory / f"{step}{_ASIDE}"
        if step in self._mgr.all_steps() and unhashed_kind(where) == "older":
            raise ValueError(
                f"refusing to overwrite the checkpoint of step {step} in {self.directory}: an "
                "older sgjax wrote it (see Checkpointer.adopt_older)"
            )
        if step in self._mgr.all_steps():
            # Re-saving a step (a bad checkpoint the resumed run reached again): the old
            # one is moved aside, and removed only once the new one is verified.
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(where, aside)
            self._mgr.reload()
        _tolerate_closed_loops(True)  # until the save succeeds: see the function
        try:
            with _quiet_orbax():
                self._mgr.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                    ),
                    force=True,
                )
                self._mgr.wait_until_finished()
            write_manifest(where)  # last: a checkpoint without it is unverified
            problems = verify(where)
            if problems:
                raise OSError(f"the files read back differ from those written: {problems[0]}")
        except Exception as e:
            self._discard_failed(step, aside)
            _quiet_dropped_callbacks()
            raise self._write_error(step, e) from None
        _tolerate_closed_loops(False)
        shutil.rmtree(aside, ignore_errors=True)
        # Retention, only now that the new checkpoint is verified: the newest `keep`
        # stay. At its peak the directory holds keep + 1 checkpoints.
        for old in self.steps()[: -self.keep]:
            self._mgr.delete(old)
        return step

    def _discard_failed(self, step: int, aside: Path) -> None:
        """Remove what a failed save of ``step`` left, put back what it replaced."""
        ocp = self._ocp
        with _quiet_orbax():
            with contextlib.suppress(Exception):
                self._mgr.wait_until_finished()
        # The temporary directory, and the step's own (never verified). tensorstore's
        # threads may still be writing into them when orbax has given up, and recreate a
        # directory just removed (seen: 1 run in 6 on a full tmpfs): removed until none
        # has come back for a while.
        _remove_settled(
            lambda: [
                *self.directory.glob(f"{step}{ocp.utils.TMP_DIR_SUFFIX}*"),
                self.directory / str(step),
            ]
        )
        if aside.exists():
            os.replace(aside, self.directory / str(step))
        with contextlib.suppress(Exception):
            self._mgr.reload()

    def _write_error(self, step: int, err: BaseException) -> CheckpointWriteError:
        return _write_failure(self.directory, self.steps(), self.keep, f"step {step}", step, err)

    def restore(
        self, target: Any, *, step: int | None = None, verify_hash: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        """Read the checkpoint at ``step`` (default: the newest) into ``target``'s structure.

        Args:
            target: a ``TrainState`` (or any pytree of arrays / ShapeDtypeStructs) with the
                saved tree structure, shapes and dtypes; see :func:`abstract_state`.
            step: which checkpoint (default: the latest).
            verify_hash: check the files against the hashes written at save time first
                (``False`` reads a checkpoint without a manifest, at your own risk).

        Returns:
            ``(state, metadata)``.

        Raises:
            FileNotFoundError: no (such) checkpoint in the directory.
            CorruptCheckpointError: the checkpoint's files do not match their hashes, or
                it holds non-finite values (the message names the file and the good steps).
            ValueError: the checkpoint does not match ``target`` (another model/rule).
        """
        ocp = self._ocp
        available = self.steps()
        if step is None:
            if not available:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            step = available[-1]
        elif step not in available:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; present: {available}"
            )
        where = self.directory / str(step)
        if verify_hash:
            problems = verify(where)
            if problems:
                raise self._corrupt(step, problems)
        # Compare the stored arrays with the target before reading them: orbax's own
        # errors on a mismatch are obscure (and leave un-awaited coroutines behind).
        self._check_matches(where, self._mgr.item_metadata(step)["state"], target)
        out = self._mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_restore_target(target)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = out["state"]
        if jax.tree.structure(state) != jax.tree.structure(target):  # type: ignore[operator]
            raise ValueError(
                f"checkpoint {where} has tree structure {jax.tree.structure(state)}, "
                f"expected {jax.tree.structure(target)}"
            )
        if not _finite(state):
            raise self._corrupt(step, ["state: holds NaN or inf (never saved so: sgjax refuses)"])
        return state, dict(out["meta"])

    def _corrupt(self, step: int, problems: list[str]) -> CorruptCheckpointError:
        good = [s for s in self.steps() if s != step and not verify(self.directory / str(s))]
        where = self.directory / str(step)
        shown = "; ".join(f"{where / p}" for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        return CorruptCheckpointError(
            f"checkpoint step {step} in {self.directory} is corrupt or incomplete: "
            f"{shown}{more}. Checkpoints that verify: " + (f"steps {good}" if good else "none"),
            step,
            problems,
            good,
        )

    def restore_newest_good(
        self, target: Any, *, report: Callable[[str], None] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restore the newest checkpoint that verifies; report the newer ones that do not.

        ``report`` receives one message naming each skipped checkpoint, what is wrong with
        it, and the step resumed from (nothing is called when the newest is good).

        Raises:
            FileNotFoundError: no checkpoint at all.
            FirstSaveInterruptedError: the only checkpoint was never hashed (a run killed
                during its first save); starting from step 0 loses nothing verified.
            CorruptCheckpointError: no checkpoint verifies (the message lists each one).
            ValueError: the newest good checkpoint does not match ``target``.
        """
        skipped: list[CorruptCheckpointError] = []
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for step in reversed(steps):
            try:
                out = self.restore(target, step=step)
            except CorruptCheckpointError as e:
                skipped.append(e)
                continue
            if skipped and report is not None:
                report(
                    "; ".join(str(e).split(". Checkpoints that verify")[0] for e in skipped)
                    + f". Checkpoints that verify: steps {skipped[-1].good}. Resuming from step "
                    f"{step}, the newest of them (the bad ones are left in place, and replaced "
                    "when the run saves their step again)."
                )
            return out
        unhashed = [e for e in skipped if all(p.startswith(_UNHASHED) for p in e.problems)]
        older = [e.step for e in unhashed if unhashed_kind(self.directory / str(e.step)) == "older"]
        if older:
            others = [e for e in skipped if e.step not in older]
            cut = [str(e).split(". Checkpoints that verify")[0] for e in others]
            also = "; besides, " + "; ".join(cut) if cut else ""
            raise OlderFormatError(
                f"{self.directory} holds checkpoints written by an older sgjax, without the "
                f"hashes this version checks: steps {sorted(older)}{also}. They are left "
                "untouched. To continue that run, add --adopt-older-checkpoints to --resume "
                "(each is read back whole, must match this run's network and hold finite "
                "values, and is then hashed); to start over, use another --checkpoint-dir",
                older[0],
                [p for e in skipped for p in e.problems],
                [],
            )
        if len(skipped) == 1 and unhashed:
            # One checkpoint of this format, never hashed: the run was killed between the
            # first save's commit and its hashing, so nothing older exists. Starting again
            # from step 0 loses nothing that was ever verified (the runner does).
            raise FirstSaveInterruptedError(
                f"{str(skipped[0]).split('. Checkpoints that verify')[0]}; it carries this "
                "sgjax's format mark, so it is a first save stopped before it was hashed (not "
                "an older sgjax's checkpoint), and the only checkpoint: the run starts again "
                "from step 0 (the unverified checkpoint is replaced when that step is saved "
                "again)",
                skipped[0].step,
                skipped[0].problems,
                [],
            )
        raise CorruptCheckpointError(
            f"no checkpoint in {self.directory} verifies, so there is nothing to resume from: "
            + "; ".join(str(e).split(". Checkpoints that verify")[0] for e in skipped)
            + ". Move the directory aside and start the run again.",
            skipped[0].step,
            [p for e in skipped for p in e.problems],
            [],
        )

    def adopt_older(self, target: Any) -> list[int]:
        """Check and hash the checkpoints an older sgjax wrote without hashes.

        Each is read back whole into ``target``'s structure (so it must match the network,
        rule and optimiser, and hold finite values), then its files are hashed as they are
        now: from then on it is verified like any other. Returns the steps adopted.

        Raises:
            ValueError: a checkpoint does not match ``target`` (nothing of it is changed).
        """
        adopted = []
        for step in self.steps():
            where = self.directory / str(step)
            if unhashed_kind(where) == "older":
                self.restore(target, step=step, verify_hash=False)
                write_manifest(where)
                adopted.append(step)
        return adopted

    @staticmethod
    def _check_matches(where: Path, stored: Any, target: Any) -> None:
        saved = {
            m.name: (tuple(m.shape), np.dtype(m.dtype))
            for m in jax.tree.leaves(getattr(stored, "tree", stored))
            if hasattr(m, "shape") and hasattr(m, "name")
        }
        wanted = {
            _orbax_name(path): (tuple(np.shape(x)), np.dtype(x.dtype))
            for path, x in jax.tree_util.tree_flatten_with_path(target)[0]
        }
        older = [k for k in saved if k.split(".")[0] == _OLDER_SG_FIELD]
        if older and not any(k.split(".")[0] == _OLDER_SG_FIELD for k in wanted):
            raise OlderLayoutError(
                f"checkpoint {where} was written by an older sgjax, which kept the SG "
                f"optimiser's state beside the rule (`{_OLDER_SG_FIELD}`, e.g. {older[0]}); "
                "this sgjax keeps it inside the rule state (`rule_state.opt_state`, one state "
                "per SG module), so it cannot continue that run. Finish it with the sgjax "
                "version that wrote it, or start again in another directory"
            )
        problems = [f"{k}: missing from the checkpoint" for k in wanted if k not in saved]
        problems += [f"{k}: in the checkpoint, not in the target" for k in saved if k not in wanted]
        problems += [
            f"{k}: stored {saved[k][1]}{list(saved[k][0])}, expected {v[1]}{list(v[0])}"
            for k, v in wanted.items()
            if k in saved and saved[k] != v
        ]
        if problems:
            raise ValueError(
                f"checkpoint {where} does not match the requested state (a different network, "
                f"rule or optimiser?): {'; '.join(problems[:5])}"
                + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            )

    def close(self) -> None:
        try:
            self._mgr.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
