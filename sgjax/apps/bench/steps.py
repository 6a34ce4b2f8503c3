"""``sgjax bench`` section ``step``: the training step of every registered rule."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses, nets, rules, train
from sgjax.apps.bench import _measure


def step_rules() -> tuple[str, ...]:
    """The rules the ``step`` section times: every registered rule, backprop first."""
    return ("backprop", *(name for name in rules.RULES if name != "backprop"))


def _synthetic_batches(key: jax.Array, n: int, batch: int, in_dim: int, classes: int):
    """Random MNIST-shaped batches, already on the device (timing does not depend on data)."""
    out = []
    for k in jax.random.split(key, n):
        kx, ky = jax.random.split(k)
        x = jax.random.uniform(kx, (batch, in_dim), jnp.float32)
        y = jax.random.randint(ky, (batch,), 0, classes, jnp.int32)
        out.append((x, y))
    return jax.block_until_ready(out)


def bench_steps(
    cfg: dict[str, Any],
    log: Callable[[str], None] = print,
    rule_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Time the training step of every rule on the MLP, interleaved with a large matmul.

    Returns a dict with ``peak`` (the matmul) and ``rules`` (one row per rule).

    Example:
        >>> from sgjax.apps.bench.sizes import QUICK
        >>> r = bench_steps({**QUICK, "rounds": 1, "inner": 1}, log=lambda s: None,
        ...                 rule_names=("backprop",))
        >>> r["rules"][0]["rule"], r["rules"][0]["recompiles_after_first"]
        ('backprop', 0)
    """
    rule_names = step_rules() if rule_names is None else rule_names
    sizes, batch, inner = cfg["mlp"], cfg["batch"], cfg["inner"]
    net = nets.mlp(sizes)
    loss = losses.softmax_cross_entropy
    opt = optax.adam(1e-3)
    data = _synthetic_batches(jax.random.key(1), 4, batch, sizes[0], sizes[-1])
    counter = _measure.compile_counter()

    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], int]] = {}
    boxes: dict[str, dict[str, Any]] = {}
    if not rule_names or rule_names[0] != "backprop":
        raise ValueError(
            f"`rule_names` must start with 'backprop' (the reference), got {rule_names}"
        )
    for name in rule_names:
        rule = rules.get(name)
        state = train.init(jax.random.key(0), net, rule, opt)
        step = jax.jit(train.make_step(net, rule, loss, opt))
        # First call: trace + lower + compile + one run, as a user sees it.
        c0, s0 = counter.snapshot()
        t0, p0 = time.perf_counter(), time.process_time()
        state, metrics = step(state, data[0])
        jax.block_until_ready((state, metrics))
        first = time.perf_counter() - t0
        # CPU seconds of this process: what the first call costs an otherwise idle core
        # (on a loaded machine the wall time is inflated by the other processes).
        first_cpu = time.process_time() - p0
        c1, s1 = counter.snapshot()
        flops = _measure.flops(step.lower(state, data[0]).compile())  # outside the counted window
        rows[name] = {
            "rule": name,
            "first_call_s": first,
            "first_call_cpu_s": first_cpu,
            **{f"{k}_s": s1[k] - s0[k] for k in s0},
            "compiles_first_call": c1 - c0,
            "flops": flops,
        }
        box = {"state": state, "i": 0, "recompiles": 0}

        def run(step=step, box=box) -> int:
            s = box["state"]
            c = counter.count
            for _ in range(inner):
                box["i"] += 1
                s, m = step(s, data[box["i"] % len(data)])
            jax.block_until_ready((s, m))
            box["recompiles"] += counter.count - c
            box["state"] = s
            return inner

        runners[name] = run
        boxes[name] = box
        log(f"  compiled {name:9s} first call {first:6.2f} s, {flops / 1e6:8.1f} MFLOP/step")

    n = cfg["peak_n"]
    a = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    peak_flops = _measure.flops(dot.lower(a, a).compile())
    jax.block_until_ready(dot(a, a))

    def run_dot() -> int:
        out = None
        for _ in range(inner):
            out = dot(a, a)
        jax.block_until_ready(out)
        return inner

    # Same-size matmul as the MLP's first layer, for context (small dots run below peak).
    xs, w = data[0][0], jnp.ones((sizes[0], sizes[1]), jnp.float32)
    jax.block_until_ready(dot(xs, w))
    layer_flops = 2.0 * batch * sizes[0] * sizes[1]

    def run_layer() -> int:
        out = None
        for _ in range(inner * 4):
            out = dot(xs, w)
        jax.block_until_ready(out)
        return inner * 4

    # Warm every runner once before the timed rounds (allocator, thread pools).
    for fn in [*runners.values(), run_dot, run_layer]:
        fn()
    times = _measure.interleaved({**runners, "__dot": run_dot, "__layer": run_layer}, cfg["rounds"])

    t_dot = statistics.median(times.pop("__dot"))
    t_layer = statistics.median(times.pop("__layer"))
    peak = peak_flops / t_dot
    bp = rows["backprop"]
    t_bp = statistics.median(times["backprop"])
    for name in rule_names:
        row, ts = rows[name], times[name]
        t = statistics.median(ts)
        row["median_s"] = t
        row["iqr_s"] = float(np.subtract(*np.percentile(ts, [75, 25])))
        row["time_ratio"] = t / t_bp
        row["flop_ratio"] = row["flops"] / bp["flops"]
        row["overhead"] = row["time_ratio"] / row["flop_ratio"]
        row["gflops"] = row["flops"] / t / 1e9
        row["frac_of_peak"] = row["flops"] / t / peak
        row["steps_after_first"] = boxes[name]["i"]
        row["recompiles_after_first"] = boxes[name]["recompiles"]
    return {
        "model": f"mlp {'-'.join(map(str, sizes))}, batch {batch}, adam, xent",
        "rounds": cfg["rounds"],
        "calls_per_round": inner,
        "peak": {
            "matmul": f"{n}x{n} @ {n}x{n} float32",
            "flops": peak_flops,
            "median_s": t_dot,
            "gflops": peak / 1e9,
            "layer_matmul": f"{batch}x{sizes[0]} @ {sizes[0]}x{sizes[1]}",
            "layer_gflops": layer_flops / t_layer / 1e9,
        },
        "rules": [rows[k] for k in rule_names],
    }


def format_steps(r: dict[str, Any]) -> str:
    pk = r["peak"]
    lines = [
        f"Training step: {r['model']} "
        f"(median of {r['rounds']} interleaved rounds × {r['calls_per_round']} calls)",
        f"matmul peak: {pk['matmul']}: {pk['gflops']:.1f} GFLOP/s "
        f"(first-layer-sized dot {pk['layer_matmul']}: {pk['layer_gflops']:.1f} GFLOP/s)",
        f"{'rule':9s} {'step ms':>8s} {'×bprop':>7s} {'MFLOP':>8s} {'×FLOP':>6s} "
        f"{'overhd':>6s} {'GFLOP/s':>8s} {'%peak':>6s} {'1st call s':>10s} {'cpu s':>5s} "
        f"{'trace':>5s} {'lower':>5s} {'xla':>5s} {'recomp':>6s}",
    ]
    for row in r["rules"]:
        lines.append(
            f"{row['rule']:9s} {row['median_s'] * 1e3:8.2f} {row['time_ratio']:7.2f} "
            f"{row['flops'] / 1e6:8.1f} {row['flop_ratio']:6.2f} {row['overhead']:6.2f} "
            f"{row['gflops']:8.1f} {100 * row['frac_of_peak']:5.0f}% "
            f"{row['first_call_s']:10.2f} {row['first_call_cpu_s']:5.2f} "
            f"{row['trace_s']:5.2f} {row['lower_s']:5.2f} {row['compile_s']:5.2f} "
            f"{row['recompiles_after_first']:3d}/{row['steps_after_first']}"
        )
    lines.append(
        "overhd = ×bprop / ×FLOP (1.00: no cost beyond the extra arithmetic); 1st call = "
        "trace + lower + XLA compile + run,\nwall and CPU seconds (trace/lower/xla: wall); "
        "recomp = compilations / steps after the first"
    )
    return "\n".join(lines)
