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

Size: over 600 lines — :class:`Checkpointer` (save, restore, the adoption of older
formats; about 370 lines) and the pieces it shares with
:mod:`sgjax.infra.pipeline_checkpoint`: the directory lock, the manifest and its
verification, signal deferral, quieting orbax's threads, the one-line failure message.
Those shared pieces are the next to move into a module of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sgjax.train import TrainState


class NonFiniteStateError(FloatingPointError):
    """Raised instead of writing a state that holds NaN or inf."""


class CheckpointWriteError(OSError):
    """A save failed (disk full, a file system error): nothing was deleted.

    Attributes:
        step: the step whose save failed.
        kept: the steps of the checkpoints that are there and verify.
    """

    one_line = True  # the command line prints it as one message, no traceback

    def __init__(self, message: str, step: int, kept: list[int]):
        super().__init__(message)
        self.step, self.kept = step, kept

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointDirInUseError(ValueError):
    """Another live process holds the checkpoint directory's lock (one writer at a time)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not match the hashes written when it was saved.

    Attributes:
        step: the checkpoint that failed.
        problems: what is wrong, one line per file.
        good: the steps whose checkpoints verify (may be empty).
    """

    def __init__(self, message: str, step: int, problems: list[str], good: list[int]):
        super().__init__(message)
        self.step = step
        self.problems = problems
        self.good = good


#: the file, inside each step's directory, holding the SHA-256 of the checkpoint's files
MANIFEST = "sgjax_sha256.json"
#: the lock file of a checkpoint directory: who writes to it (pid, host, start, command)
LOCK = "sgjax.lock"
_UNHASHED = f"{MANIFEST}: missing"


#: written into every checkpoint's metadata, inside orbax's commit and so before the
#: hashes: a checkpoint with no hash manifest but this key is a save of this sgjax that
#: was stopped before it was hashed; without it, an sgjax older than the hashes wrote it.
FORMAT_KEY, FORMAT = "sgjax_checkpoint_format", 2


def unhashed_kind(where: Path) -> str | None:
    """Why ``where`` has no hash manifest: ``"interrupted"`` (this format, the process
    stopped between the save and the hashing), ``"older"`` (written by an older sgjax, or
    metadata unreadable: then it is kept, never overwritten), None (it has one)."""
    if (where / MANIFEST).exists():
        return None
    try:
        meta = json.loads((where / "meta" / "metadata").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        meta = None
    return "interrupted" if isinstance(meta, dict) and FORMAT_KEY in meta else "older"


class OlderFormatError(CorruptCheckpointError):
    """The directory's checkpoints were written by an older sgjax, without hashes; they
    are left untouched (``--adopt-older-checkpoints`` checks and hashes them)."""


class OlderLayoutError(ValueError):
    """The checkpoint holds a ``TrainState`` of the layout before the SG rule owned its
    optimiser (a top-level ``sg_opt_state``): this sgjax cannot continue it."""


#: the top-level field of the older ``TrainState`` layout (the SG optimiser's state
#: beside the rule); it now lives in ``rule_state.opt_state``, one state per SG module.
_OLDER_SG_FIELD = "sg_opt_state"


class FirstSaveInterruptedError(CorruptCheckpointError):
    """The only checkpoint was never hashed: the first save was interrupted after orbax's
    commit. :func:`~sgjax.infra.runner.run_training` then starts again from step 0."""


#: signals whose Python handlers wait while a checkpoint is written (Ctrl-C and the
#: signals ``sgjax`` handles like it, see :data:`sgjax.apps.cli.STOP_SIGNALS`)
_DEFERRED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")
_deferring: list[int] = []  # nesting depth of deferred_signals (one entry per level)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back Ctrl-C and the stop signals for the duration of the block.

    A signal arriving inside is remembered and delivered again when the (outermost)
    block ends, so its handler runs after a save has completed, not halfway through it.
    Only in the main thread (elsewhere Python runs no signal handlers); SIGKILL cannot be
    held back (a save is atomic, so it loses at most the save in progress).
    """
    import threading

    if _deferring or threading.current_thread() is not threading.main_thread():
        _deferring.append(0)
        try:
            yield
        finally:
            _deferring.pop()
        return
    pending: list[int] = []
    previous = {}
    for name in _DEFERRED:
        num = getattr(signal, name, None)
        if num is None:
            continue
        old = signal.getsignal(num)
        if callable(old):  # a Python handler (not SIG_DFL / SIG_IGN): hold it back
            previous[num] = signal.signal(num, lambda n, _f: pending.append(n))
    _deferring.append(0)
    try:
        yield
    finally:
        _deferring.pop()
        for num, old in previous.items():
            signal.signal(num, old)
        if pending:
            signal.raise_signal(pending[0])  # the original handler runs now


#: suffix of a checkpoint moved aside while the same step is saved again
_ASIDE = ".sgjax-replaced"
#: the files of a pipeline checkpoint (``--pipeline`` runs, :mod:`sgjax.infra.pipeline_checkpoint`):
#: the state's leaves, the metadata
_PIPE_STATE, _PIPE_META = "state.npz", "meta.json"


def _orbax_thread_error(record: Any) -> bool:
    """False for orbax's log of an exception in one of its threads (the same exception is
    raised to the caller of the save, which reports it in one line)."""
    return "raised an exception" not in str(record.msg) or "orbax" not in record.pathname


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Drop orbax's log records (a failed write logs dozens of tracebacks from its
    threads); the exception itself reaches the caller, which reports it in one line.
    Records its threads log after the save returned are dropped by a filter."""
    import logging

    absl = logging.getLogger("absl")
    if _orbax_thread_error not in absl.filters:
        absl.addFilter(_orbax_thread_error)
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_call_soon_threadsafe: list[Any] = []  # asyncio's, while replaced


def _tolerate_closed_loops(on: bool) -> None:
    """While on, ``call_soon_threadsafe`` on a closed asyncio loop does nothing.

    When a write fails, orbax closes its event loop while tensorstore's threads still
    hold callbacks for it; each then raises "Event loop is closed" in its own thread and
    prints a traceback (dozens, before and after the real error). A callback posted to a
    closed loop can never run, so dropping it loses nothing. On during a save; switched
    off when the save succeeds, left on after a failed one (the threads may still call).
    """
    import asyncio

    if on and not _call_soon_threadsafe:
        orig = asyncio.BaseEventLoop.call_soon_threadsafe
        _call_soon_threadsafe.append(orig)

        def call_soon_threadsafe(self, *args, **kwargs):
            if self.is_closed():
                return None
            return orig(self, *args, **kwargs)

        setattr(asyncio.BaseEventLoop, "call_soon_threadsafe", call_soon_threadsafe)  # noqa: B010
    elif not on and _call_soon_threadsafe:
        setattr(asyncio.BaseEventLoop, "call_soon_threadsafe", _call_soon_threadsafe.pop())  # noqa: B010


def _unretrieved(record: Any) -> bool:
    """False for asyncio's log of a task or future whose exception nobody retrieved."""
    return "exception was never retrieved" not in str(record.msg)


def _quiet_dropped_callbacks() -> None:
    """After a failed save, orbax's abandoned tasks and futures are collected later (at
    exit, after the error is printed): asyncio would log each one's exception, Python warn
    of each coroutine never awaited. The exception was reported once, by the save."""
    import logging
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning
    )
    aio = logging.getLogger("asyncio")
    if _unretrieved not in aio.filters:
        aio.addFilter(_unretrieved)


def _root_cause(err: BaseException) -> tuple[str, int | None]:
    """The innermost OS error behind ``err`` (its message, its errno), else ``err``."""
    seen: set[int] = set()
    e: BaseException | None = err
    found: OSError | None = None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            found = e
        e = e.__cause__ or e.__context__
    if found is not None:
        return f"{found.strerror or found} (errno {found.errno})", found.errno
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "No space left on device" in text or "os_error_code='28'" in text:
        return "No space left on device (errno 28)", 28
    return text[:300], None


def _size(where: Path) -> int:
    return sum(p.stat().st_size for p in where.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10**5 else f"{n / 1e3:.0f} kB"


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(where: Path) -> list[Path]:
    return sorted(p for p in where.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(where: Path) -> None:
    """Hash every file under ``where`` (a complete checkpoint) into ``where/MANIFEST``."""
    files = {
        str(p.relative_to(where)): {"size": p.stat().st_size, "sha256": _hash_file(p)}
        for p in _files(where)
    }
    tmp = where / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    os.replace(tmp, where / MANIFEST)


def verify(where: Path) -> list[str]:
    """What is wrong with the checkpoint in ``where``: ``[]`` when every file matches.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     where = pathlib.Path(d); _ = (where / "a").write_text("hello")
        ...     write_manifest(where)
        ...     ok = verify(where)
        ...     _ = (where / "a").write_text("hellp")
        ...     ok, verify(where)
        ([], ['a: content differs from the hash written when it was saved'])
    """
    mpath = where / MANIFEST
    if not mpath.exists():
        return [
            f"{_UNHASHED}: the checkpoint was never verified (the process stopped "
            "between the save and the hashing, or it was written by an older sgjax)"
        ]
    try:
        files = json.loads(mpath.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("`files` is not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return [f"{MANIFEST}: unreadable ({e})"]
    problems = []
    for rel, want in sorted(files.items()):
        p = where / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{rel}: {p.stat().st_size} bytes, {want['size']} when it was saved")
        elif _hash_file(p) != want["sha256"]:
            problems.append(f"{rel}: content differs from the hash written when it was saved")
    return problems


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


def _owner() -> dict[str, Any]:
    import socket
    import sys
    import time

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv)[:300],
    }


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "a process that left no details"
    cmd = f" ({owner['command']})" if owner.get("command") else ""
    return (
        f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
        f"{owner.get('started', '?')}{cmd}"
    )


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


class _DirLock:
    """One writer per checkpoint directory: ``flock`` on ``<dir>/sgjax.lock``.

    The kernel releases the lock when its process dies, however it dies, so a held lock
    always means a live writer (on a network file system, as far as it supports locks:
    NFSv4 does). The file holds the owner's pid, host, start time and command, and is
    removed on a clean close: a lock file found *unheld* was left by a run that was
    killed (SIGKILL, power loss), which :attr:`stale` describes.
    """

    def __init__(self, directory: Path):
        import fcntl

        self.path = directory / LOCK
        self.stale: str | None = None
        self.fd: int | None = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointDirInUseError(
                    f"checkpoint directory {directory} is in use by another run: "
                    f"{_describe(_read_owner(self.path))}. One run writes to a checkpoint "
                    "directory at a time: wait for that run to end, stop it, or use another "
                    "directory"
                ) from None
            except OSError:  # a file system without locks: go on without one
                os.close(fd)
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # its owner removed it as we opened it
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        old = _read_owner(self.path)
        if old and old.get("pid") != os.getpid():
            self.stale = (
                f"{directory} was locked by {_describe(old)}, which ended without releasing "
                "it (killed, or its machine stopped); that run is no longer writing, so this "
                "one takes the directory over"
            )
        data = json.dumps(_owner()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still held: nobody can take a lock on it meanwhile
        os.close(self.fd)  # releases the lock
        self.fd = None


def _restore_set_aside(directory: Path) -> None:
    """A checkpoint moved aside by a re-save that was killed: put back if the new one never
    completed, else removed."""
    for aside in directory.glob(f"*{_ASIDE}"):
        where = directory / aside.name[: -len(_ASIDE)]
        if where.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, where)


def _remove_settled(
    paths: Callable[[], Sequence[Path]], *, quiet: float = 0.5, limit: float = 20.0
) -> None:
    """Remove every path ``paths()`` names until none has existed for ``quiet`` seconds
    (at most ``limit`` seconds: what is still there then is removed by the next open)."""
    end = time.monotonic() + limit
    gone_since = None
    while time.monotonic() < end:
        present = [p for p in paths() if p.exists()]
        for p in present:
            shutil.rmtree(p, ignore_errors=True)
        if present:
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= quiet:
            return
        time.sleep(0.02)


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
