"""``sgjax train --pipeline``: the run on a device pipeline (SG or GPipe), on fake CPU
devices or one process per device, with the lost-process handling of a multi-process run.
"""

from __future__ import annotations

import os
import time

from sgjax.apps.train_outputs import Outputs, _flat_data, _write_json
from sgjax.infra.config import RunConfig


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
    what = config.build(x_train.shape[1], ds.num_classes)  # the rule owns its SG options
    net = what.net
    from sgjax.infra.runner import PipelineRun

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
                what,
                x_train,
                ds.y_train,
                schedule=pipeline.Schedule(_PIPELINE_CHUNK, pipe.micro_batches or 1, mesh),
                start=run.start,
                on_call=run.on_call,
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
            "stages": r["stages"],  # pipeline stages (one per device)
            "layers": net.depth,
            "sg_at": r.get("sg_at"),
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
        f"{pipe.method} pipeline, {net.depth} layers in {r['stages']} stages on {r['stages']} "
        f"{result['pipeline']['platform']} devices in {jax.process_count()} process(es), "
        f"on {ds.name}: {config.steps} micro-batches ({r['updates']} updates per stage) in "
        f"{seconds:.1f}s  {final}  train acc {tr['accuracy']:.4f}  test acc {te['accuracy']:.4f}"
    )
    _write_json(outputs.json, result)  # strict: non-finite values as null, flagged
    return 0
