"""Run one program as N cooperating processes: one process per pipeline stage.

On one machine, :func:`launch` starts N local copies of a command, pins process i to its
own CPU core(s) when there are enough, and tells each one, through environment variables,
where the coordinator is and which rank it has. The command calls
:func:`initialize_from_env` first thing (``sgjax train --pipeline N`` does), which joins
``jax.distributed`` (CPU collectives over gloo), so that the N processes see one global
list of N devices and the pipelines' mesh spans them: stage s runs in process s, on core
s. Process 0 prints and writes the results; the others stay quiet.

The environment contract (what a user sets by hand on several GPU hosts, one process per
host or per GPU; the launcher sets it on one machine)::

    SGJAX_COORDINATOR=host0:12345   # address of process 0's coordinator
    SGJAX_NUM_PROCESSES=N
    SGJAX_PROCESS_ID=i              # 0..N−1
    SGJAX_CPUS=2,3                  # optional: the cores this process is pinned to

Failure handling of :func:`launch`: if a process exits with a non-zero status (or is
killed), the others are terminated (SIGTERM, then SIGKILL after ``grace`` seconds) and a
:class:`LaunchError` names the rank, its exit status and the end of its output; a run
that exceeds ``timeout`` is stopped the same way. Each child also dies with the launcher
(Linux ``PR_SET_PDEATHSIG``), so a killed launcher leaves no orphans.

Example:
    >>> import sys
    >>> r = launch([sys.executable, "-c", "import os; print(os.environ['SGJAX_PROCESS_ID'])"],
    ...            2, echo=False, timeout=60)
    >>> r.outputs[1].strip(), r.returncodes
    ('1', [0, 0])
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

ENV_COORDINATOR = "SGJAX_COORDINATOR"
ENV_NUM_PROCESSES = "SGJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SGJAX_PROCESS_ID"
ENV_CPUS = "SGJAX_CPUS"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class LaunchError(RuntimeError):
    """A launched process failed (``rank``, ``returncode``) or the run timed out."""

    def __init__(self, message: str, rank: int | None, returncode: int | None) -> None:
        super().__init__(message)
        self.rank, self.returncode = rank, returncode


class LaunchResult(NamedTuple):
    """What :func:`launch` returns: each rank's exit status and output, the cores it was
    pinned to (None: not pinned), the coordinator port and the wall time."""

    returncodes: list[int]
    outputs: list[str]
    cpus: list[list[int] | None]
    port: int
    seconds: float


def cpu_sets(n: int, cores: Sequence[int] | None = None) -> list[list[int] | None]:
    """Split the usable cores into ``n`` disjoint sets (process i gets set i).

    With fewer cores than processes no process is pinned (``[None] * n``): the processes
    would share cores anyway, and the OS schedules them better than a fixed overlap.

    Example:
        >>> cpu_sets(2, [0, 1, 2, 3])
        [[0, 1], [2, 3]]
        >>> cpu_sets(3, [0, 1])
        [None, None, None]
    """
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if n < 1:
        raise ValueError(f"cpu_sets: `n` must be ≥ 1, got {n}")
    if len(cores) < n:
        return [None] * n
    per = len(cores) // n
    return [list(cores[i * per : (i + 1) * per]) for i in range(n)]


@contextlib.contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A free TCP port, held for the duration of the ``with`` block.

    The socket is bound with ``SO_REUSEPORT`` and never listens: the kernel gives the port
    to no other program that asks for a free one, while the coordinator (gRPC, which also
    binds with ``SO_REUSEPORT``) can still bind and listen on it. This closes the race of
    "find a free port, close it, hope it stays free".

    Example:
        >>> with reserved_port() as port:
        ...     1024 <= port < 65536
        True
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


#: Run in the child before the command: ask Linux to SIGKILL it when its parent (the
#: launcher) dies, then exec the command (the request survives exec). A trampoline, not
#: ``preexec_fn``: that forces a fork of the launcher, which JAX warns is unsafe once its
#: threads run. If the launcher died before the request, the child exits at once.
_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "    if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _child_env(
    base: Mapping[str, str], rank: int, n: int, port: int, cpus: list[int] | None, cpu: bool
) -> dict[str, str]:
    env = dict(base)
    env[ENV_COORDINATOR] = f"127.0.0.1:{port}"
    env[ENV_NUM_PROCESSES] = str(n)
    env[ENV_PROCESS_ID] = str(rank)
    env.pop(ENV_CPUS, None)
    if cpus is not None:
        env[ENV_CPUS] = ",".join(map(str, cpus))
    if cpu:
        env["JAX_PLATFORMS"] = "cpu"
        # One CPU device per process: the stage of that process.
        env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), 1)
    return env


def with_device_count(flags: str, n: int) -> str:
    """``XLA_FLAGS`` ``flags`` with any CPU device count replaced by ``n`` fake devices (the
    other flags kept, for a child process that must compile as its parent does).

    Example:
        >>> with_device_count("--xla_cpu_foo=1 --xla_force_host_platform_device_count=8", 2)
        '--xla_cpu_foo=1 --xla_force_host_platform_device_count=2'
    """
    keep = [f for f in flags.split() if _DEVICE_COUNT_FLAG not in f]
    return " ".join([*keep, f"{_DEVICE_COUNT_FLAG}={n}"])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def launch(
    command: Sequence[str],
    n: int,
    *,
    timeout: float | None = None,
    pin: bool = True,
    cores: Sequence[int] | None = None,
    cpu: bool = True,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
    echo: bool = True,
    log_dir: str | os.PathLike | None = None,
) -> LaunchResult:
    """Run ``command`` as ``n`` processes of one ``jax.distributed`` job on this machine.

    Args:
        command: the program and its arguments (e.g. ``[sys.executable, "-m", "sgjax",
            "train", "--pipeline", "2"]``); it must call :func:`initialize_from_env`.
        n: the number of processes.
        timeout: seconds for the whole run; past it every process is stopped and a
            :class:`LaunchError` raised (None: no limit).
        pin: pin process i to its own core(s) (:func:`cpu_sets`) when there are at least
            ``n`` usable cores.
        cores: the cores to share out (default: all this process may use); e.g.
            ``n=1, cores=[0]`` runs one process on one core.
        cpu: run on CPU (``JAX_PLATFORMS=cpu``, one CPU device per process).
        env: the environment of the processes (default: this process's).
        grace: seconds between SIGTERM and SIGKILL when stopping processes.
        echo: copy rank 0's output to this process's stdout as it comes.
        log_dir: keep each rank's output in ``log_dir/rank<i>.log`` (default: a temporary
            directory, removed at the end).

    Returns:
        A :class:`LaunchResult`.

    Raises:
        LaunchError: a process exited with a non-zero status or was killed (the error
            names the first rank that failed, its status and the end of its output), or
            the run timed out; the other processes were stopped first.
    """
    command = [str(c) for c in command]
    if not command:
        raise ValueError("launch: `command` is empty")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"launch: `n` must be an int ≥ 1, got {n!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"launch: `timeout` must be > 0 seconds, got {timeout!r}")
    cpus: list[list[int] | None] = cpu_sets(n, cores) if pin else [None] * n
    base = dict(os.environ if env is None else env)
    with contextlib.ExitStack() as stack:
        logs = Path(log_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        logs.mkdir(parents=True, exist_ok=True)
        port = stack.enter_context(reserved_port())
        files: list[IO[Any]] = []
        procs: list[subprocess.Popen] = []
        stack.callback(_stop_all, procs, grace)
        for rank in range(n):
            f = stack.enter_context(open(logs / f"rank{rank}.log", "w+b"))
            files.append(f)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *command],
                    env=_child_env(base, rank, n, port, cpus[rank], cpu),
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        t0 = time.monotonic()
        echoed = [0]
        try:
            failed = _watch(procs, logs, n, timeout, grace, echo, t0, echoed)
        except KeyboardInterrupt:
            # Ctrl-C or a stop signal to the launcher: the processes get SIGTERM and
            # stop at their next call, checkpointed; say what each one last reported.
            _stop_all(procs, grace)
            if echo:
                _echo(logs / "rank0.log", echoed[0])
            _say_last_lines(_read_all(logs, n), procs)
            raise
        if failed is not None:
            _stop_all(procs, grace)
        if echo:
            _echo(logs / "rank0.log", echoed[0])
        outs = _read_all(logs, n)
        seconds = time.monotonic() - t0
    if failed is not None:
        rank, code = failed
        what = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        others = "".join(
            f"\n  rank {r}: {_last_line(outs[r])}"
            for r in range(n)
            if r != rank and outs[r].strip()
        )
        raise LaunchError(
            f"launch: rank {rank} of {n} {what}; the other ranks were stopped"
            + (f" (their last words:{others})" if others else "")
            + f". Its last output:\n{_tail(outs[rank])}",
            rank,
            code,
        )
    return LaunchResult([int(p.returncode) for p in procs], outs, cpus, port, seconds)


def _last_line(text: str) -> str:
    """The last line a process wrote, preferring its last ``sgjax ...`` message."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("sgjax ")]
    return (said or lines or [""])[-1][:300]


def _say_last_lines(outs: list[str], procs: Sequence[subprocess.Popen]) -> None:
    for r, out in enumerate(outs):
        code = procs[r].returncode
        status = f"exit status {code}" if code is None or code >= 0 else f"signal {-code}"
        print(f"sgjax launch: rank {r} ({status}): {_last_line(out) or '(no output)'}",
              file=sys.stderr, flush=True)  # fmt: skip


def _watch(
    procs: Sequence[subprocess.Popen],
    logs: Path,
    n: int,
    timeout: float | None,
    grace: float,
    echo: bool,
    t0: float,
    echoed: list[int],
) -> tuple[int, int] | None:
    """Poll until every process ended well or one failed: ``failed`` (rank, status) or
    None; a timeout stops them and raises. ``echoed[0]``: bytes of rank 0's output
    echoed so far (kept up to date for the caller)."""
    failed: tuple[int, int] | None = None
    while True:
        if echo:
            echoed[0] = _echo(logs / "rank0.log", echoed[0])
        codes = [p.poll() for p in procs]
        bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            failed = bad[0]
            break
        if all(c == 0 for c in codes):
            break
        if timeout is not None and time.monotonic() - t0 > timeout:
            running = [r for r, c in enumerate(codes) if c is None]
            _stop_all(procs, grace)
            outs = _read_all(logs, n)
            raise LaunchError(
                f"launch: timed out after {timeout:g} s; ranks {running} were still "
                f"running and were stopped. Output of rank {running[0]}:\n"
                f"{_tail(outs[running[0]])}",
                running[0],
                None,
            )
        time.sleep(0.05)
    return failed


def _echo(path: Path, start: int) -> int:
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read()
    if chunk:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    return start + len(chunk)


def _read_all(logs: Path, n: int) -> list[str]:
    return [(logs / f"rank{r}.log").read_text(errors="replace") for r in range(n)]


def _stop_all(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM every live process, SIGKILL those still alive after ``grace`` seconds."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def check_coordinator_port(address: str) -> None:
    """Raise a clear ``ValueError`` if process 0 cannot serve the coordinator at ``address``.

    Checked before JAX starts (given a port in use, its coordinator crashes the process
    with a C++ stack, and the other processes wait for minutes). The port is in use when
    something accepts connections on it, or when it cannot be bound the way the
    coordinator binds it (``SO_REUSEPORT``, all interfaces); the reservation that
    :func:`launch` holds on it does neither.

    Example:
        >>> with socket.create_server(("127.0.0.1", 0)) as busy:
        ...     try:
        ...         check_coordinator_port(f"127.0.0.1:{busy.getsockname()[1]}")
        ...     except ValueError as e:
        ...         print(str(e).split(": ", 1)[1])
        another program accepts connections on it, so process 0 cannot start the job's coordinator there; choose a free port (sgjax launch picks one itself)
    """  # noqa: E501
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{ENV_COORDINATOR} must be HOST:PORT with a port in 1..65535, got {address!r}"
        ) from None
    busy = None
    with contextlib.suppress(OSError), socket.create_connection((host or "127.0.0.1", port), 1):
        busy = "another program accepts connections on it"
    if busy is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("", port))
        except OSError as e:
            busy = f"it cannot be bound ({e.strerror or e})"
        finally:
            sock.close()
    if busy is not None:
        raise ValueError(
            f"{ENV_COORDINATOR}={address} is in use: {busy}, so process 0 cannot start the "
            "job's coordinator there; choose a free port (sgjax launch picks one itself)"
        )


def initialize_from_env(*, timeout: int = 120) -> bool:
    """Join the ``jax.distributed`` job described by the environment, if there is one.

    Reads ``SGJAX_COORDINATOR``, ``SGJAX_NUM_PROCESSES``, ``SGJAX_PROCESS_ID`` (and pins
    this process to ``SGJAX_CPUS`` if set); returns False, doing nothing, when
    ``SGJAX_NUM_PROCESSES`` is unset. On CPU it selects gloo for the cross-process
    collectives. It also keeps freed memory for reuse
    (:func:`sgjax.infra.allocator.keep_freed_memory`, one arena when pinned to one
    core). Call it before JAX computes anything (its backends start then).

    Raises:
        ValueError: an incomplete or malformed environment (naming the variable).

    Example:
        >>> initialize_from_env()  # not a process of a launched job
        False
    """
    if ENV_NUM_PROCESSES not in os.environ:
        return False
    values = {}
    for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        if not os.environ.get(name):
            raise ValueError(f"{ENV_NUM_PROCESSES} is set, so {name} must be set too")
        values[name] = os.environ[name]
    try:
        n, rank = int(values[ENV_NUM_PROCESSES]), int(values[ENV_PROCESS_ID])
    except ValueError:
        raise ValueError(
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
            f"{values[ENV_NUM_PROCESSES]!r} and {values[ENV_PROCESS_ID]!r}"
        ) from None
    if not 0 <= rank < n:
        raise ValueError(f"{ENV_PROCESS_ID} must be in 0..{n - 1}, got {rank}")
    if rank == 0:
        check_coordinator_port(values[ENV_COORDINATOR])  # before JAX: it would crash on it
    cores: set[int] = set()
    if os.environ.get(ENV_CPUS):
        try:
            cores = {int(c) for c in os.environ[ENV_CPUS].split(",")}
        except ValueError:
            raise ValueError(
                f"{ENV_CPUS} must be comma-separated core numbers, got {os.environ[ENV_CPUS]!r}"
            ) from None
        os.sched_setaffinity(0, cores)
    from sgjax.infra.allocator import keep_freed_memory

    # No page faults per call (see its docstring); one malloc arena on one core, where
    # XLA's threads cannot contend for its lock and blocks above a thread arena's 64 MiB
    # heaps (a wide stage's scratch) would otherwise be mapped on every call.
    # (pinned by sgjax, or already: a launcher started under `taskset -c 0` pins nothing
    # itself, and its processes inherit the one core)
    pinned = cores or set(os.sched_getaffinity(0))
    keep_freed_memory(arenas=1 if len(pinned) == 1 else None)
    import jax

    if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service would take SIGTERM for itself; sgjax handles it (and the
    # other stop signals) in Python: every process stops at the same call, checkpointed.
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(
        coordinator_address=values[ENV_COORDINATOR],
        num_processes=n,
        process_id=rank,
        initialization_timeout=timeout,
    )
    return True
