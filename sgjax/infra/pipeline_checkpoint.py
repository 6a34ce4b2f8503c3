"""Checkpoints of ``sgjax train --pipeline`` runs: the whole pipeline state as numpy.

The guarantees of :class:`sgjax.infra.checkpoint.Checkpointer` (one writer per directory,
hashed and verified saves, nothing deleted by a failed save, signals deferred during a
save) on the same pieces, which this module uses from there; the format is one ``.npz``
of the state's leaves and a JSON metadata file per step (a pipeline's state is gathered
from several devices or processes, and orbax's multi-host saving is not needed for it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sgjax.infra import checkpoint as ck


class PipelineCheckpointer:
    """Checkpoints of ``sgjax train --pipeline`` runs: the whole pipeline state as numpy.

    A pipeline's state lives on several devices, often in several processes; every
    process gathers it (a collective, :func:`sgjax.pipeline.train_pipelined`'s
    ``on_call``) and only the writer (process 0) saves it. Same guarantees as
    :class:`Checkpointer`: one writer per directory (the lock), each save written to a
    temporary directory, hashed, renamed into place and verified before the oldest is
    removed (the newest ``keep`` stay; room for keep + 1 is needed), a failed save is one
    :class:`ck.CheckpointWriteError` with nothing deleted, restores ck.verify the hashes and the
    shapes. The step is the number of micro-batches trained.

    Args:
        directory: where the checkpoints go.
        keep: how many of the newest to keep.
        writer: this process writes (takes the lock); the others only read.

    Example:
        >>> import tempfile, numpy as np
        >>> tree = {"w": np.arange(3.0, dtype=np.float32)}
        >>> with tempfile.TemporaryDirectory() as d, PipelineCheckpointer(d) as ck:
        ...     _ = ck.save(50, tree, {"seed": 0})
        ...     state, meta = ck.restore_newest_good(tree)
        ...     ck.steps(), state["w"].tolist(), meta["seed"]
        ([50], [0.0, 1.0, 2.0], 0)
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, writer: bool = True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int ≥ 1, got {keep!r}")
        self.directory = Path(directory).expanduser().resolve()
        self.keep, self.writer = keep, writer
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"checkpoint directory {self.directory} exists and is not a directory")
        orbax = sorted(p.parent.name for p in self.directory.glob("*/_CHECKPOINT_METADATA"))
        if orbax:
            raise ValueError(
                f"{self.directory} holds checkpoints of a run without --pipeline (steps "
                f"{orbax}); resume that run without --pipeline, or use another directory"
            )
        self._lock: ck._DirLock | None = None
        self.stale_lock: str | None = None
        if writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = ck._DirLock(self.directory)
            self.stale_lock = self._lock.stale
            for tmp in self.directory.glob("*.sgjax-tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
            ck._restore_set_aside(self.directory)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present (verified or not), oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in self.directory.iterdir()
            if p.name.isdigit() and (p / ck._PIPE_STATE).exists()
        )

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: Any, metadata: dict[str, Any]) -> int:
        """Write ``tree`` (numpy leaves) and ``metadata`` as the checkpoint of ``step``."""
        if not self.writer:
            raise ValueError("this PipelineCheckpointer reads only (writer=False)")
        leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
        if not all(np.isfinite(a).all() for a in leaves if np.issubdtype(a.dtype, np.inexact)):
            raise ck.NonFiniteStateError(
                f"refusing to checkpoint step {step}: the state holds NaN or inf; the "
                f"checkpoints in {self.directory} (steps {self.steps()}) are kept as they are"
            )
        meta = {"step": step, **metadata, ck.FORMAT_KEY: ck.FORMAT, "kind": "pipeline"}
        where = self.directory / str(step)
        tmp = self.directory / f"{step}.sgjax-tmp"
        aside = self.directory / f"{step}{ck._ASIDE}"
        with ck.deferred_signals():
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                with open(tmp / ck._PIPE_STATE, "wb") as f:
                    arrays: dict[str, Any] = {f"leaf_{i:05d}": a for i, a in enumerate(leaves)}
                    np.savez(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                (tmp / ck._PIPE_META).write_text(json.dumps(meta))
                ck.write_manifest(tmp)
                if where.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(where, aside)
                os.replace(tmp, where)
                problems = ck.verify(where)
                if problems:
                    raise OSError(f"the files read back differ from those written: {problems[0]}")
            except Exception as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if aside.exists():  # the new one never verified: the old one goes back
                    shutil.rmtree(where, ignore_errors=True)
                    os.replace(aside, where)
                elif where.exists() and ck.verify(where):
                    shutil.rmtree(where, ignore_errors=True)
                raise self._write_error(step, e) from None
            shutil.rmtree(aside, ignore_errors=True)
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.directory / str(old), ignore_errors=True)
        return step

    def _write_error(self, step: int, err: BaseException) -> ck.CheckpointWriteError:
        where = f"micro-batch {step}"
        return ck._write_failure(self.directory, self.steps(), self.keep, where, step, err)

    def restore_newest_good(
        self, target: Any, *, report: Callable[[str], None] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint that verifies, read into ``target``'s tree structure.

        Raises:
            FileNotFoundError: no checkpoint.
            ck.CorruptCheckpointError: none verifies (each one named).
            ValueError: the newest good one does not match ``target``'s shapes/dtypes.
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        bad: list[str] = []
        for step in reversed(steps):
            where = self.directory / str(step)
            problems = ck.verify(where)
            if problems:
                bad.append(f"checkpoint step {step} in {self.directory}: {'; '.join(problems[:3])}")
                continue
            with np.load(where / ck._PIPE_STATE) as z:
                leaves = [z[f"leaf_{i:05d}"] for i in range(len(z.files))]
            want = jax.tree.leaves(target)
            mismatch = [
                f"leaf {i}: stored {a.dtype}{list(a.shape)}, expected "
                f"{np.dtype(b.dtype)}{list(np.shape(b))}"
                for i, (a, b) in enumerate(zip(leaves, want))
                if a.shape != tuple(np.shape(b)) or a.dtype != np.dtype(b.dtype)
            ]
            if len(leaves) != len(want) or mismatch:
                raise ValueError(
                    f"checkpoint {where} does not match this pipeline (another network or "
                    f"method?): {len(leaves)} arrays stored, {len(want)} expected"
                    + (f"; {'; '.join(mismatch[:3])}" if mismatch else "")
                )
            if bad and report is not None:
                report("; ".join(bad) + f". Resuming from step {step}, the newest that verifies.")
            meta = json.loads((where / ck._PIPE_META).read_text())
            return jax.tree.unflatten(jax.tree.structure(target), leaves), meta
        raise ck.CorruptCheckpointError(
            f"no checkpoint in {self.directory} verifies, so there is nothing to resume from: "
            + "; ".join(bad)
            + ". Move the directory aside and start the run again.",
            steps[-1],
            bad,
            [],
        )

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> PipelineCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
