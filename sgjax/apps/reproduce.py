"""``sgjax reproduce EXPERIMENT``: the paper's experiments as PNGs, results.json, report.md.

Experiments: ``fig2`` (loss reconstruction on the 2-D grid, with the Fig. 9 ablations),
``fig3`` (RDM drift; also logs SG-vs-true-gradient cosines), ``fig4`` (MNIST depth and
activation), ``fig5`` (weight norms), ``fig8`` (linear probes), ``dni-mnist`` (the DNI
paper's every-layer MNIST FCN), ``dni-cnn`` (the same with a CNN and convolutional SG
modules), ``dni-rnn`` (the DNI paper's recurrent experiments: Copy, Repeat Copy and Tiny
Shakespeare with truncated BPTT vs boundary SGs; :mod:`sgjax.apps.experiments.rnn`),
``dni-transformer`` (a character transformer on Tiny Shakespeare with SGs between its
blocks — DNI, cDNI, cDNI + prop — against backprop at equal steps and equal wall time;
:mod:`sgjax.apps.experiments.transformer_lm`), or ``all``. Figs. 3, 5 and 8 share their
trained networks through a cache directory (default ``<out>/../_cache``), so they train
once.

Scales: ``smoke`` runs in seconds (tests, CI); ``medium`` is the largest that fits a 2-core
CPU in minutes (settings in each report); ``paper`` follows the paper (Adam 3e-5, 100k
steps — hours to days on a CPU).

Every claim gets a verdict — held / consistent / contradicted / inconclusive — with its
margin (docs/reproduce.md, "Verdicts"). ``--set NAME=VALUE`` overrides one setting of the
scale (e.g. ``--set depths=20 --set activations=relu`` for fig4); ``--aggregate DIR …``
recomputes the claims of runs with different seeds from their results.json and combines
them (a verdict that flips between seeds is inconclusive).

Example (shell)::

    sgjax reproduce fig3 --scale medium --out runs/fig3
    sgjax reproduce all --scale smoke --out runs/smoke --no-progress
    sgjax reproduce fig3 --aggregate runs/s0/fig3 runs/s1/fig3 runs/s2/fig3 --out runs/fig3-3seeds
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from datetime import datetime, timezone
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
        help="MNIST IDX directory, or for dni-rnn and dni-transformer the Tiny Shakespeare "
        "directory "
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_override,
        help="override one setting of the scale (repeatable; tuples comma-separated), e.g. "
        "--set depths=20 --set activations=relu (fig2, fig3/5/8, fig4, dni-mnist; "
        "default: none, the scale's settings)",
    )
    p.add_argument(
        "--aggregate",
        nargs="+",
        default=None,
        metavar="DIR",
        help="train nothing: recompute the claims of earlier runs of EXPERIMENT (one per "
        "seed, each DIR holding its results.json and report.md) and write their combined "
        "verdicts to --out (aggregate.md, verdicts.json); default: off, train and judge",
    )


def _override(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"--set expects NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


#: experiments whose settings ``--set`` can override
SETTABLE = ("fig2", "fig3", "fig4", "fig5", "fig8", "dni-mnist", "p-update")


def _seed_of(directory: Path) -> int:
    """The seed of a run, from its results.json (``seed``) or its report.md header."""
    res = json.loads((directory / "results.json").read_text())
    if isinstance(res.get("seed"), int):
        return int(res["seed"])
    report = directory / "report.md"
    m = re.search(r"seed (\d+)\.", report.read_text()) if report.exists() else None
    if m is None:
        raise ValueError(f"--aggregate: no seed found in {directory}/results.json or report.md")
    return int(m.group(1))


def _same_experiment(name: str, d: Path, res: dict, titles: dict[str, Path]) -> None:
    """Refuse runs of different experiments, told apart by their report's title."""
    report = d / "report.md"
    title = report.read_text().partition("\n")[0].lstrip("# ").strip() if report.exists() else ""
    if title:
        titles.setdefault(title, d)
    if len(titles) > 1:
        (t1, d1), (t2, d2) = list(titles.items())[:2]
        raise ValueError(
            f"--aggregate: the directories hold different experiments: {d1} is {t1!r}, {d2} "
            f"is {t2!r}; aggregate the seeds of one experiment ({name})"
        )


def aggregate_runs(
    name: str, dirs: list[Path], out: Path, data_dates: dict[str, str] | None = None
) -> dict:
    """Recompute ``name``'s claims for each run in ``dirs`` and combine them over seeds.

    The runs must differ only in the seed (same steps, width, scale settings that change
    the networks); writes ``aggregate.md`` and ``verdicts.json`` to ``out``. A claim
    registered after a run's data existed (its results.json's ``run_date``, else
    ``data_dates[str(dir)]``; with neither, only the paper digest's claims count as
    registered before) is exploratory for that run (:mod:`sgjax.apps.experiments.registry`).
    """
    from sgjax.apps.experiments import common as C

    exp = EXPERIMENTS[name]
    if exp.claims is None:
        raise ValueError(f"--aggregate: {name} has no per-claim verdicts; choose one of "
                         f"{[n for n, e in EXPERIMENTS.items() if e.claims]}")  # fmt: skip
    per_seed: dict[int, dict] = {}
    budgets = {}
    titles: dict[str, Path] = {}
    for d in dirs:
        if not (d / "results.json").exists():
            raise ValueError(f"--aggregate: {d} has no results.json")
        res = json.loads((d / "results.json").read_text())
        _same_experiment(name, d, res, titles)
        seed = _seed_of(d)
        if seed in per_seed:
            raise ValueError(f"--aggregate: seed {seed} appears twice ({d})")
        date = res.get("run_date") or (data_dates or {}).get(str(d))
        try:
            claims = exp.claims(res)
        except KeyError as e:
            raise ValueError(
                f"--aggregate: {d} is not a run of {name} (its results.json has no "
                f"{e.args[0]!r}); aggregate the seeds of one experiment"
            ) from None
        per_seed[seed] = C.preregistered(claims, date)
        cfg = res.get("settings", {})
        budgets[seed] = tuple(cfg.get(k) for k in ("steps", "width", "lr", "hidden"))
    if len(set(budgets.values())) > 1:
        raise ValueError(
            f"--aggregate: the runs differ in (steps, width, lr, hidden): {budgets} — "
            "aggregate only runs that differ in the seed"
        )
    agg = C.aggregate(per_seed)
    steps, width, lr, hidden = next(iter(budgets.values()))
    out.mkdir(parents=True, exist_ok=True)
    C.write_json(out / "verdicts.json", {"experiment": name, "runs": [str(d) for d in dirs],
                                          "steps": steps, "claims": agg})  # fmt: skip
    lines = [
        f"# {name}: verdicts over seeds {sorted(per_seed)}",
        "",
        f"Steps {steps}, width {width}, hidden {hidden}, lr {lr}. Runs: "
        + ", ".join(f"`{d}`" for d in dirs),
        "",
        "Verdicts as defined in docs/reproduce.md, over the seeds run after the claim was "
        "registered (earlier ones are exploratory): held needs every seed held (≥ "
        f"{C.MIN_SEEDS_HELD} seeds, the paper's regime) and the mean margin beyond the "
        "resolution (the larger of the measurement's and the spread over seeds, t₀.₉₅·sd/√n); "
        "consistent, every seed passes; contradicted, every seed fails in the regime (≥ "
        f"{C.MIN_SEEDS_CONTRADICTED} seeds, beyond the resolution); untested, every seed "
        "fails outside the regime or cannot measure it; otherwise inconclusive.",
        "",
        C.aggregate_table(agg),
        "",
    ]
    notes = sorted({n for a in agg.values() for n in a["notes"]})
    lines += [f"- {n}" for n in notes]
    (out / "aggregate.md").write_text("\n".join(lines).rstrip() + "\n")
    return agg


def _verdict_counts(claims: dict) -> str:
    counts = Counter(c.get("verdict", "held" if c.get("holds") else "contradicted")
                     for c in claims.values())  # fmt: skip
    from sgjax.apps.experiments.common import VERDICTS

    return ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v])


def _stamp(path: Path, started: str) -> None:
    """Record when the run began in its results.json (``run_date``): claims registered
    after it are exploratory for it (:mod:`sgjax.apps.experiments.registry`)."""
    if path.exists():
        from sgjax.apps.experiments.common import write_json

        res = json.loads(path.read_text())
        res["run_date"] = started
        write_json(path, res)


def run(args: argparse.Namespace) -> int:
    from sgjax.apps.experiments.common import Context
    from sgjax.infra.config import check_seed

    check_seed(args.seed)  # JAX keys hold 32 bits: 2**32 would rerun seed 0
    overrides = dict(args.overrides)
    if args.aggregate is not None:
        if args.experiment == "all" or args.out is None:
            raise ValueError("--aggregate takes one EXPERIMENT (not all) and an --out directory")
        if overrides:
            raise ValueError("--aggregate trains nothing: --set does not apply")
        agg = aggregate_runs(args.experiment, [Path(d) for d in args.aggregate], Path(args.out))
        print(f"{args.experiment}: {_verdict_counts(agg)} -> {Path(args.out) / 'aggregate.md'}")
        return 0
    if overrides and args.experiment not in SETTABLE:
        raise ValueError(
            f"--set applies to {', '.join(SETTABLE)} (one at a time), not {args.experiment}"
        )
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
            overrides=overrides,
        )
        ctx.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res = EXPERIMENTS[name].run(ctx)
        _stamp(ctx.out / "results.json", started)
        claims = res.get("claims") or {}
        print(
            f"{name}: {len(claims)} claims ({_verdict_counts(claims) or 'none'}), "
            f"{time.perf_counter() - t0:.0f} s -> {ctx.out / 'report.md'}",
            flush=True,
        )
    return 0
