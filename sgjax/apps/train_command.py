"""``sgjax train``: train an MLP with one of the registered rules and report accuracy.

The flags and their help text are here; which flag applies where is decided in
:mod:`sgjax.infra.config`; the ``--pipeline`` run is :mod:`sgjax.apps.pipeline_command`,
the outputs and the dataset :mod:`sgjax.apps.train_outputs`.

Example (shell)::

    sgjax train --rule sg --dataset digits --steps 500 --json runs/sg.json
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from sgjax.apps.train_outputs import (
    _OUTPUT_FLAGS,
    Outputs,
    _check_outputs,
    _flat_data,
    _write_json,
)
from sgjax.infra.config import RunConfig, from_flags

_DEFAULT = argparse.SUPPRESS  # flags the user did not give stay out of the namespace


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


def _seed(text: str) -> int:
    from sgjax.infra.config import check_seed

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    try:
        return check_seed(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _probability(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        from sgjax.train import check_p_update  # the one check of the value

        try:
            return check_p_update(v, name=name, allow_zero=False)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

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
    """Options of ``sgjax train``. None has a namespace default: only the flags given reach
    :func:`sgjax.infra.config.from_flags`, which fills the defaults shown in the help."""
    from sgjax import estimators, losses, nets, rules
    from sgjax.infra import config as cfg
    from sgjax.infra import data

    d = cfg.RunConfig()
    rule_list = "; ".join(f"{s.name}: {s.summary}" for s in rules.RULES.values())
    p.add_argument(
        "--rule",
        choices=tuple(rules.RULES),
        default=_DEFAULT,
        help=f"update rule ({rule_list}); default: sg (with --pipeline: sg, or backprop for gpipe)",
    )
    p.add_argument(
        "--dataset",
        default=_DEFAULT,
        help=f"dataset, one of {', '.join(data.names())} (default: {d.dataset})",
    )
    p.add_argument(
        "--data-dir",
        default=_DEFAULT,
        help=f"directory of IDX files for {', '.join(data.FILE_DATASETS)} "
        "(default: $SGJAX_DATA_DIR, then ../shared/data/<name>)",
    )
    p.add_argument(
        "--train-size",
        type=_positive_int("--train-size"),
        default=_DEFAULT,
        help=f"use only the first N training examples ({', '.join(data.FILE_DATASETS)}; "
        "default: all)",
    )
    p.add_argument(
        "--depth",
        type=_positive_int("--depth", 0),
        default=_DEFAULT,
        help=f"number of hidden layers (default: {d.depth}; with --pipeline N: N − 1)",
    )
    p.add_argument(
        "--width",
        type=_positive_int("--width"),
        default=_DEFAULT,
        help=f"hidden width (default: {d.width})",
    )
    p.add_argument(
        "--activation",
        choices=tuple(nets.ACTIVATIONS),
        default=_DEFAULT,
        help=f"hidden activation (default: {d.activation})",
    )
    p.add_argument(
        "--norm",
        choices=("none", "layer", "batch"),
        default=_DEFAULT,
        help=f"normalisation after each hidden dense layer (default: {d.norm})",
    )
    p.add_argument(
        "--loss",
        choices=tuple(k for k in losses.LOSSES if k != "softmax_cross_entropy"),
        default=_DEFAULT,
        help=f"loss (default: {d.loss})",
    )
    p.add_argument(
        "--steps",
        type=_positive_int("--steps"),
        default=_DEFAULT,
        help=f"total training steps; with --resume, may be raised (default: {d.steps})",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
        default=_DEFAULT,
        help=f"mini-batch size, at most the number of training examples (default: {d.batch_size})",
    )
    p.add_argument(
        "--optimizer",
        choices=tuple(cfg.OPTIMIZERS),
        default=_DEFAULT,
        help=f"optimiser of the network (default: {d.optimizer.name})",
    )
    p.add_argument(
        "--lr",
        type=_positive_float("--lr"),
        default=_DEFAULT,
        help=f"learning rate of the network (default: {d.optimizer.learning_rate:g})",
    )
    sg_rules = ", ".join(s.name for s in rules.RULES.values() if s.trains_modules)
    p.add_argument(
        "--sg-optimizer",
        choices=tuple(cfg.OPTIMIZERS),
        default=_DEFAULT,
        help=f"optimiser of the SG modules ({sg_rules}; default: adam)",
    )
    p.add_argument(
        "--sg-lr",
        type=_positive_float("--sg-lr"),
        default=_DEFAULT,
        help=f"learning rate of the SG modules ({sg_rules}; default: 0.001)",
    )
    sg_default = rules.spec("sg").options
    p.add_argument(
        "--sg-at",
        type=_placement,
        default=_DEFAULT,
        help=f"SG placement: all | middle | output | e.g. 2,4 ({sg_rules}; default: "
        f"{sg_default['at']})",
    )
    p.add_argument(
        "--estimator",
        default=_DEFAULT,
        choices=tuple(estimators.ESTIMATORS),
        help=f"SG module ({sg_rules}; default: {sg_default['estimator']}, i.e. hA + yB + C)",
    )
    p.add_argument(
        "--targets",
        choices=("bootstrap", "true"),
        default=_DEFAULT,
        help=f"SG regression targets ({sg_rules}; default: {sg_default['targets']})",
    )
    p.add_argument(
        "--prop",
        type=float,
        default=_DEFAULT,
        help=f"α of SG + prop (sg, sg-prop; default: {sg_default['prop']} for sg, "
        f"{rules.spec('sg-prop').options['prop']} for sg-prop)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=_DEFAULT,
        help=f"seed of initialisation, batch order and generated data (default: {d.seed})",
    )
    p.add_argument(
        "--p-update",
        type=_probability("--p-update"),
        default=_DEFAULT,
        help="stochastic updates: each stage (with its SG module) updates with this "
        "probability per step (DNI §3.3; default 1: every step)",
    )
    p.add_argument(
        "--sg-update",
        choices=("with-stage", "every-step"),
        default=_DEFAULT,
        help="with --p-update < 1: skip each SG module together with the stage whose output "
        "it reads (with-stage, the default) or train the modules every step (every-step); "
        "docs/results/p-update measures both",
    )
    p.add_argument(
        "--cosine",
        action="store_true",
        default=_DEFAULT,
        help="log the cosine between each signal and the true gradient (default: off)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write final metrics and the configuration here (default: not written)",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save the full training state here periodically (atomic, hashed, last 3 kept; "
        "with --pipeline the steps are micro-batches, saved at whole calls of 50, and every "
        "process must see the directory; default: no checkpoints)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int("--checkpoint-every"),
        default=1000,
        help="steps between checkpoints (default: 1000)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --checkpoint-dir with the same options (--steps may be "
        "raised); ends bit-identical to an uninterrupted run (default: off)",
    )
    p.add_argument(
        "--adopt-older-checkpoints",
        action="store_true",
        help="with --resume: check the checkpoints an older sgjax wrote without hashes (each "
        "read back whole, matching this network, finite), hash them, and continue from the "
        "newest (default: such checkpoints are refused and never overwritten)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    g = p.add_argument_group(
        "pipeline",
        "train with one stage (one dense layer) per device: --pipeline N builds N stages, "
        "i.e. --depth N − 1 hidden layers. On CPU, N fake devices are made when JAX has "
        "not started yet (XLA_FLAGS=--xla_force_host_platform_device_count=N).",
    )
    g.add_argument(
        "--pipeline",
        type=_positive_int("--pipeline"),
        default=_DEFAULT,
        metavar="N",
        help="train on a pipeline of N devices (sgjax.pipeline; default: one device)",
    )
    g.add_argument(
        "--pipeline-method",
        choices=("sg", "gpipe"),
        default=_DEFAULT,
        help="sg: the update-unlocked SG pipeline (default); gpipe: the backprop pipeline",
    )
    g.add_argument(
        "--micro-batches",
        type=_positive_int("--micro-batches"),
        default=_DEFAULT,
        metavar="M",
        help="GPipe: micro-batches per optimiser step (default: 4); --steps counts "
        "micro-batches and must be a multiple of M",
    )


def parse(args: argparse.Namespace) -> tuple[RunConfig, Outputs]:
    """The one step from the command line to a :class:`RunConfig` (and the outputs)."""
    given = {k: v for k, v in vars(args).items() if k not in _OUTPUT_FLAGS}
    config = from_flags(given)
    outputs = Outputs(
        args.json,
        args.checkpoint_dir,
        args.checkpoint_every,
        args.resume,
        not args.no_progress,
        args.adopt_older_checkpoints,
    )
    if outputs.resume and outputs.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (the run to continue)")
    if outputs.adopt_older and not outputs.resume:
        raise ValueError("--adopt-older-checkpoints goes with --resume (the run to continue)")
    if config.pipeline is not None and outputs.adopt_older:
        raise ValueError("--adopt-older-checkpoints applies to runs without --pipeline")
    return config, outputs


def run(args: argparse.Namespace) -> int:
    """``sgjax train``: parse the flags once into a configuration, then train it."""
    config, outputs = parse(args)
    return train_config(config, outputs)


def train_config(config: RunConfig, outputs: Outputs | None = None) -> int:
    """Train ``config`` on one device (or a pipeline), print and write the results."""
    outputs = outputs or Outputs()
    _check_outputs(outputs)  # before the data is loaded and the run trained
    if config.pipeline is not None:
        from sgjax.apps.pipeline_command import run_pipeline

        return run_pipeline(config, outputs)
    from sgjax import train
    from sgjax.infra import runner

    ds, x_train, x_test = _flat_data(config)
    run = config.build(x_train.shape[1], ds.num_classes)  # the rule with its SG optimiser
    net = run.net
    checkpoints = None
    if outputs.checkpoint_dir is not None:
        checkpoints = runner.Checkpoints(
            outputs.checkpoint_dir,
            every=outputs.checkpoint_every,
            resume=outputs.resume,
            adopt_older=outputs.adopt_older,
        )
    hooks = runner.Hooks(progress=outputs.progress, log_every=max(1, config.steps // 20), log=print)
    t0 = time.perf_counter()
    state, history = runner.run_training(
        run, x_train, ds.y_train, checkpoints=checkpoints, hooks=hooks
    )
    seconds = time.perf_counter() - t0
    tr = train.evaluate(net, state.params, config.loss, x_train, ds.y_train)
    te = train.evaluate(net, state.params, config.loss, x_test, ds.y_test)
    last = history[-1]
    result = {
        "rule": config.rule.name,
        "dataset": ds.name,
        "steps": int(state.step),
        "final_loss": float(last["loss"]),
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        "sg_loss": [float(v) for v in np.ravel(last.get("sg_loss", []))],
        "seconds": seconds,
        "config": config.to_dict(),
        "sizes": [x_train.shape[1], *([config.width] * config.depth), ds.num_classes],
    }
    if config.cosine:
        result["cosine"] = [float(c) for c in last["cosine"]]
    print(
        f"{result['rule']} on {ds.name}: {result['steps']} steps in {seconds:.1f}s  "
        f"final batch loss {result['final_loss']:.4f}  "
        f"train acc {tr['accuracy']:.4f}  test acc {te['accuracy']:.4f}"
    )
    if config.cosine:
        print(
            "cosine(δ̂_i, ∂L/∂h_i) per hidden boundary:",
            " ".join(f"{c:.3f}" for c in result["cosine"]),
        )
    _write_json(outputs.json, result)
    return 0
