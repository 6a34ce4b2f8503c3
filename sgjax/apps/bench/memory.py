"""``sgjax bench`` section ``memory``: XLA's account of the peak memory of a deep net."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sgjax import losses, nets, rules, train


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
        >>> from sgjax.apps.bench.sizes import QUICK
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


def format_memory(r: dict[str, Any]) -> str:
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
