"""The pipeline comparison over seeds: one markdown table from several
``scripts/bench_pipeline.py --seed N --json FILE`` results (same configuration but the
seed; refused otherwise).

Per contender: examples/s (tokens/s for the transformer) as mean ± sd over the seeds, the
ratio to ``backprop, 1 core`` of the same run (mean ± sd of the per-run ratios: the
machine's speed cancels within a run), the seconds to the target in each run (``—`` where
not reached) and the final test accuracy (the transformer: validation BPC), mean ± sd.

    python -m sgjax.apps.bench.pipeline_seeds runs/mlp-s0.json runs/mlp-s1.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _mean_sd(values: Sequence[float], fmt: str) -> str:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:{fmt}} ± {sd:{fmt}}"


def summarize(results: Sequence[dict[str, Any]]) -> str:
    """The table over ``results`` (each a :func:`~sgjax.apps.bench.pipeline_compare.compare`
    result); ValueError if their configurations differ in anything but the seed, or a
    run lacks a contender another has, or a seed repeats.

    Example:
        >>> row = lambda label, eps, reach, acc: {"label": label, "examples_per_s": eps,
        ...     "seconds_to_target": reach, "test_accuracy": acc}
        >>> run = lambda seed, f: {"config": {"seed": seed, "target": 0.9}, "main": [
        ...     row("backprop, 1 core", 100.0 * f, 10.0, 0.95),
        ...     row("sg-pipeline", 150.0 * f, None, 0.5)]}
        >>> print(summarize([run(0, 1.0), run(1, 2.0)]).splitlines()[-1])
        | sg-pipeline | 225 ± 106 | 1.50 ± 0.00 | —, — (0 of 2) | 0.5000 ± 0.0000 |
    """
    if not results:
        raise ValueError("summarize: no results given")
    cfgs = [{k: v for k, v in r["config"].items() if k != "seed"} for r in results]
    if any(c != cfgs[0] for c in cfgs[1:]):
        raise ValueError(
            "summarize: the results differ in more than the seed: "
            f"{cfgs[0]} vs {next(c for c in cfgs if c != cfgs[0])}"
        )
    seeds = [r["config"].get("seed", 0) for r in results]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"summarize: a seed appears twice: {seeds}")
    labels = [row["label"] for row in results[0]["main"]]
    for r, seed in zip(results, seeds):
        if [row["label"] for row in r["main"]] != labels:
            raise ValueError(
                f"summarize: seed {seed}'s contenders {[row['label'] for row in r['main']]} "
                f"differ from {labels}"
            )
    cfg = results[0]["config"]
    lm = cfg.get("model", "mlp") == "transformer"
    T = cfg["lm"]["context"] if lm else 1
    unit = "tokens/s" if lm else "examples/s"
    final = "final val BPC" if lm else "final test accuracy"
    target = f"{cfg['target']:g} val BPC" if lm else f"{cfg['target']:.0%} test accuracy"
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; mean ± sd over the seeds.",
        "",
        f"| contender | {unit} | × backprop 1 core (same run) | s to {target}, per seed | "
        f"{final} |",
        "|---|---|---|---|---|",
    ]
    base = [next(x for x in r["main"] if x["label"] == "backprop, 1 core") for r in results]
    if lm:
        from sgjax.apps.bench.pipeline_compare_lm import bpc
    for i, label in enumerate(labels):
        rows = [r["main"][i] for r in results]
        eps = [(row["examples_per_s"] or float("nan")) * T for row in rows]
        ratio = [
            (row["examples_per_s"] or float("nan")) / (b["examples_per_s"] or float("nan"))
            for row, b in zip(rows, base)
        ]
        reach = [row.get("seconds_to_target") for row in rows]
        hit = sum(t is not None for t in reach)
        times = ", ".join("—" if t is None else f"{t:.1f}" for t in reach)
        if lm:
            fin = _mean_sd([bpc(row["test_loss"], T) for row in rows], ".3f")
        else:
            fin = _mean_sd([row["test_accuracy"] for row in rows], ".4f")
        lines.append(
            f"| {label} | {_mean_sd(eps, '.0f')} | {_mean_sd(ratio, '.2f')} | "
            f"{times} ({hit} of {len(rows)}) | {fin} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="bench_pipeline.py --json results")
    args = p.parse_args(argv)
    results = []
    for f in args.files:
        try:
            results.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"{f}: not a readable JSON result ({e})")
    try:
        print(summarize(results))
    except (ValueError, KeyError) as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
