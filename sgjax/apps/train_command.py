"""``sgjax train``: train an MLP with one of the six rules and report accuracy.

Example (shell)::

    sgjax train --rule sg --dataset digits --steps 500 --json runs/sg.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RULE_NAMES = ("backprop", "sg", "sg-prop", "fa", "dfa", "kickback")


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text}")
        return v

    return parse


def _positive_int(name: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be ≥ {minimum}, got {v}")
        return v

    return parse


def _probability(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0.0 <= v <= 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {text}")
        return v

    return parse


def _placement(text: str) -> str | tuple[int, ...]:
    if text in ("all", "middle", "output"):
        return text
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sg-at must be 'all', 'middle', 'output' or comma-separated boundary numbers, "
            f"got {text!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rule",
        choices=RULE_NAMES,
        default=None,
        help="update rule (default: sg; with --pipeline: sg, or backprop for gpipe)",
    )
    p.add_argument("--dataset", default="digits", help="dataset name (default: digits)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of IDX files for mnist / fashion_mnist "
        "(default: $SGJAX_DATA_DIR, then ../shared/data/<name>)",
    )
    p.add_argument(
        "--train-size",
        type=_positive_int("--train-size"),
        default=None,
        help="use only the first N training examples (mnist / fashion_mnist)",
    )
    p.add_argument(
        "--depth",
        type=_positive_int("--depth", 0),
        default=None,
        help="number of hidden layers (default: 3; with --pipeline N: N − 1)",
    )
    p.add_argument(
        "--width", type=_positive_int("--width"), default=256, help="hidden width (default: 256)"
    )
    p.add_argument("--activation", choices=("relu", "sigmoid", "tanh", "identity"), default="relu")
    p.add_argument(
        "--norm",
        choices=("none", "layer", "batch"),
        default="none",
        help="normalisation after each hidden dense layer (default: none)",
    )
    p.add_argument("--loss", choices=("xent", "mse"), default="xent")
    p.add_argument("--steps", type=_positive_int("--steps"), default=500)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=64)
    p.add_argument(
        "--lr",
        type=_positive_float("--lr"),
        default=1e-3,
        help="Adam learning rate of the network (default: 1e-3)",
    )
    p.add_argument(
        "--sg-lr",
        type=_positive_float("--sg-lr"),
        default=1e-3,
        help="Adam learning rate of the SG modules (default: 1e-3)",
    )
    p.add_argument(
        "--sg-at",
        type=_placement,
        default="all",
        help="SG placement: all | middle | output | e.g. 2,4 (default: all)",
    )
    p.add_argument(
        "--estimator",
        default="conditioned",
        choices=("conditioned", "linear", "label_only", "sigmoid_linear", "mlp"),
        help="SG module (default: conditioned, i.e. hA + yB + C)",
    )
    p.add_argument("--targets", choices=("bootstrap", "true"), default="bootstrap")
    p.add_argument(
        "--prop",
        type=float,
        default=None,
        help="α of SG + prop (default: 0 for sg, 0.1 for sg-prop)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--p-update",
        type=_probability("--p-update"),
        default=1.0,
        help="stochastic updates: each stage (with its SG module) updates with this "
        "probability per step (DNI §3.3; default 1: every step)",
    )
    p.add_argument(
        "--cosine",
        action="store_true",
        help="log the cosine between each signal and the true gradient",
    )
    p.add_argument("--json", type=Path, default=None, help="write final metrics and config here")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save the full training state here periodically (atomic, last 3 kept)",
    )
    p.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"), default=1000)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --checkpoint-dir; ends bit-identical to an uninterrupted run",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group(
        "pipeline",
        "train with one stage (one dense layer) per device: --pipeline N builds N stages, "
        "i.e. --depth N − 1 hidden layers. On CPU, N fake devices are made when JAX has "
        "not started yet (XLA_FLAGS=--xla_force_host_platform_device_count=N).",
    )
    g.add_argument(
        "--pipeline",
        type=_positive_int("--pipeline"),
        default=None,
        metavar="N",
        help="train on a pipeline of N devices (sgjax.pipeline)",
    )
    g.add_argument(
        "--pipeline-method",
        choices=("sg", "gpipe"),
        default=None,
        help="sg: the update-unlocked SG pipeline (default); gpipe: the backprop pipeline",
    )
    g.add_argument(
        "--micro-batches",
        type=_positive_int("--micro-batches"),
        default=None,
        metavar="M",
        help="GPipe: micro-batches per optimiser step (default: 4); --steps counts "
        "micro-batches and must be a multiple of M",
    )


def build_rule(args: argparse.Namespace):
    from sgjax import rules

    if args.rule in ("sg", "sg-prop"):
        prop = args.prop if args.prop is not None else (0.1 if args.rule == "sg-prop" else 0.0)
        if args.rule == "sg-prop" and prop <= 0:
            raise ValueError(f"--prop must be > 0 for sg-prop, got {prop}")
        return rules.synthetic_gradients(
            args.estimator, at=args.sg_at, targets=args.targets, prop=prop
        )
    if args.prop is not None:
        raise ValueError(f"--prop only applies to sg and sg-prop, not {args.rule}")
    return rules.get(args.rule)


IDX_DATASETS = ("mnist", "fashion_mnist", "fashion-mnist")


def load_dataset(args: argparse.Namespace):
    from sgjax.infra import data

    kwargs: dict[str, Any] = {}
    if args.dataset in IDX_DATASETS:
        kwargs["data_dir"] = args.data_dir
        kwargs["n_train"] = args.train_size
    else:
        for flag, value in (("--data-dir", args.data_dir), ("--train-size", args.train_size)):
            if value is not None:
                raise ValueError(
                    f"{flag} applies to {', '.join(IDX_DATASETS)}, not {args.dataset!r}"
                )
        kwargs["seed"] = args.seed  # the split of digits, the draw of generated sets
    return data.load(args.dataset, **kwargs)


def run(args: argparse.Namespace) -> int:
    if args.pipeline is not None:
        return run_pipeline(args)
    for flag, value in (
        ("--pipeline-method", args.pipeline_method),
        ("--micro-batches", args.micro_batches),
    ):
        if value is not None:
            raise ValueError(f"{flag} applies only with --pipeline N")
    args.rule = "sg" if args.rule is None else args.rule
    args.depth = 3 if args.depth is None else args.depth
    import optax

    from sgjax import nets, train
    from sgjax.infra import runner

    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (the run to continue)")
    ds = load_dataset(args)
    x_train = ds.x_train.reshape(len(ds.x_train), -1)
    x_test = ds.x_test.reshape(len(ds.x_test), -1)
    sizes = [x_train.shape[1], *([args.width] * args.depth), ds.num_classes]
    net = nets.mlp(sizes, args.activation, norm=None if args.norm == "none" else args.norm)
    rule = build_rule(args)
    loss = args.loss
    opt, sg_opt = optax.adam(args.lr), optax.adam(args.sg_lr)
    if args.p_update < 1:  # a skipped stage keeps its own optimiser state
        opt, sg_opt = train.stagewise(opt), train.stagewise(sg_opt)
    batch_size = min(args.batch_size, len(x_train))
    config = _config(args)
    t0 = time.perf_counter()
    state, history = runner.run_training(
        net, rule, loss, opt, x_train, ds.y_train,
        steps=args.steps, batch_size=batch_size, seed=args.seed, sg_optimizer=sg_opt,
        cosine=args.cosine, progress=not args.no_progress,
        log_every=max(1, args.steps // 20), ckpt_dir=args.checkpoint_dir,
        ckpt_every=args.checkpoint_every, resume=args.resume, metadata={"config": config},
        p_update=args.p_update,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    tr = train.evaluate(net, state.params, loss, x_train, ds.y_train)
    te = train.evaluate(net, state.params, loss, x_test, ds.y_test)
    last = history[-1]
    result = {
        "rule": args.rule,
        "dataset": ds.name,
        "steps": args.steps,
        "final_loss": float(last["loss"]),
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        "sg_loss": [float(v) for v in np.ravel(last.get("sg_loss", []))],
        "seconds": seconds,
        "config": config,
        "sizes": sizes,
    }
    if args.cosine:
        result["cosine"] = [float(c) for c in last["cosine"]]
    print(
        f"{result['rule']} on {ds.name}: {args.steps} steps in {seconds:.1f}s  "
        f"final batch loss {result['final_loss']:.4f}  "
        f"train acc {tr['accuracy']:.4f}  test acc {te['accuracy']:.4f}"
    )
    if args.cosine:
        print(
            "cosine(δ̂_i, ∂L/∂h_i) per hidden boundary:",
            " ".join(f"{c:.3f}" for c in result["cosine"]),
        )
    _write_json(args.json, result)
    return 0


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("json", "resume", "no_progress")
    }


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def _pipeline_options(args: argparse.Namespace) -> tuple[str, int]:
    """Check the options against ``--pipeline N``; returns (method, depth)."""
    n = args.pipeline
    method = args.pipeline_method or ("gpipe" if args.rule == "backprop" else "sg")
    rule = "backprop" if method == "gpipe" else "sg"
    if args.rule is not None and args.rule != rule:
        raise ValueError(
            f"--pipeline trains with --rule sg (--pipeline-method sg) or --rule backprop "
            f"(--pipeline-method gpipe); got --rule {args.rule} with --pipeline-method {method}"
        )
    if args.depth is not None and args.depth + 1 != n:
        raise ValueError(
            f"--pipeline {n} puts one stage on each of {n} devices, so the network needs "
            f"{n} stages (--depth {n - 1}), but --depth {args.depth} gives {args.depth + 1}; "
            "drop --depth (it follows from --pipeline)"
        )
    unsupported = {
        "--sg-at": args.sg_at != "all",
        "--targets": args.targets != "bootstrap",
        "--prop": args.prop is not None,
        "--cosine": args.cosine,
        "--p-update": args.p_update != 1.0,
        "--checkpoint-dir": args.checkpoint_dir is not None,
        "--resume": args.resume,
    }
    bad = [flag for flag, given in unsupported.items() if given]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} not supported with --pipeline (SG modules sit at every stage "
            "boundary with bootstrapped targets; no checkpoints)"
        )
    if args.micro_batches is not None and method != "gpipe":
        raise ValueError("--micro-batches applies only with --pipeline-method gpipe")
    m = args.micro_batches or 4
    if method == "gpipe" and args.steps % m:
        raise ValueError(
            f"--steps counts micro-batches; with gpipe it must be a multiple of "
            f"--micro-batches {m}, got {args.steps}"
        )
    return method, n - 1


def _fake_cpu_devices(n: int) -> None:
    """Ask for ``n`` fake CPU devices, which only works before JAX starts its backends.

    Done only when JAX is not imported yet and the platform is CPU; otherwise the device
    count is what it is, and :func:`sgjax.pipeline.make_mesh` says how to get more.
    """
    flag = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if "jax" in sys.modules or platforms not in ("", "cpu") or flag in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={n}".strip()


def run_pipeline(args: argparse.Namespace) -> int:
    """``sgjax train --pipeline N``: train on N devices with :mod:`sgjax.pipeline`."""
    method, depth = _pipeline_options(args)
    _fake_cpu_devices(args.pipeline)
    args.rule = "backprop" if method == "gpipe" else "sg"
    args.depth = depth
    args.pipeline_method = method
    args.micro_batches = (args.micro_batches or 4) if method == "gpipe" else None

    import jax

    from sgjax import nets, pipeline, train

    mesh = pipeline.make_mesh(args.pipeline)  # too few devices: a clear error, before work
    ds = load_dataset(args)
    x_train = ds.x_train.reshape(len(ds.x_train), -1)
    x_test = ds.x_test.reshape(len(ds.x_test), -1)
    sizes = [x_train.shape[1], *([args.width] * depth), ds.num_classes]
    net = nets.mlp(sizes, args.activation, norm=None if args.norm == "none" else args.norm)
    batch_size = min(args.batch_size, len(x_train))
    t0 = time.perf_counter()
    r = pipeline.train_pipelined(
        "gpipe" if method == "gpipe" else "sg-pipeline", net, x_train, ds.y_train,
        steps=args.steps, batch_size=batch_size, micro_batches=args.micro_batches or 1,
        loss=args.loss, lr=args.lr, sg_lr=args.sg_lr, estimator=args.estimator,
        seed=args.seed, mesh=mesh,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    tr = train.evaluate(net, r["params"], args.loss, x_train, ds.y_train)
    te = train.evaluate(net, r["params"], args.loss, x_test, ds.y_test)
    result = {
        "rule": args.rule,
        "dataset": ds.name,
        "steps": r["micro_batches_seen"],
        "final_loss": r["final_loss"],
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        "seconds": seconds,
        "config": _config(args),
        "sizes": sizes,
        "pipeline": {
            "method": method,
            "stages": net.depth,
            "devices": [str(d) for d in mesh.devices.flat],
            "platform": jax.devices()[0].platform,
            "micro_batches": args.micro_batches,
            "updates_per_stage": r["updates"],
            "train_seconds": r["seconds"],
            "compile_seconds": r["compile_seconds"],
            "examples_per_s": r["examples_per_s"],
        },
    }
    print(
        f"{method} pipeline, {net.depth} stages on {net.depth} {result['pipeline']['platform']} "
        f"devices, on {ds.name}: {args.steps} micro-batches ({r['updates']} updates per "
        f"stage) in {seconds:.1f}s  final loss {r['final_loss']:.4f}  "
        f"train acc {tr['accuracy']:.4f}  test acc {te['accuracy']:.4f}"
    )
    _write_json(args.json, result)
    return 0
