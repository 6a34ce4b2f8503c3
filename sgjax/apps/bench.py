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
from collections.abc import Callable
from typing import Any, ClassVar

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
    "rounds": 25,
    "inner": 5,
    "theory_instances": 64,
    "theory_steps": 2000,
    "deep_stages": 50,
    "deep_width": 512,
    "deep_batch": 1024,
    # More fake devices than cores cannot run side by side: 2 to 4, as the cores allow.
    "pipeline_devices": max(2, min(4, os.cpu_count() or 2)),
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

    EVENTS: ClassVar[dict[str, str]] = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def __init__(self) -> None:
        self.count = 0
        self.seconds = dict.fromkeys(self.EVENTS.values(), 0.0)
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration_secs: float, **_: str | int) -> None:
        if event in self.EVENTS:
            self.seconds[self.EVENTS[event]] += duration_secs
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


def bench_steps(
    cfg: dict[str, Any],
    log: Callable[[str], None] = print,
    rule_names: tuple[str, ...] = RULE_NAMES,
) -> dict[str, Any]:
    """Time the training step of every rule on the MLP, interleaved with a large matmul.

    Returns a dict with ``peak`` (the matmul) and ``rules`` (one row per rule).

    Example:
        >>> r = bench_steps({**QUICK, "rounds": 1, "inner": 1}, log=lambda s: None,
        ...                 rule_names=("backprop",))
        >>> r["rules"][0]["rule"], r["rules"][0]["recompiles_after_first"]
        ('backprop', 0)
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


# --------------------------------------------------------------------------------------
# Section 3: the theory sweep, vmapped against a Python loop.


def _own_theorem1_run(key: jax.Array, d: int, S: int, steps: int) -> jax.Array:
    """Theorem 1's setting (linear regression, linear SG ``(α+1)p − (β+1)y + γ`` between
    p and the loss, both trained by gradient steps): distance to the least-squares fit."""
    kx, kw = jax.random.split(key)
    Xb = jnp.concatenate([jax.random.normal(kx, (d, S)), jnp.ones((1, S))], axis=0)
    y = jax.random.normal(kw, (d + 1,)) @ Xb
    G = Xb @ Xb.T
    mu = 0.5 / jnp.linalg.eigvalsh(G)[-1]
    W_ols = jnp.linalg.solve(G, Xb @ y)

    def step(carry, _):
        W, omega = carry
        p = W @ Xb
        A = jnp.stack([p, -y, jnp.ones_like(y)], axis=1)
        xi = A @ omega
        sg = p - y + xi
        # The SG's own step is line-searched as in the theorem: ν = ‖Aᵀξ‖² / ‖AAᵀξ‖².
        Atxi = A.T @ xi
        AAtxi = A @ Atxi
        den = AAtxi @ AAtxi
        nu = jnp.where(den > 0, (Atxi @ Atxi) / jnp.where(den > 0, den, 1.0), 0.0)
        return (W - mu * sg @ Xb.T, omega - nu * Atxi), None

    (W, _), _ = jax.lax.scan(step, (jnp.zeros(d + 1), jnp.array([-1.0, -1.0, 0.0])), None, steps)
    return jnp.linalg.norm(W - W_ols)


def _theory_claim(steps: int, n: int) -> tuple[str, Callable[[Any], jax.Array], Any]:
    """The per-instance check to sweep and ``n`` instances of its input (leading axis):
    theory's own Theorem 1 run when importable, else the bench's copy."""
    try:
        from theory import theorem1  # the claim package may be absent from this install

        run_one = theorem1._line_search_one
        Xb, y = theorem1.instances_np(jax.random.key(0), n, 5, 50)
        omega0 = jnp.array([-1.0, -1.0, 0.0])

        def check(inputs: Any) -> jax.Array:
            return run_one(
                inputs[0],
                inputs[1],
                omega0,
                jnp.asarray(steps),
                jnp.asarray(0.0),
                jnp.asarray(False),
            )

        jax.eval_shape(check, (Xb[0], y[0]))
    except (ImportError, AttributeError, TypeError):
        return (
            f"Theorem 1 linear-SG regression, {steps} steps (bench's own copy: the theory "
            "package is not importable)",
            lambda k: _own_theorem1_run(k, 5, 50, steps),
            jax.random.split(jax.random.key(0), n),
        )
    return (
        f"theory.theorem1 line-search run (d=5, S=50, {steps} steps): the thm1 claim check",
        check,
        (jnp.asarray(Xb), jnp.asarray(y)),
    )


def bench_theory(cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Instances per second of a claim check: ``jit(vmap(check))`` over all instances
    against a Python loop calling ``jit(check)`` once per instance (compile excluded).

    Example:
        >>> r = bench_theory({**QUICK, "theory_instances": 2, "theory_steps": 3},
        ...                  log=lambda s: None)
        >>> r["instances"], r["max_rel_diff"] < 1e-6
        (2, True)
    """
    n, steps = cfg["theory_instances"], cfg["theory_steps"]
    with jax.enable_x64(True):  # the claims are checked in float64
        name, check, inputs = _theory_claim(steps, n)
        each = [jax.tree.map(lambda a, i=i: a[i], inputs) for i in range(n)]
        one = jax.jit(check)
        many = jax.jit(jax.vmap(check))
        jax.block_until_ready((one(each[0]), many(inputs)))  # compile both
        t0 = time.perf_counter()
        loop_out = jnp.stack([one(item) for item in each])
        jax.block_until_ready(loop_out)
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        vm_out = jax.block_until_ready(many(inputs))
        t_vmap = time.perf_counter() - t0
        # Batched kernels may sum in another order: compare relative to the values' scale.
        scale = float(jnp.max(jnp.abs(jnp.nan_to_num(loop_out))))
        diff = float(jnp.max(jnp.abs(jnp.nan_to_num(vm_out - loop_out)))) / max(scale, 1e-300)
    log(f"  theory: {name}: loop {t_loop:.2f} s, vmap {t_vmap:.2f} s")
    return {
        "claim": name,
        "instances": n,
        "loop_s": t_loop,
        "vmap_s": t_vmap,
        "loop_per_s": n / t_loop,
        "vmap_per_s": n / t_vmap,
        "speedup": t_loop / t_vmap,
        "max_rel_diff": diff,
    }


# --------------------------------------------------------------------------------------
# Section 4: peak memory of a deep network.


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    # Everything live at the peak, by XLA's buffer assignment: inputs, outputs, scratch.
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def bench_memory(
    cfg: dict[str, Any],
    log: Callable[[str], None] = print,
    names: tuple[str, ...] = ("backprop", "sg", "sg-linear"),
) -> dict[str, Any]:
    """XLA's memory account of one training step (and of the gradients alone) of a deep MLP
    under backprop, SG everywhere, and SG everywhere without the label term.

    ``temp`` is the scratch memory (activations and intermediates); ``peak`` adds the
    arguments and outputs (parameters, optimiser states, SG modules). Compiled only, never
    run: the figures are deterministic.

    Example:
        >>> r = bench_memory(QUICK, log=lambda s: None, names=("backprop",))
        >>> r["rows"][0]["temp_ratio"]
        1.0
    """
    n, width, batch = cfg["deep_stages"], cfg["deep_width"], cfg["deep_batch"]
    net = nets.mlp([width] * n + [10])
    loss = losses.softmax_cross_entropy
    opt = optax.adam(1e-3)
    x = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variants = {
        "backprop": rules.backprop,
        "sg": rules.synthetic_gradients,
        "sg-linear": lambda: rules.synthetic_gradients("linear"),
    }
    if not names or names[0] != "backprop" or not set(names) <= set(variants):
        raise ValueError(
            f"`names` must start with 'backprop' and come from {sorted(variants)}, got {names}"
        )
    rows: list[dict[str, Any]] = []
    for name in names:
        rule = variants[name]()
        state = jax.eval_shape(
            lambda k, rule=rule: train.init(k, net, rule, opt), jax.random.key(0)
        )

        def grads(s, x, y, rule=rule):
            out = rule.gradients(s.rule_state, net, s.params, x, y, loss)
            return out.grads, out.rule_grads

        step = _memory(
            jax.jit(train.make_step(net, rule, loss, opt)).lower(state, (x, y)).compile()
        )
        grad = _memory(jax.jit(grads).lower(state, x, y).compile())
        rows.append({"rule": name, "step": step, "gradients": grad})
        log(f"  memory: compiled {name}")
    bp = rows[0]
    for row in rows:
        row["temp_ratio"] = row["gradients"]["temp_bytes"] / bp["gradients"]["temp_bytes"]
        row["step_temp_ratio"] = row["step"]["temp_bytes"] / bp["step"]["temp_bytes"]
        row["step_peak_ratio"] = row["step"]["peak_bytes"] / bp["step"]["peak_bytes"]
    act = batch * width * 4
    return {
        "model": f"mlp {n} stages ({n - 1}×{width} hidden, 10 out), batch {batch}, adam",
        "activation_bytes": act,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# Section 5: the pipeline rows (another process: fake devices are fixed at JAX start-up).


def bench_pipeline(cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run :func:`sgjax.pipeline.benchmark_pipeline` on fake CPU devices in a subprocess.

    Returns ``{"available": False, "reason": ...}`` when sgjax has no pipeline module.
    """
    import importlib.util

    if importlib.util.find_spec("sgjax.pipeline") is None:
        return {"available": False, "reason": "sgjax.pipeline is not part of this version"}
    n = cfg["pipeline_devices"]
    kwargs = (
        {}
        if cfg is FULL
        else {
            "sizes": [16, *([8] * (n - 1)), 4],
            "batch_size": 4,
            "micro_batches": 2,
            "ticks": 4,
            "repeats": 1,
        }
    )
    code = (
        "import json, sys\n"
        "from sgjax.pipeline import benchmark_pipeline\n"
        f"r = benchmark_pipeline({n}, **{kwargs!r})\n"
        "print('RESULT' + json.dumps(r, default=float))\n"
    )
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"available": False, "reason": "pipeline benchmark failed: " + " | ".join(tail)}
    log(f"  pipeline: {n} fake devices done")
    return {"available": True, "devices": n, **json.loads(lines[-1][len("RESULT") :])}


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


def _fmt_theory(r: dict[str, Any]) -> str:
    return (
        f"Theory sweep: {r['claim']}\n"
        f"{r['instances']} instances: Python loop {r['loop_per_s']:.1f}/s, vmapped "
        f"{r['vmap_per_s']:.1f}/s, speed-up {r['speedup']:.1f}x "
        f"(max |vmap - loop| / max |loop| = {r['max_rel_diff']:.1e})"
    )


def _fmt_memory(r: dict[str, Any]) -> str:
    mib = 2.0**20
    lines = [
        f"Peak memory (XLA memory_analysis, compiled step): {r['model']}; "
        f"one activation = {r['activation_bytes'] / mib:.1f} MiB",
        f"{'rule':10s} {'grads temp':>10s} {'×bprop':>6s} {'step temp':>9s} {'×bprop':>6s} "
        f"{'step args':>9s} {'step peak':>9s} {'×bprop':>6s}   (MiB)",
    ]
    for row in r["rows"]:
        g, st = row["gradients"], row["step"]
        lines.append(
            f"{row['rule']:10s} {g['temp_bytes'] / mib:10.1f} {row['temp_ratio']:6.2f} "
            f"{st['temp_bytes'] / mib:9.1f} {row['step_temp_ratio']:6.2f} "
            f"{st['argument_bytes'] / mib:9.1f} {st['peak_bytes'] / mib:9.1f} "
            f"{row['step_peak_ratio']:6.2f}"
        )
    lines.append(
        "grads temp: scratch of the gradient computation alone (activations); step peak: "
        "arguments + outputs + scratch\n(SG's arguments include one 512×512 module and its "
        "Adam state per boundary)"
    )
    return "\n".join(lines)


def _fmt_pipeline(r: dict[str, Any]) -> str:
    if not r.get("available"):
        return f"Pipeline: not run ({r.get('reason')})"
    rows = [f"Pipeline on {r['devices']} fake CPU devices (sgjax.pipeline.benchmark_pipeline):"]
    rows += [
        f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}"
        for k, v in r.items()
        if k not in ("available", "devices")
    ]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """Run the selected sections, print the tables, optionally write JSON."""
    from sgjax.infra import jsonio

    if args.json:
        jsonio.check_writable(args.json, name="--json")  # before the benchmarks, not after
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
    sections = {
        "step": (bench_steps, _fmt_steps),
        "theory": (bench_theory, _fmt_theory),
        "memory": (bench_memory, _fmt_memory),
        "pipeline": (bench_pipeline, _fmt_pipeline),
    }
    for name, (bench, fmt) in sections.items():
        if name in only:
            t0 = time.perf_counter()
            result[name] = bench(cfg)
            result[name]["section_s"] = time.perf_counter() - t0
            print(fmt(result[name]), flush=True)
    result["meta"]["load_end"] = _load()
    result["meta"]["elapsed_s"] = time.perf_counter() - t_start
    print(
        f"load average at end {result['meta']['load_end']}; "
        f"{result['meta']['elapsed_s']:.0f} s in all"
    )
    if args.json:
        jsonio.write_or_keep(args.json, result, name="--json")
    return 0
