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


def _gradients_only(net, rule, loss) -> Callable:
    """The rule's gradient computation alone, as the step runs it (for the ``grads`` column)."""

    def grads(state: train.TrainState, batch: tuple) -> Any:
        x, y = batch
        out = rule.gradients(state.rule_state, net, state.params, x, y, loss)
        return out.grads, out.rule_grads, out.loss

    return grads


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
    large = cfg.get("large_batch")
    large_rules = tuple(r for r in cfg.get("large_batch_rules", ()) if r in rule_names)
    large_data = (
        _synthetic_batches(jax.random.key(3), 4, large, sizes[0], sizes[-1]) if large else None
    )
    contenders = [(name, batch, data) for name in rule_names]
    if large:
        contenders += [(name, large, large_data) for name in large_rules]
    grads_rules = cfg.get("grads_rules")
    for name, b, dat in contenders:
        key = name if b == batch else f"{name}@{b}"
        rule = rules.get(name)
        state = train.init(jax.random.key(0), net, rule, opt)
        step = jax.jit(train.make_step(net, rule, loss, opt))
        # First call: trace + lower + compile + one run, as a user sees it.
        c0, s0 = counter.snapshot()
        t0, p0 = time.perf_counter(), time.process_time()
        state, metrics = step(state, dat[0])
        jax.block_until_ready((state, metrics))
        first = time.perf_counter() - t0
        # CPU seconds of this process: what the first call costs an otherwise idle core
        # (on a loaded machine the wall time is inflated by the other processes).
        first_cpu = time.process_time() - p0
        c1, s1 = counter.snapshot()
        flops = _measure.flops(step.lower(state, dat[0]).compile())  # outside the counted window
        rows[key] = {
            "rule": name,
            "batch": b,
            "first_call_s": first,
            "first_call_cpu_s": first_cpu,
            **{f"{k}_s": s1[k] - s0[k] for k in s0},
            "compiles_first_call": c1 - c0,
            "flops": flops,
        }
        box = {"state": state, "i": 0, "recompiles": 0}

        def run(step=step, box=box, dat=dat) -> int:
            s = box["state"]
            c = counter.count
            for _ in range(inner):
                box["i"] += 1
                s, m = step(s, dat[box["i"] % len(dat)])
            jax.block_until_ready((s, m))
            box["recompiles"] += counter.count - c
            box["state"] = s
            return inner

        runners[key] = run
        boxes[key] = box
        log(f"  compiled {key:9s} first call {first:6.2f} s, {flops / 1e6:8.1f} MFLOP/step")
        if grads_rules is not None and name not in grads_rules:
            continue
        # The rule's gradients alone (no optimiser, guard or metrics): the step's ceiling.
        grads_fn = jax.jit(_gradients_only(net, rule, loss))
        rows[key]["grads_flops"] = _measure.flops(grads_fn.lower(state, dat[0]).compile())
        jax.block_until_ready(grads_fn(state, dat[0]))

        def run_grads(grads_fn=grads_fn, box=box, dat=dat) -> int:
            out = None
            for j in range(inner):
                out = grads_fn(box["state"], dat[j % len(dat)])
            jax.block_until_ready(out)
            return inner

        runners[f"__grads/{key}"] = run_grads

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
    for key in list(times):
        if key.startswith("__grads/"):
            row = rows[key[len("__grads/") :]]
            row["grads_median_s"] = statistics.median(times.pop(key))
            row["grads_frac_of_peak"] = row["grads_flops"] / row["grads_median_s"] / peak
    for key, row in rows.items():
        bp_key = "backprop" if row["batch"] == batch else f"backprop@{row['batch']}"
        bp, t_bp = rows[bp_key], statistics.median(times[bp_key])
        ts = times[key]
        t = statistics.median(ts)
        row["median_s"] = t
        row["iqr_s"] = float(np.subtract(*np.percentile(ts, [75, 25])))
        row["time_ratio"] = t / t_bp
        row["flop_ratio"] = row["flops"] / bp["flops"]
        row["overhead"] = row["time_ratio"] / row["flop_ratio"]
        row["gflops"] = row["flops"] / t / 1e9
        row["frac_of_peak"] = row["flops"] / t / peak
        row["steps_after_first"] = boxes[key]["i"]
        row["recompiles_after_first"] = boxes[key]["recompiles"]
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
        "large_batch": {
            "batch": large,
            "rules": [rows[f"{k}@{large}"] for k in large_rules],
        }
        if large
        else None,
    }


def _format_row(row: dict[str, Any], label: str) -> str:
    grads = row.get("grads_frac_of_peak")
    return (
        f"{label:9s} {row['median_s'] * 1e3:8.2f} {row['time_ratio']:7.2f} "
        f"{row['flops'] / 1e6:8.1f} {row['flop_ratio']:6.2f} {row['overhead']:6.2f} "
        f"{row['gflops']:8.1f} {100 * row['frac_of_peak']:5.0f}% "
        + (f"{100 * grads:5.0f}% " if grads is not None else f"{'-':>6s} ")
        + f"{row['first_call_s']:10.2f} {row['first_call_cpu_s']:5.2f} "
        f"{row['trace_s']:5.2f} {row['lower_s']:5.2f} {row['compile_s']:5.2f} "
        f"{row['recompiles_after_first']:3d}/{row['steps_after_first']}"
    )


def format_steps(r: dict[str, Any]) -> str:
    pk = r["peak"]
    lines = [
        f"Training step: {r['model']} "
        f"(median of {r['rounds']} interleaved rounds × {r['calls_per_round']} calls)",
        f"matmul peak: {pk['matmul']}: {pk['gflops']:.1f} GFLOP/s "
        f"(first-layer-sized dot {pk['layer_matmul']}: {pk['layer_gflops']:.1f} GFLOP/s)",
        f"{'rule':9s} {'step ms':>8s} {'×bprop':>7s} {'MFLOP':>8s} {'×FLOP':>6s} "
        f"{'overhd':>6s} {'GFLOP/s':>8s} {'%peak':>6s} {'grads':>6s} {'1st call s':>10s} "
        f"{'cpu s':>5s} {'trace':>5s} {'lower':>5s} {'xla':>5s} {'recomp':>6s}",
    ]
    lines += [_format_row(row, row["rule"]) for row in r["rules"]]
    large = r.get("large_batch")
    if large and large["rules"]:
        lines.append(f"batch {large['batch']} (×bprop, ×FLOP: against backprop at this batch):")
        lines += [_format_row(row, row["rule"]) for row in large["rules"]]
    lines.append(
        "overhd = ×bprop / ×FLOP (1.00: no cost beyond the extra arithmetic); grads = the "
        "rule's gradients alone\n(no optimiser, guard, metrics) as % of peak, the step's "
        "ceiling; 1st call = trace + lower + XLA compile + run,\nwall and CPU seconds "
        "(trace/lower/xla: wall); recomp = compilations / steps after the first"
    )
    return "\n".join(lines)
