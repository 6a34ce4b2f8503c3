"""``sgjax bench``: how fast the training steps are, and what they cost to compile and hold.

Every figure the targets are stated in is a **ratio taken side by side in one run**:
the machines this is run on are shared and noisy, so absolute times move from run to
run while ratios of interleaved measurements hold. The sections:

``step``
    One training step of the MNIST MLP 784-256-256-256-10 (batch 256, Adam) under each
    of the six update rules: median step time, ratio to backprop, the step's FLOPs (XLA's
    cost analysis of the compiled step), achieved GFLOP/s as a fraction of a large
    ``jnp.dot`` timed in the same rounds (the machine's practical matmul peak), and
    ``overhead`` = (t_rule / t_backprop) / (FLOPs_rule / FLOPs_backprop), which is 1 when
    a rule costs exactly its extra arithmetic. Also the first call (trace + compile +
    run) of each step and the number of compilations after it (must be 0).
``theory``
    Instances per second of a vmapped claim check against a Python loop over the same
    instances (the Theorem 1 line-search run of :mod:`theory.theorem1` when the
    ``theory`` package is importable, else an equivalent computation defined here).
``memory``
    XLA's own account (``compiled.memory_analysis()``) of the peak memory of one training
    step of a deep network (50 stages of 512, batch 1024) under backprop and under SG at
    every boundary, and their ratio.
``pipeline``
    The throughput rows of :func:`sgjax.pipeline.benchmark_pipeline` on fake CPU
    devices, run in a subprocess (the device count must be set before JAX starts);
    reported as unavailable when this version of sgjax has no pipeline module.

Timings interleave the contenders round by round (each round runs every contender a
few times back to back) and report medians over rounds; the load average at start and
end is printed so that a reader can judge the conditions.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["--quick", "--only", "step"]).only
    ['step']
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import losses, nets, rules, train

SECTIONS = ("step", "theory", "memory", "pipeline")
RULE_NAMES = ("backprop", "sg", "sg-prop", "fa", "dfa", "kickback")

#: Sizes of the full and the ``--quick`` run.
FULL = {
    "mlp": [784, 256, 256, 256, 10],
    "batch": 256,
    "peak_n": 1024,
    "rounds": 15,
    "inner": 5,
    "theory_instances": 256,
    "theory_steps": 2000,
    "deep_stages": 50,
    "deep_width": 512,
    "deep_batch": 1024,
    "pipeline_devices": 4,
}
QUICK = {
    "mlp": [64, 32, 32, 10],
    "batch": 32,
    "peak_n": 128,
    "rounds": 3,
    "inner": 2,
    "theory_instances": 8,
    "theory_steps": 50,
    "deep_stages": 6,
    "deep_width": 32,
    "deep_batch": 16,
    "pipeline_devices": 2,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sgjax bench``."""
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable); one of {', '.join(SECTIONS)}",
    )


# --------------------------------------------------------------------------------------
# Measurement helpers.


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return None


class _CompileCounter:
    """Counts XLA backend compilations (and their seconds) through ``jax.monitoring``."""

    EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def __init__(self) -> None:
        self.count = 0
        self.seconds = dict.fromkeys(self.EVENTS.values(), 0.0)
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if event in self.EVENTS:
            self.seconds[self.EVENTS[event]] += duration
            self.count += event.endswith("backend_compile_duration")

    def snapshot(self) -> tuple[int, dict[str, float]]:
        return self.count, dict(self.seconds)


_COUNTER: _CompileCounter | None = None


def _counter() -> _CompileCounter:
    global _COUNTER
    if _COUNTER is None:  # one listener per process: listeners cannot be removed
        _COUNTER = _CompileCounter()
    return _COUNTER


def _flops(compiled: Any) -> float:
    """FLOPs of a compiled computation from XLA's cost analysis (dict or list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Run every contender once per round, in turn; return each one's seconds per round.

    Each ``fn`` must block until its work is done and return the number of calls it made.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            calls = fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


# --------------------------------------------------------------------------------------
# Section 1 + 2: training steps.


def _synthetic_batches(key: jax.Array, n: int, batch: int, in_dim: int, classes: int):
    """Random MNIST-shaped batches, already on the device (timing does not depend on data)."""
    out = []
    for k in jax.random.split(key, n):
        kx, ky = jax.random.split(k)
        x = jax.random.uniform(kx, (batch, in_dim), jnp.float32)
        y = jax.random.randint(ky, (batch,), 0, classes, jnp.int32)
        out.append((x, y))
    return jax.block_until_ready(out)


def bench_steps(cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the training step of every rule on the MLP, interleaved with a large matmul.

    Returns a dict with ``peak`` (the matmul) and ``rules`` (one row per rule).

    Example:
        >>> r = bench_steps({**QUICK, "rounds": 1, "inner": 1}, log=lambda s: None)
        >>> [row["rule"] for row in r["rules"]] == list(RULE_NAMES)
        True
    """
    sizes, batch, inner = cfg["mlp"], cfg["batch"], cfg["inner"]
    net = nets.mlp(sizes)
    loss = losses.softmax_cross_entropy
    opt = optax.adam(1e-3)
    data = _synthetic_batches(jax.random.key(1), 4, batch, sizes[0], sizes[-1])
    counter = _counter()

    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Callable[[], int]] = {}
    boxes: dict[str, dict[str, Any]] = {}
    for name in RULE_NAMES:
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
        flops = _flops(step.lower(state, data[0]).compile())  # outside the counted window
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
    peak_flops = _flops(dot.lower(a, a).compile())
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
    times = _interleaved({**runners, "__dot": run_dot, "__layer": run_layer}, cfg["rounds"])

    t_dot = statistics.median(times.pop("__dot"))
    t_layer = statistics.median(times.pop("__layer"))
    peak = peak_flops / t_dot
    bp = rows["backprop"]
    t_bp = statistics.median(times["backprop"])
    for name in RULE_NAMES:
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
        "rules": [rows[k] for k in RULE_NAMES],
    }


# --------------------------------------------------------------------------------------
# Output.


def _fmt_steps(r: dict[str, Any]) -> str:
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
            f"{row['first_call_s']:10.2f} {row['first_call_cpu_s']:5.2f} {row['trace_s']:5.2f} {row['lower_s']:5.2f} "
            f"{row['compile_s']:5.2f} {row['recompiles_after_first']:3d}/{row['steps_after_first']}"
        )
    lines.append(
        "overhd = ×bprop / ×FLOP (1.00: no cost beyond the extra arithmetic); 1st call = "
        "trace + lower + XLA compile + run,\nwall and CPU seconds (trace/lower/xla: wall); "
        "recomp = compilations / steps after the first"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the selected sections, print the tables, optionally write JSON."""
    cfg = QUICK if args.quick else FULL
    only = args.only or list(SECTIONS)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "meta": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "cpu_count": os.cpu_count(),
            "quick": bool(args.quick),
            "load_start": _load(),
        }
    }
    print(
        f"sgjax bench on {result['meta']['device']} ({os.cpu_count()} CPUs), "
        f"load average at start {result['meta']['load_start']}"
    )
    if "step" in only:
        result["step"] = bench_steps(cfg)
        print(_fmt_steps(result["step"]))
    result["meta"]["load_end"] = _load()
    result["meta"]["elapsed_s"] = time.perf_counter() - t_start
    print(
        f"load average at end {result['meta']['load_end']}; "
        f"{result['meta']['elapsed_s']:.0f} s in all"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
