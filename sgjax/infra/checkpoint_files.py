"""The pieces every sgjax checkpoint writer shares: the errors, the per-directory lock, the
SHA-256 manifest and its verification, the deferral of stop signals during a save, and
quieting orbax's background threads.

:class:`sgjax.infra.checkpoint.Checkpointer` (a ``TrainState``) and
:class:`sgjax.infra.pipeline_checkpoint.PipelineCheckpointer` (a ``--pipeline`` run) are
built on them; both modules re-export the public names, so ``sgjax.infra.checkpoint.verify``
and the errors are where they always were.
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
