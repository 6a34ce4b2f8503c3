"""``sgjax launch``: run an sgjax command as N local processes of one JAX job.

Example (shell): the SG pipeline with its two stages in two processes, one core each::

    sgjax launch -n 2 -- train --pipeline 2 --dataset mnist --steps 2000 --json r.json

or a script of your own (any network — a flax model through
:func:`sgjax.flax_adapter.network_from_nnx`, a transformer — trained with
:func:`sgjax.pipeline.train_pipelined`), which must call
:func:`sgjax.pipeline.initialize_from_env` before JAX computes anything::

    sgjax launch -n 2 -- my_pipeline.py --my-flag 3

Process i is pinned to its own core(s) when there are at least N, joins
``jax.distributed`` (gloo collectives on CPU), and holds stage i; process 0 prints and
writes the JSON. A process that fails stops the others, and the error names its rank.
See :func:`sgjax.pipeline.launch` and docs/pipeline.md (also for several GPU hosts).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-n",
        "--processes",
        type=int,
        required=True,
        metavar="N",
        help="number of processes (with `train --pipeline N`: one per stage)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop every process and fail after this many seconds (default: no limit)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin process i to its own core(s)")
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after `--`: the sgjax command to run (-- train --pipeline 2 ...), or a Python "
        "script of yours and its arguments (-- my_pipeline.py ...) that calls "
        "sgjax.pipeline.initialize_from_env()",
    )


def _pipeline_value(command: list[str]) -> str | None:
    for i, arg in enumerate(command):
        if arg == "--pipeline" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--pipeline="):
            return arg.split("=", 1)[1]
    return None


def _checked_script(path: str, n: int) -> str:
    """``path`` if it is a readable script that joins the job, else a ``ValueError``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"sgjax launch: cannot read the script {path}: {e.strerror}") from None
    if "initialize_from_env" not in text:
        raise ValueError(
            f"sgjax launch: {path} never calls sgjax.pipeline.initialize_from_env(), so it "
            f"would not join the job: each of the {n} processes would run it alone. Call it "
            "first thing, before JAX computes anything"
        )
    return path


def run(args: argparse.Namespace) -> int:
    from sgjax.pipeline.distributed import LaunchError, launch

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.processes < 1:
        raise ValueError(f"-n/--processes must be ≥ 1, got {args.processes}")
    if not command:
        raise ValueError("give the sgjax command to run after `--`, e.g. -- train --pipeline 2")
    if command[0] == "launch":
        raise ValueError("the command to run cannot itself be `launch`")
    if command[0].endswith(".py"):
        program = [sys.executable, _checked_script(command[0], args.processes), *command[1:]]
    elif command[0] != "train":
        raise ValueError(
            f"sgjax launch runs the N processes of one `train --pipeline N` job; "
            f"`{command[0]}` does not join such a job, so each of the {args.processes} "
            f"processes would run it in full: run `sgjax {command[0]}` without launch (or "
            "give a Python script of yours, ending in .py, that joins the job)"
        )
    else:
        program = [sys.executable, "-m", "sgjax", *command]
    n = _pipeline_value(command)
    if command[0] == "train" and n != str(args.processes):
        raise ValueError(
            f"sgjax launch -n {args.processes} runs one pipeline stage per process, so the "
            f"command needs --pipeline {args.processes}, got "
            f"{'no --pipeline' if n is None else '--pipeline ' + n}"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores is not None and args.processes > cores:
        print(
            f"sgjax launch: warning: {args.processes} processes on {cores} usable core(s): "
            "they share cores (none is pinned), so every stage runs slower than on a core of "
            "its own and the timings do not compare with a pinned run",
            file=sys.stderr,
            flush=True,
        )
    try:
        launch(
            program,
            args.processes,
            timeout=args.timeout,
            pin=not args.no_pin,
        )
    except LaunchError as err:
        print(f"sgjax launch: error: {err}", file=sys.stderr)
        return 1
    return 0
