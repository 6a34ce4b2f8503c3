"""Compare the SG pipeline on N processes with its rivals on the same cores (not a test).

Runs :func:`sgjax.apps.bench.pipeline_compare.compare`: one process on one core (backprop; SG), one
process on all cores, and N processes, one per core, of data-parallel backprop, GPipe
and the SG pipeline, on MNIST until a target test accuracy or a time budget; then a
sweep of the SG pipeline against SG on one core over (width, micro-batch) sizes, with
the messaging time per tick. Prints markdown tables and the load average at start and
end (speed figures taken under load are not speed figures).

``--model transformer``: the same contenders on the character transformer LM of the
one-device study on Tiny Shakespeare (:mod:`sgjax.apps.bench.pipeline_compare_lm`),
reporting tokens/s, seconds to a target validation BPC and the final validation BPC; no
sweep.

    python scripts/bench_pipeline.py                  # the full run (about 5 minutes)
    python scripts/bench_pipeline.py --quick          # a smoke test of the machinery
    python scripts/bench_pipeline.py --seed 1 --no-sweep --json runs/compare-s1.json
    python scripts/bench_pipeline.py --model transformer --seconds 60 --json runs/lm.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: the transformer's default target, a validation BPC: one-core backprop in the one-device
#: study (docs/results/dni-transformer) passed 3.74 at 25 s of training and 3.51 at 50 s
#: (2.76 at 1,000 steps, 260 s), so it reaches 3.6 in about 40 s, within a 60 s budget
#: (3.6: about the add-one bigram's 3.58; 3.0 would take backprop ~150 s)
LM_TARGET = 3.6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="mlp",
        help="mlp (MNIST) or transformer (Tiny Shakespeare); default %(default)s",
    )
    p.add_argument("--processes", type=int, default=2)
    p.add_argument(
        "--sizes", default=None,
        help="the MLP of the main table, comma-separated layer sizes (default: "
        "784,512,512,512,10)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 64 (mlp), the study's 16 (transformer)")  # fmt: skip
    p.add_argument("--micro-batches", type=int, default=8, help="GPipe's M (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="training budget per contender")
    p.add_argument("--target", type=float, default=None,
                   help="mlp: test accuracy to reach (default 0.95); transformer: validation "
                   f"BPC to reach (default {LM_TARGET})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="every contender's seed (default 0)")
    p.add_argument(
        "--eval-every", type=int, default=None,
        help="micro-batches between test evaluations, the resolution of the time to the "
        "target (default 200 for mlp — a call of 50 —, 10 for transformer)",
    )  # fmt: skip
    p.add_argument("--no-sweep", action="store_true", help="skip the throughput sweep")
    p.add_argument("--sweep-seconds", type=float, default=5.0)
    p.add_argument(
        "--sweep", default=None,
        help="WIDTHxMICRO_BATCH[xHIDDEN_LAYERS] points of the sweep (3 hidden layers unless "
        "given), comma-separated (default: 256x32,512x64,1024x128)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets (smoke test)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from sgjax.apps.bench import pipeline_compare_lm as L
    from sgjax.apps.bench.pipeline_compare import SWEEP, compare, format_tables, sweep_point

    problem = L.arg_problem(
        args.model, target=args.target, processes=args.processes,
        sizes_given=args.sizes is not None, sweep_given=args.sweep is not None,
    )  # fmt: skip
    if problem is None and args.seed < 0:
        problem = f"--seed: expected an int >= 0, got {args.seed}"
    if problem is None and args.eval_every is not None and args.eval_every < 1:
        problem = f"--eval-every: expected an int >= 1, got {args.eval_every}"
    if problem is not None:
        p.error(problem)
    try:
        sweep = (
            SWEEP
            if args.sweep is None
            else tuple(sweep_point([int(v) for v in it.split("x")]) for it in args.sweep.split(","))
        )
    except ValueError:
        p.error(
            f"--sweep: expected WIDTHxMICRO_BATCH[xHIDDEN_LAYERS][,...] of positive ints, "
            f"got {args.sweep!r}"
        )
    try:
        sizes = tuple(int(v) for v in (args.sizes or "784,512,512,512,10").split(","))
        if len(sizes) < 3 or min(sizes) < 1 or sizes[0] != 784 or sizes[-1] != 10:
            raise ValueError
    except ValueError:
        p.error(f"--sizes: expected 784,H1,...,10 (positive ints, MNIST), got {args.sizes!r}")

    from sgjax.infra import jsonio

    kwargs: dict = dict(
        model=args.model, sizes=sizes, processes=args.processes, batch_size=args.batch_size,
        micro_batches=args.micro_batches, seconds=args.seconds, target=args.target,
        sweep_seconds=args.sweep_seconds, data_dir=args.data_dir, sweep=sweep, seed=args.seed,
    )  # fmt: skip
    if args.model == "transformer":
        # the one-device study's settings (medium; smoke for --quick), no sweep; a window
        # of `context` characters is one example
        scale = L.QUICK if args.quick else L.FULL
        kwargs.update(
            sweep=(), lm=L.lm_config(scale, train_windows=8192, eval_windows=64),
            batch_size=L.SCALES[scale]["batch"], lr=L.SCALES[scale]["lr"],
            target=LM_TARGET, eval_every=10, chunk=10,
        )  # fmt: skip
        # an evaluation every 10 micro-batches (~2 s of one-core backprop; 64 windows, a
        # forward pass compiled once per process): the time to the target to about 2 s
        if args.quick:
            kwargs.update(
                lm=L.lm_config(scale, train_windows=256, eval_windows=16), seconds=2.0,
                target=5.0, eval_every=200, chunk=10, micro_batches=2,
            )  # fmt: skip
    elif args.quick:
        kwargs.update(
            sizes=(784, 64, 64, 10), seconds=2.0, target=0.5, eval_every=50, chunk=10,
            sweep=((64, 16),), sweep_seconds=1.0, micro_batches=2,
        )  # fmt: skip
    for name, flag in (
        ("batch_size", args.batch_size), ("target", args.target), ("eval_every", args.eval_every),
    ):  # fmt: skip
        if flag is not None:  # what the flags say wins over the model's defaults
            kwargs[name] = flag
    if kwargs["batch_size"] is None:
        kwargs["batch_size"] = 64
    if kwargs["target"] is None:
        kwargs["target"] = 0.95
    if args.no_sweep:
        kwargs["sweep"] = ()
    try:
        result = compare(**kwargs)
    except FileNotFoundError as e:  # Tiny Shakespeare missing: said before any launch
        p.error(f"--data-dir: {e}")
    print()
    print(format_tables(result))
    if args.json is not None:
        jsonio.write_or_keep(args.json, result, name="--json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
