"""Train an MLP with the update-unlocked SG pipeline (or a baseline) on N devices.

Fake CPU devices must exist before JAX starts, so this script sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` itself when running on CPU
(unless the flag is already set). Example::

    python scripts/pipeline_train.py --devices 4 --dataset mnist --steps 2000
    python scripts/pipeline_train.py --devices 4 --method gpipe --micro-batches 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4, help="pipeline stages = devices")
    p.add_argument(
        "--method", choices=("sg-pipeline", "gpipe", "backprop", "sg"), default="sg-pipeline"
    )
    p.add_argument("--dataset", choices=("digits", "mnist"), default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--width", type=int, default=256, help="hidden width")
    p.add_argument("--steps", type=int, default=2000, help="micro-batches to train on")
    p.add_argument("--seconds", type=float, default=None, help="wall-clock budget instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--micro-batches", type=int, default=8, help="M of GPipe")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sg-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.devices < 1:
        p.error(f"--devices must be ≥ 1, got {args.devices}")
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        ).strip()

    from sgjax import nets, pipeline

    ds = pipeline.load_dataset(args.dataset, args.data_dir)
    sizes = [ds.x_train.shape[1], *([args.width] * (args.devices - 1)), ds.num_classes]
    try:
        r = pipeline.train_pipelined(
            args.method,
            nets.mlp(sizes),
            ds.x_train,
            ds.y_train,
            steps=None if args.seconds is not None else args.steps,
            seconds=args.seconds,
            batch_size=args.batch_size,
            micro_batches=args.micro_batches,
            lr=args.lr,
            sg_lr=args.sg_lr,
            seed=args.seed,
            x_test=ds.x_test,
            y_test=ds.y_test,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    r.pop("params")
    print(
        f"{r['method']} on {ds.name}, {args.devices} stages: {r['micro_batches_seen']} "
        f"micro-batches ({r['updates']} updates) in {r['seconds']:.1f}s "
        f"(+{r['compile_seconds']:.1f}s compile), {r['examples_per_s']:.0f} examples/s, "
        f"test accuracy {r['test_accuracy']:.4f}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**r, "sizes": sizes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
