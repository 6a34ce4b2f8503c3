"""``sgjax reproduce EXPERIMENT``: the paper's experiments as PNGs, results.json, report.md.

Experiments: ``fig2`` (loss reconstruction on the 2-D grid, with the Fig. 9 ablations),
``fig3`` (RDM drift; also logs SG-vs-true-gradient cosines), ``fig4`` (MNIST depth and
activation), ``fig5`` (weight norms), ``fig8`` (linear probes), ``dni-mnist`` (the DNI
paper's every-layer MNIST FCN), ``dni-cnn`` (the same with a CNN and convolutional SG
modules), ``dni-rnn`` (the DNI paper's recurrent experiments: Copy, Repeat Copy and Tiny
Shakespeare with truncated BPTT vs boundary SGs; :mod:`sgjax.apps.experiments.rnn`), or
``all``. Figs. 3, 5 and 8 share their trained networks through a cache directory (default
``<out>/../_cache``), so they train once.

Scales: ``smoke`` runs in seconds (tests, CI); ``medium`` is the largest that fits a 2-core
CPU in minutes (settings in each report); ``paper`` follows the paper (Adam 3e-5, 100k
steps — hours to days on a CPU).

Example (shell)::

    sgjax reproduce fig3 --scale medium --out runs/fig3
    sgjax reproduce all --scale smoke --out runs/smoke --no-progress
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sgjax.apps.experiments import EXPERIMENTS

NAMES = tuple(EXPERIMENTS)


def _steps(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--steps must be ≥ 1, got {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        metavar="EXPERIMENT",
        choices=(*NAMES, "all"),
        help="; ".join(f"{e.name}: {e.summary}" for e in EXPERIMENTS.values()) + "; or all",
    )
    p.add_argument(
        "--scale",
        choices=("smoke", "medium", "paper"),
        default="smoke",
        help="smoke (seconds), medium (minutes on a CPU), paper (paper settings); default: smoke",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/<experiment>)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of data and initialisation (default: 0)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="MNIST IDX directory, or for dni-rnn the Tiny Shakespeare directory "
        "(default: $SGJAX_DATA_DIR, then ../shared/data/mnist or ../shared/data/tinyshakespeare)",
    )
    p.add_argument(
        "--steps",
        type=_steps,
        default=None,
        help="override the number of training steps of the scale (default: the scale's)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the networks shared by fig3/fig5/fig8 are kept "
        "(default: <out>/../_cache, or <out>/_cache for all)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")


def run(args: argparse.Namespace) -> int:
    from sgjax.apps.experiments.common import Context

    names = NAMES if args.experiment == "all" else (args.experiment,)
    if args.experiment == "all":
        root = Path(args.out or "runs")
        outs = {n: root / n for n in names}
        cache = Path(args.cache_dir) if args.cache_dir else root / "_cache"
    else:
        out = Path(args.out or Path("runs") / args.experiment)
        outs = {args.experiment: out}
        cache = Path(args.cache_dir) if args.cache_dir else out.parent / "_cache"
    from sgjax.infra.jsonio import check_writable

    for name in names:  # unwritable --out / --cache-dir: refused now, not after training
        check_writable(outs[name], name="--out", directory=True)
    check_writable(cache, name="--cache-dir", directory=True)
    for name in names:
        ctx = Context(
            out=outs[name],
            scale=args.scale,
            seed=args.seed,
            data_dir=args.data_dir,
            steps=args.steps,
            progress=not args.no_progress,
            cache_dir=cache,
        )
        ctx.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        res = EXPERIMENTS[name].run(ctx)
        claims = res.get("claims") or {}
        if not claims and "summary" in res:  # fig2: claims per data/loss pair
            claims = {
                f"{r}: {k}": {"holds": v}
                for r, row in res["summary"]["per_run"].items()
                for k, v in row["claims"].items()
            }
        held = sum(bool(c["holds"]) for c in claims.values())
        print(
            f"{name}: {held}/{len(claims)} claims held, {time.perf_counter() - t0:.0f} s -> "
            f"{ctx.out / 'report.md'}",
            flush=True,
        )
    return 0
