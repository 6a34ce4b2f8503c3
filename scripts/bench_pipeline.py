"""Benchmark the update-unlocked SG pipeline against backprop (not a test).

Prints, from one process with fake CPU devices:

1. throughput (examples/s) of single-device backprop and SG, the GPipe backprop pipeline
   and the SG pipeline at N = 2 and 4 devices, with each pipeline's ratio to its ideal
   (N × single-device SG for the SG pipeline; the bubble bound N·M/(M+N−1) × single-device
   backprop for GPipe);
2. MNIST test accuracy of the SG pipeline vs backprop after equal steps (micro-batches)
   and after equal wall time.

    python scripts/bench_pipeline.py                 # both parts
    python scripts/bench_pipeline.py --skip-accuracy # throughput only
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MAX_DEVICES = 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="2,4", help="comma-separated N (default 2,4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--micro-batches", type=int, default=8)
    p.add_argument("--ticks", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--accuracy-steps", type=int, default=1500, help="micro-batches (MNIST)")
    p.add_argument("--accuracy-devices", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    ns = [int(t) for t in args.devices.split(",")]
    need = max([*ns, args.accuracy_devices])
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={need}"
        ).strip()

    import jax

    from sgjax import nets, pipeline
    from sgjax.infra import data

    print(f"{len(jax.devices())} {jax.devices()[0].platform} devices on {os.cpu_count()} cores")
    rows = [
        pipeline.benchmark_pipeline(
            n,
            batch_size=args.batch_size,
            micro_batches=args.micro_batches,
            ticks=args.ticks,
            repeats=args.repeats,
        )
        for n in ns
    ]
    B, M = args.batch_size, args.micro_batches
    print(f"\nThroughput, examples/s (MLP 784-256×(N−1)-10, micro-batch B={B}, GPipe M={M})")
    print(
        "| N | backprop 1 dev | SG 1 dev | backprop 1 dev, batch M·B | GPipe | GPipe / "
        "bubble bound | SG pipeline | SG pipeline / (N × SG 1 dev) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n_devices']} | {r['backprop_1dev']:.0f} | {r['sg_1dev']:.0f} | "
            f"{r['backprop_1dev_big']:.0f} | {r['gpipe']:.0f} | {r['gpipe_ratio']:.2f} | "
            f"{r['sg_pipeline']:.0f} | {r['sg_pipeline_ratio']:.2f} |"
        )
    result: dict = {"throughput": rows}

    if not args.skip_accuracy:
        n = args.accuracy_devices
        ds = data.load("mnist", data_dir=args.data_dir)
        net = nets.mlp([784, *([256] * (n - 1)), 10])
        common = dict(batch_size=B, x_test=ds.x_test, y_test=ds.y_test, chunk=50)
        runs = {}
        runs["sg-pipeline"] = pipeline.train_pipelined(
            "sg-pipeline", net, ds.x_train, ds.y_train, steps=args.accuracy_steps, **common
        )
        runs["backprop (equal steps)"] = pipeline.train_pipelined(
            "backprop", net, ds.x_train, ds.y_train, steps=args.accuracy_steps, **common
        )
        wall = runs["sg-pipeline"]["seconds"]
        runs["backprop (equal time)"] = pipeline.train_pipelined(
            "backprop", net, ds.x_train, ds.y_train, seconds=wall, **common
        )
        runs["gpipe (equal steps)"] = pipeline.train_pipelined(
            "gpipe",
            net,
            ds.x_train,
            ds.y_train,
            steps=args.accuracy_steps,
            micro_batches=M,
            **common,
        )
        runs["gpipe (equal time)"] = pipeline.train_pipelined(
            "gpipe", net, ds.x_train, ds.y_train, seconds=wall, micro_batches=M, **common
        )
        print(f"\nMNIST, {n} stages, B={B}: test accuracy (compile time excluded)")
        print("| run | micro-batches | updates | train seconds | test accuracy |")
        print("|---|---|---|---|---|")
        for name, r in runs.items():
            r.pop("params")
            print(
                f"| {name} | {r['micro_batches_seen']} | {r['updates']} | "
                f"{r['seconds']:.1f} | {r['test_accuracy']:.4f} |"
            )
        result["accuracy"] = runs
    if args.json is not None:
        from sgjax.infra import jsonio

        jsonio.write_or_keep(args.json, result, name="--json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
