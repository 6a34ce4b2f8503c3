"""``sgjax bench``: how fast the training steps are, and what they cost to compile and hold.

Every figure the targets are stated in is a **ratio taken side by side in one run**:
the machines this is run on are shared and noisy, so absolute times move from run to
run while ratios of interleaved measurements hold. The sections:

``step``
    One training step of the MNIST MLP 784-256-256-256-10 (batch 256, Adam) under each
    of the six update rules: median step time, ratio to backprop, the step's FLOPs (XLA's
    cost analysis of the compiled step), achieved GFLOP/s as a fraction of a large
    ``jnp.dot`` timed in the same rounds (the machine's practical matmul peak), and
    ``overhead`` = (t_rule / t_backprop) / (FLOPs_rule / FLOPs_backprop), which is 1 when
    a rule costs exactly its extra arithmetic. Also the first call (trace + compile +
    run) of each step and the number of compilations after it (must be 0).
``theory``
    Instances per second of a vmapped claim check against a Python loop over the same
    instances (the bench's own copy of the Theorem 1 line-search run: sgjax does not
    import the ``theory`` package that sits above it).
``memory``
    XLA's own account (``compiled.memory_analysis()``) of the peak memory of one training
    step of a deep network (50 stages of 512, batch 1024) under backprop and under SG at
    every boundary, and their ratio.
``pipeline``
    The throughput rows of :mod:`sgjax.apps.bench.pipeline_throughput` on fake CPU
    devices, run in a subprocess (the device count must be set before JAX starts); a
    failure there makes the command exit with status 1.
``recurrent``
    Recurrent DNI (:mod:`sgjax.apps.bench.recurrent_rows`): time per character of a DNI-T
    window step vs a BPTT-T window step vs full BPTT, and XLA's activation memory of a
    DNI-T window vs full BPTT over the sequence.

Timings interleave the contenders round by round (each round runs every contender a
few times back to back) and report medians over rounds; the load average at start and
end is printed so that a reader can judge the conditions.

``--compare BEFORE.json`` adds the change of every figure against an earlier ``--json``
report (:mod:`sgjax.apps.bench.compare`): a regression shows as a row in review.

The package: ``sizes`` (full and quick), ``_measure`` (timing helpers), one module per
section (``steps``, ``claims``, ``memory``, ``pipeline_rows``, ``recurrent_rows``),
``compare``, and this file's command. Harnesses run outside ``sgjax bench``:
``pipeline_throughput`` (what the ``pipeline`` section runs in its subprocess),
``recurrent_speed`` (the ``recurrent`` section's measurements),
``pipeline_compare`` (the pipeline against its rivals on real processes;
``scripts/bench_pipeline.py``) and ``interface_step`` (interfaces against the rule-based
step; ``python -m sgjax.apps.bench.interface_step``).

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["--quick", "--only", "step"]).only
    ['step']
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax

from sgjax.apps.bench import compare
from sgjax.apps.bench._measure import load_average
from sgjax.apps.bench.claims import bench_theory, format_theory
from sgjax.apps.bench.memory import bench_memory, format_memory
from sgjax.apps.bench.pipeline_rows import bench_pipeline, format_pipeline
from sgjax.apps.bench.recurrent_rows import bench_recurrent, format_recurrent
from sgjax.apps.bench.sizes import FULL, QUICK
from sgjax.apps.bench.steps import bench_steps, format_steps, step_rules

__all__ = [
    "FULL",
    "QUICK",
    "SECTIONS",
    "add_arguments",
    "bench_memory",
    "bench_pipeline",
    "bench_recurrent",
    "bench_steps",
    "bench_theory",
    "run",
    "step_rules",
]

SECTIONS = ("step", "theory", "memory", "pipeline", "recurrent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sgjax bench``."""
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON (default: not written)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few repeats, a smoke test (default: the full sizes)",
    )
    parser.add_argument(
        "--compare",
        metavar="BEFORE.json",
        help="also print the change of every figure against this earlier `--json` report "
        "(default: no comparison)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable); one of {', '.join(SECTIONS)} (default: all)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the selected sections, print the tables, optionally write JSON."""
    from sgjax.infra import allocator, jsonio

    if args.json:
        jsonio.check_writable(args.json, name="--json")  # before the benchmarks, not after
    before = compare.load_report(args.compare) if getattr(args, "compare", None) else None
    cfg = QUICK if args.quick else FULL
    only = args.only or list(SECTIONS)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "meta": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "cpu_count": os.cpu_count(),
            "quick": bool(args.quick),
            "load_start": load_average(),
            # the malloc settings the figures were taken under (`sgjax` sets them)
            "allocator": allocator.settings(),
        }
    }
    kept = "freed memory kept" if result["meta"]["allocator"] else "default malloc"
    print(
        f"sgjax bench on {result['meta']['device']} ({os.cpu_count()} CPUs, {kept}), "
        f"load average at start {result['meta']['load_start']}"
    )
    sections = {
        "step": (bench_steps, format_steps),
        "theory": (bench_theory, format_theory),
        "memory": (bench_memory, format_memory),
        "pipeline": (bench_pipeline, format_pipeline),
        "recurrent": (bench_recurrent, format_recurrent),
    }
    for name, (bench, fmt) in sections.items():
        if name in only:
            t0 = time.perf_counter()
            result[name] = bench(cfg)
            result[name]["section_s"] = time.perf_counter() - t0
            print(fmt(result[name]), flush=True)
    result["meta"]["load_end"] = load_average()
    result["meta"]["elapsed_s"] = time.perf_counter() - t_start
    print(
        f"load average at end {result['meta']['load_end']}; "
        f"{result['meta']['elapsed_s']:.0f} s in all"
    )
    if before is not None:
        result["compare"] = {"before": args.compare, **compare.compare(before, result)}
        print(compare.format_compare(result["compare"], label=args.compare))
    if args.json:
        jsonio.write_or_keep(args.json, result, name="--json")
    failed = [name for name in SECTIONS if result.get(name, {}).get("ok") is False]
    if failed:
        print(f"sgjax bench: section(s) failed: {', '.join(failed)}")
        return 1
    return 0
