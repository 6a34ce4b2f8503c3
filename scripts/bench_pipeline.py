"""Compare the SG pipeline on N processes with its rivals on the same cores (not a test).

Runs :func:`sgjax.apps.bench.pipeline_compare.compare`: one process on one core (backprop; SG), one
process on all cores, and N processes, one per core, of data-parallel backprop, GPipe
and the SG pipeline, on MNIST until a target test accuracy or a time budget; then a
sweep of the SG pipeline against SG on one core over (width, micro-batch) sizes, with
the messaging time per tick. Prints markdown tables and the load average at start and
end (speed figures taken under load are not speed figures).

    python scripts/bench_pipeline.py                  # the full run (about 5 minutes)
    python scripts/bench_pipeline.py --quick          # a smoke test of the machinery
    python scripts/bench_pipeline.py --json runs/compare.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument(
        "--sizes", default="784,512,512,512,10",
        help="the MLP of the main table, comma-separated layer sizes (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--micro-batches", type=int, default=8, help="GPipe's M (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="training budget per contender")
    p.add_argument("--target", type=float, default=0.95, help="test accuracy to reach")
    p.add_argument("--sweep-seconds", type=float, default=5.0)
    p.add_argument(
        "--sweep", default="256x32,512x64,1024x128",
        help="WIDTHxMICRO_BATCH[xHIDDEN_LAYERS] points of the sweep (3 hidden layers unless "
        "given), comma-separated (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets (smoke test)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from sgjax.apps.bench.pipeline_compare import compare, format_tables, sweep_point

    try:
        sweep = tuple(
            sweep_point([int(v) for v in item.split("x")]) for item in args.sweep.split(",")
        )
    except ValueError:
        p.error(
            f"--sweep: expected WIDTHxMICRO_BATCH[xHIDDEN_LAYERS][,...] of positive ints, "
            f"got {args.sweep!r}"
        )
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
        if len(sizes) < 3 or min(sizes) < 1 or sizes[0] != 784 or sizes[-1] != 10:
            raise ValueError
    except ValueError:
        p.error(f"--sizes: expected 784,H1,...,10 (positive ints, MNIST), got {args.sizes!r}")

    from sgjax.infra import jsonio

    kwargs: dict = dict(
        sizes=sizes, processes=args.processes, batch_size=args.batch_size,
        micro_batches=args.micro_batches, seconds=args.seconds, target=args.target,
        sweep_seconds=args.sweep_seconds, data_dir=args.data_dir, sweep=sweep,
    )  # fmt: skip
    if args.quick:
        kwargs.update(
            sizes=(784, 64, 64, 10), seconds=2.0, target=0.5, eval_every=50, chunk=10,
            sweep=((64, 16),), sweep_seconds=1.0, micro_batches=2,
        )  # fmt: skip
    result = compare(**kwargs)
    print()
    print(format_tables(result))
    if args.json is not None:
        jsonio.write_or_keep(args.json, result, name="--json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
