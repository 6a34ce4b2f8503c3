"""``sgjax train``: train an MLP with one of the registered rules and report accuracy.

(Over 600 lines: a third of it is the flags' help text, each with its default; the
decisions about which flag applies where are in :mod:`sgjax.infra.config`. The
``--pipeline`` path — :func:`run_pipeline` with its fake-device and lost-process
handling, about 110 lines — is the piece to move into a module of its own; it waits for
the pipeline to take the rules through the core (issue 26, item 4), which changes it.)

Example (shell)::

    sgjax train --rule sg --dataset digits --steps 500 --json runs/sg.json
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

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


class Outputs(NamedTuple):
    """Where a run writes (not part of its configuration: may change on resume)."""

    json: Path | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1000
    resume: bool = False
    progress: bool = True
    adopt_older: bool = False


_OUTPUT_FLAGS = (
    "json",
    "checkpoint_dir",
    "checkpoint_every",
    "resume",
    "no_progress",
    "adopt_older_checkpoints",
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


def load_dataset(config: RunConfig):
    """The configured dataset (``--data-dir`` / ``--train-size`` only reach file datasets)."""
    from sgjax.infra import data

    key = config.dataset.replace("-", "_").lower()
    if key in data.FILE_DATASETS:
        return data.load(config.dataset, data_dir=config.data_dir, n_train=config.train_size)
    return data.load(config.dataset, seed=config.seed)  # the split / draw of generated sets


def _flat_data(config: RunConfig):
    ds = load_dataset(config)
    x_train = ds.x_train.reshape(len(ds.x_train), -1)
    x_test = ds.x_test.reshape(len(ds.x_test), -1)
    if config.batch_size > len(x_train):
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {len(x_train)} training "
            f"examples of {ds.name}; use at most {len(x_train)}"
        )
    return ds, x_train, x_test


def train_config(config: RunConfig, outputs: Outputs | None = None) -> int:
    """Train ``config`` on one device (or a pipeline), print and write the results."""
    outputs = outputs or Outputs()
    _check_outputs(outputs)  # before the data is loaded and the run trained
    if config.pipeline is not None:
        return run_pipeline(config, outputs)
    from sgjax import train
    from sgjax.infra import runner

    ds, x_train, x_test = _flat_data(config)
    net = config.net(x_train.shape[1], ds.num_classes)
    rule = config.build_rule()  # with its SG optimiser
    t0 = time.perf_counter()
    state, history = runner.run_training(
        net,
        rule,
        config.loss,
        config.build_optimizer(),
        x_train,
        ds.y_train,
        steps=config.steps,
        batch_size=config.batch_size,
        seed=config.seed,
        cosine=config.cosine,
        progress=outputs.progress,
        log_every=max(1, config.steps // 20),
        ckpt_dir=outputs.checkpoint_dir,
        ckpt_every=outputs.checkpoint_every,
        resume=outputs.resume,
        config=config,
        log=print,
        p_update=config.p_update,
        sg_update=config.sg_update,
        adopt_older=outputs.adopt_older,
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


def _check_outputs(outputs: Outputs) -> None:
    """Refuse unwritable output paths before any work (not after training)."""
    from sgjax.infra.jsonio import check_writable

    if outputs.json is not None:
        check_writable(outputs.json, name="--json")
    if outputs.checkpoint_dir is not None:
        check_writable(outputs.checkpoint_dir, name="--checkpoint-dir", directory=True)


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Strict JSON (sgjax.infra.jsonio); if writing fails, the results are kept elsewhere."""
    if path is not None:
        from sgjax.infra.jsonio import write_or_keep

        write_or_keep(path, result, name="--json")


def _fake_cpu_devices(n: int) -> None:
    """Ask for ``n`` fake CPU devices, which only works before JAX starts its backends.

    Done only when the platform is CPU and no device count was asked for already;
    otherwise the device count is what it is, and :func:`sgjax.pipeline.make_mesh` says
    how to get more.
    """
    flag = "--xla_force_host_platform_device_count"
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms not in ("", "cpu") or flag in os.environ.get("XLA_FLAGS", ""):
        return
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backends have started: too late to ask
        pass


#: micro-batches per jitted call of the SG pipeline (``train_pipelined``'s ``chunk``):
#: checkpoints are taken at whole calls, so a resumed run needs the same value
_PIPELINE_CHUNK = 50


def _lost_process(err: Exception) -> Exception | None:
    """A collective's failure in a multi-process job, as one line (another process died:
    the launcher names it), or None for any other error."""
    import jax

    if jax.process_count() == 1 or "RuntimeError" not in type(err).__name__:
        return None
    import re

    from sgjax.infra.runner import LostProcessError

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = re.sub(r"^(INTERNAL: )?(Error dispatching computation: )+", "", text)[:200]
    return LostProcessError(
        f"process {jax.process_index()} of {jax.process_count()} lost contact with another "
        f"process of the job, which probably died (sgjax launch names it): {first}"
    )


def run_pipeline(config: RunConfig, outputs: Outputs) -> int:
    """``sgjax train --pipeline N``: train on N devices with :mod:`sgjax.pipeline`."""
    assert config.pipeline is not None
    pipe = config.pipeline
    _fake_cpu_devices(pipe.devices)

    import jax

    from sgjax import pipeline, train

    # A process of `sgjax launch` (or of a multi-host job): join it before JAX computes.
    pipeline.initialize_from_env()
    mesh = pipeline.make_mesh(pipe.devices)  # too few devices: a clear error, before work
    ds, x_train, x_test = _flat_data(config)
    net = config.net(x_train.shape[1], ds.num_classes)
    from sgjax.infra.runner import PipelineRun

    sg_module = {  # the SG pipeline's modules: the rule's estimator and SG optimiser
        k: v
        for k, v in (
            ("estimator", config.rule.options_dict().get("estimator")),
            ("sg_optimizer", config.sg_optimizer.build() if config.sg_optimizer else None),
        )
        if v is not None
    }

    per_call = pipe.micro_batches if pipe.method == "gpipe" else _PIPELINE_CHUNK
    run = PipelineRun(
        outputs.checkpoint_dir,
        steps=config.steps,
        per_call=per_call or 1,
        every=outputs.checkpoint_every,
        resume=outputs.resume,
        meta={
            "seed": config.seed,
            "batch_size": config.batch_size,
            "num_examples": len(x_train),
            "rule": config.rule.name,
            "steps": config.steps,
            "run_config": config.to_dict(),
        },
        config=config,
        say=print if jax.process_index() == 0 else (lambda _m: None),
    )
    t0 = time.perf_counter()
    try:
        with run.signals():
            r = pipeline.train_pipelined(
                "gpipe" if pipe.method == "gpipe" else "sg-pipeline",
                net,
                x_train,
                ds.y_train,
                steps=config.steps,
                batch_size=config.batch_size,
                micro_batches=pipe.micro_batches or 1,
                loss=config.loss,
                optimizer=config.build_optimizer(),
                seed=config.seed,
                chunk=_PIPELINE_CHUNK,
                mesh=mesh,
                start=run.start,
                on_call=run.on_call,
                **sg_module,
            )
    except Exception as e:
        raise _lost_process(e) or e from None
    finally:
        run.close()
    seconds = time.perf_counter() - t0
    tr = train.evaluate(net, r["params"], config.loss, x_train, ds.y_train)
    te = train.evaluate(net, r["params"], config.loss, x_test, ds.y_test)
    result = {
        "rule": config.rule.name,
        "dataset": ds.name,
        "steps": r["micro_batches_seen"],
        "final_loss": r["final_loss"],
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        "seconds": seconds,
        "config": config.to_dict(),
        "sizes": [x_train.shape[1], *([config.width] * config.depth), ds.num_classes],
        "pipeline": {
            "method": pipe.method,
            "stages": net.depth,
            "devices": [str(d) for d in mesh.devices.flat],
            "platform": jax.devices()[0].platform,
            "micro_batches": pipe.micro_batches,
            "updates_per_stage": r["updates"],
            "train_seconds": r["seconds"],
            "compile_seconds": r["compile_seconds"],
            "examples_per_s": r["examples_per_s"],
            "processes": jax.process_count(),
            "final_loss_micro_batches": r["final_loss_micro_batches"],
        },
    }
    if jax.process_index() != 0:  # one report per job, from process 0
        return 0
    final = (
        f"final loss {r['final_loss']:.4f} (mean of {r['final_loss_micro_batches']} micro-batches)"
        if r["final_loss"] is not None
        else "no micro-batch finished, so there is no final loss"
    )
    print(
        f"{pipe.method} pipeline, {net.depth} stages on {net.depth} "
        f"{result['pipeline']['platform']} devices in {jax.process_count()} process(es), "
        f"on {ds.name}: {config.steps} micro-batches ({r['updates']} updates per stage) in "
        f"{seconds:.1f}s  {final}  train acc {tr['accuracy']:.4f}  test acc {te['accuracy']:.4f}"
    )
    _write_json(outputs.json, result)  # strict: non-finite values as null, flagged
    return 0
