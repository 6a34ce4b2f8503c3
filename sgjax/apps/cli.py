"""The ``sgjax`` command: ``sgjax train | verify | reproduce | bench``.

Each sub-command lives in its own module that exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches. A
sub-command's module (and so JAX) is imported only when that sub-command is asked for,
so that ``sgjax --help`` is instant: each entry of :data:`COMMANDS` names a loader that
imports its module (``verify`` is :mod:`theory.cli`, the claim package's public entry).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType

from sgjax.infra.jsonio import OutputKeptError  # results kept elsewhere: a message, exit 1


def _train() -> ModuleType:
    from sgjax.apps import train_command

    return train_command


def _verify() -> ModuleType:
    from theory import cli

    return cli


def _reproduce() -> ModuleType:
    from sgjax.apps import reproduce

    return reproduce


def _bench() -> ModuleType:
    from sgjax.apps import bench

    return bench


def _launch() -> ModuleType:
    from sgjax.apps import launch

    return launch


#: sub-command -> (loader of the module implementing it, one-line help)
COMMANDS: dict[str, tuple[Callable[[], ModuleType], str]] = {
    "train": (_train, "train a network with one of the registered update rules"),
    "verify": (_verify, "check every formal claim of the paper numerically"),
    "reproduce": (_reproduce, "reproduce one of the paper's experiments"),
    "bench": (_bench, "benchmark training steps, compile time, memory"),
    "launch": (_launch, "run a command as N local processes (one per stage)"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="sgjax",
        description="Synthetic gradients and decoupled neural interfaces in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


#: Signals that end or pre-empt a job, handled like Ctrl-C (checkpoint, resume hint, exit
#: status 128 + the signal's number): ``kill``, ``timeout``, ``docker stop``, systemd and
#: cluster schedulers send SIGTERM; a closed terminal or ssh session SIGHUP; schedulers
#: warn of a pre-emption with SIGUSR1/SIGUSR2 (SGE's ``-notify``, Slurm's ``--signal``)
#: or SIGXCPU (a CPU-time limit).
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread when one of :data:`STOP_SIGNALS` arrives."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def stop_signals_as_interrupts() -> Iterator[list[int]]:
    """Within the block, :data:`STOP_SIGNALS` raise :class:`StopSignal` like Ctrl-C does.

    Yields the list of the signals received (the first one decides the exit status). A
    signal arriving while the first is being handled (the checkpoint is being written)
    is noted, not raised, so that the save completes; SIGKILL still ends the process at
    once (and a checkpoint write is atomic). The previous handlers are restored at the
    end. Outside the main thread nothing is installed.
    """
    received: list[int] = []

    def handler(signum: int, _frame) -> None:
        received.append(signum)
        if len(received) == 1:
            raise StopSignal(signum)

    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                num = getattr(signal, name)
                previous[num] = signal.signal(num, handler)
    try:
        yield received
    finally:
        for num, old in previous.items():
            signal.signal(num, old)


def _interrupted(
    name: str, argv: Sequence[str], err: KeyboardInterrupt, received: Sequence[int] = ()
) -> int:
    """Ctrl-C or a stop signal: say what was kept and how to go on; no traceback.

    The exit status is the shell's convention for a process ended by a signal: 128 + its
    number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    signum = getattr(err, "signum", None) or (received[0] if received else int(signal.SIGINT))
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    step = getattr(err, "step", None)
    where = getattr(err, "checkpoint_dir", None)
    saved = getattr(err, "checkpoint_step", None)
    msg = f"sgjax {name}: {how}" + (f" after step {step}" if step is not None else "")
    if where is not None and saved is not None:
        again = [a for a in argv if a != "--resume"]
        n = os.environ.get("SGJAX_NUM_PROCESSES")  # a process of a multi-process job
        launch = f"launch -n {n} -- " if n else ""
        msg += (
            f"; checkpoint of step {saved} saved in {where}. Resume with"
            + (" (all the job's processes)" if n else "")
            + f":\n  sgjax {launch}{shlex.join(again)} --resume"
        )
    elif name == "reproduce":
        # the experiments keep their own state: fig3/5/8 checkpoint each network in the
        # cache directory (docs/reproduce.md), the others restart
        msg += (
            "; fig3/fig5/fig8 keep each network's training checkpointed every 2000 steps in "
            "the cache directory (run the same command to resume it); other experiments "
            "restart"
        )
    elif step is not None:
        msg += "; nothing was saved (no --checkpoint-dir)"
    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        print(msg, file=sys.stderr, flush=True)
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in COMMANDS:
        # Let argparse print help / the "invalid choice" error with the list of commands.
        parser.parse_args(argv if argv else ["--help"])
        return 2
    name = argv[0]
    from sgjax.infra.allocator import keep_freed_memory

    keep_freed_memory()  # before JAX allocates anything: see the module's docstring
    with stop_signals_as_interrupts() as received:
        return _dispatch(name, argv, subparsers[name], received)


def _dispatch(
    name: str, argv: list[str], sub: argparse.ArgumentParser, received: Sequence[int]
) -> int:
    try:
        module = COMMANDS[name][0]()
        module.add_arguments(sub)
        # The sub-command's own parser: a bad flag prints *its* usage.
        return int(module.run(sub.parse_args(argv[1:])) or 0)
    except KeyboardInterrupt as err:
        return _interrupted(name, argv, err, received)
    except (ValueError, OSError, FloatingPointError, OutputKeptError) as err:
        if isinstance(err, OSError) and not (
            isinstance(err, FileNotFoundError | OutputKeptError) or getattr(err, "one_line", False)
        ):
            raise  # an unexpected system error: its traceback is the information
        # Bad input, diverging runs and failed saves (a full disk) are the user's to fix:
        # a message, not a traceback.
        # (A NonFiniteLossError words it for the command line: no `err.state`.)
        cli_message = getattr(err, "cli_message", None)
        text = cli_message() if callable(cli_message) else str(err)
        print(f"sgjax {name}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
