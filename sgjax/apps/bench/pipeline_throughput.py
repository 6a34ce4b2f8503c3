"""Throughput of the pipelines against their single-device baselines, from one process
that already has the devices: :func:`benchmark_pipeline` (the ``pipeline`` section of
``sgjax bench``, run by :mod:`sgjax.apps.bench.pipeline_rows`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from sgjax import losses as loss_lib
from sgjax import rules, train
from sgjax.pipeline.gpipe import gpipe_on_mesh, init_bp
from sgjax.pipeline.loop import _single_device_chunk
from sgjax.pipeline.mesh import make_mesh
from sgjax.pipeline.sg import sg_on_mesh
from sgjax.pipeline.stages import init_sg, sg_pipeline


def benchmark_pipeline(
    n_devices: int,
    *,
    sizes: Sequence[int] | None = None,
    batch_size: int = 64,
    micro_batches: int = 8,
    ticks: int = 64,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Throughput (examples/s) of the pipelines on ``n_devices`` and their single-device
    baselines, from one process that already has the devices.

    The network is ``mlp(sizes)`` with ``n_devices`` stages (default
    ``[784, 256, ..., 256, 10]``). Each figure is the best of ``repeats`` timed jitted
    calls (after a compiling call) on random data of ``ticks`` micro-batches of
    ``batch_size``:

    * ``backprop_1dev`` / ``sg_1dev``: one device, one update per micro-batch;
    * ``backprop_1dev_big``: one device, batches of M·B (what GPipe computes per step);
    * ``sg_pipeline``: the SG pipeline in steady state (filled before timing);
    * ``gpipe``: the backprop pipeline with M micro-batches per step.

    Ratios to the ideal: ``sg_pipeline_ratio = sg_pipeline / (N · sg_1dev)`` and
    ``gpipe_ratio = gpipe / (N · M/(M+N−1) · backprop_1dev)`` (the bubble bound).

    Example:
        >>> r = benchmark_pipeline(1, sizes=[16, 8], batch_size=4, micro_batches=2,
        ...                        ticks=4, repeats=1)
        >>> sorted(k for k in r if k.endswith("ratio"))
        ['gpipe_ratio', 'sg_pipeline_ratio']
    """
    from sgjax import nets

    n, M = n_devices, micro_batches
    sizes = [784, *([256] * (n - 1)), 10] if sizes is None else list(sizes)
    net = nets.mlp(sizes)
    if net.depth != n:
        raise ValueError(
            f"benchmark_pipeline: `sizes` {sizes} give {net.depth} stages but n_devices = {n}"
        )
    mesh = make_mesh(n)
    loss = loss_lib.softmax_cross_entropy
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(seed)
    xs = rng.random((ticks, batch_size, sizes[0]), np.float32)
    ys = rng.integers(0, sizes[-1], (ticks, batch_size)).astype(np.int32)
    key = jax.random.key(seed)

    def best(fn: Callable[..., tuple[Any, Any]], state: Any, *args: Any) -> float:
        state, metrics = fn(state, *args)  # compile (and fill the pipeline)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = fn(state, *args)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        return min(times)

    def single(rule: rules.UpdateRule, xs: np.ndarray, ys: np.ndarray) -> float:
        chunk_fn = _single_device_chunk(net, rule, loss, opt)  # an SG rule's default: opt
        state = train.init(key, net, rule, opt)
        return xs.shape[0] * xs.shape[1] / best(chunk_fn, state, xs, ys, np.ones(len(xs), bool))

    out: dict[str, Any] = {
        "n_devices": n,
        "sizes": sizes,
        "batch_size": batch_size,
        "micro_batches": M,
        "ticks": ticks,
        "cpu_count": os.cpu_count(),
        "platform": jax.devices()[0].platform,
    }
    out["backprop_1dev"] = single(rules.backprop(), xs, ys)
    # One stage has no hidden boundary: its "SG" pipeline is plain backprop.
    out["sg_1dev"] = single(rules.synthetic_gradients() if n > 1 else rules.backprop(), xs, ys)
    k = max(ticks // M, 1)
    out["backprop_1dev_big"] = single(
        rules.backprop(),
        xs[: k * M].reshape(k, M * batch_size, -1),
        ys[: k * M].reshape(k, M * batch_size),
    )
    pipe = sg_pipeline(net, loss, opt, opt)
    runner = sg_on_mesh(pipe, mesh, batch_size=batch_size)
    state = runner.pack(init_sg(pipe, key, batch_size=batch_size))
    out["sg_pipeline"] = ticks * batch_size / best(runner.run, state, xs, ys)
    gp = gpipe_on_mesh(net, loss, opt, mesh, batch_size=batch_size, micro_batches=M)
    out["gpipe"] = M * batch_size / best(gp.run, gp.pack(init_bp(net, opt, key)), xs[:M], ys[:M])

    out["sg_pipeline_ideal"] = n * out["sg_1dev"]
    out["gpipe_ideal"] = n * M / (M + n - 1) * out["backprop_1dev"]
    out["sg_pipeline_ratio"] = out["sg_pipeline"] / out["sg_pipeline_ideal"]
    out["gpipe_ratio"] = out["gpipe"] / out["gpipe_ideal"]
    return out
