"""The cost of a training step with interfaces vs the rule-based step (not a test).

The bench's MLP (784-256-256-256-10, batch 256, Adam) with cDNI at every hidden layer,
three step functions timed side by side in one process, interleaved round by round:

* ``rule``      — ``train.make_step(net, rules.synthetic_gradients(), ...)``;
* ``iface``     — the same ``train.make_step``, whose gradients come from one ``jax.grad``
  of the MLP written as a plain function with an ``sg_interface`` after each hidden layer
  (an :class:`~sgjax.rules.UpdateRule` adapter): only the gradient computation differs;
* ``iface-min`` — what a user writes: ``jax.grad`` + ``optax`` and nothing else (no
  metrics, no finite check), for reference.

It also checks that ``rule`` and ``iface`` compute the same gradients from the same state
(max relative difference per leaf), and counts XLA compilations per step function
(``jax.monitoring``): one each in three calls.

    python -m sgjax.apps.bench.interface_step [--rounds 7] [--inner 20] [--json out.json]

(``scripts/bench_interface.py`` runs the same.) :func:`interface_rule` is the benchmark's
contender: an :class:`~sgjax.rules.UpdateRule` whose gradients come from interfaces.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from sgjax import losses, nets, rules, train
from sgjax.infra import jsonio
from sgjax.interface import sg_interface

COMPILES = [0]


def _listen(event: str, duration_secs: float, **_: object) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        COMPILES[0] += 1


def interface_rule(net: nets.Network) -> tuple[rules.UpdateRule, Callable[..., jax.Array]]:
    """``rules.synthetic_gradients()``'s init, with gradients from interfaces + jax.grad."""
    base = rules.synthetic_gradients()
    n_hidden = net.depth - 1

    def model(params, sg, x, y):
        c = jax.nn.one_hot(y, net.out_dim)
        h = x
        for i, (stage, theta) in enumerate(zip(net.stages, params)):
            h = stage.apply(theta, h)
            if i < n_hidden:
                h = sg_interface(h, sg[i], c)
        return h

    def gradients(state, net_, params, x, y, loss):
        loss = losses.get(loss)

        def f(params, sg):
            p = model(params, sg, x, y)
            return loss.fn(p, y), p

        (value, p), (g, g_sg) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
            params, state.params
        )
        return rules.RuleOutput(value, p, g, g_sg, (), jnp.zeros((n_hidden,), p.dtype))

    return rules.UpdateRule(base.init, gradients, "sg-interface"), model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="784,256,256,256,10")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.json:  # refuse an unwritable path before the benchmark, not after it
        jsonio.check_writable(args.json, name="--json")
    jax.monitoring.register_event_duration_secs_listener(_listen)

    sizes = [int(s) for s in args.sizes.split(",")]
    net = nets.mlp(sizes)
    opt = optax.adam(1e-3)
    loss = losses.softmax_cross_entropy
    keys = jax.random.split(jax.random.key(1), 4)
    data = [
        (
            jax.random.uniform(k, (args.batch, sizes[0])),
            jax.random.randint(jax.random.fold_in(k, 1), (args.batch,), 0, sizes[-1]),
        )
        for k in keys
    ]
    rule = rules.synthetic_gradients()
    irule, model = interface_rule(net)
    state0 = train.init(jax.random.key(0), net, rule, opt)

    steps = {
        "rule": jax.jit(train.make_step(net, rule, loss, opt)),
        "iface": jax.jit(train.make_step(net, irule, loss, opt)),
    }

    @jax.jit
    def minimal(carry, batch):
        (params, sg), o = carry
        x, y = batch
        g = jax.grad(lambda v: loss.fn(model(v[0], v[1], x, y), y))((params, sg))
        updates, o = opt.update(g, o)
        return (optax.apply_updates((params, sg), updates), o), None

    v0 = (state0.params, state0.rule_state.params)
    carries: dict = {"rule": state0, "iface": state0, "iface-min": (v0, opt.init(v0))}
    compiles: dict[str, int] = {}
    for name in carries:
        c0 = COMPILES[0]
        for i in range(3):  # three calls with different data: one compile expected
            if name == "iface-min":
                carries[name] = jax.block_until_ready(minimal(carries[name], data[i])[0])
            else:
                carries[name] = jax.block_until_ready(steps[name](carries[name], data[i])[0])
        compiles[name] = COMPILES[0] - c0

    # Same gradients: rule and iface from the same state (the start, and the rule's state
    # after the three calls). Parameters after a few Adam steps are not compared: Adam moves
    # an entry whose gradient is rounding noise by up to lr, so trajectories agree only to
    # ~1e-3 here although the gradients agree to ~1e-7 (see tests/test_interface.py).
    def grad_diff(state: train.TrainState) -> float:
        x, y = data[0]
        a, b = (
            jax.jit(lambda s, r=r: r.gradients(s.rule_state, net, s.params, x, y, loss))(state)
            for r in (rule, irule)
        )
        pairs = zip(
            jax.tree.leaves((a.grads, a.rule_grads)), jax.tree.leaves((b.grads, b.rule_grads))
        )
        return max(
            float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(u)), 1e-30))
            for u, v in pairs
        )

    diff = max(grad_diff(state0), grad_diff(carries["rule"]))

    # Work per step as XLA counts it (independent of the machine's load).
    def flops(fn: Callable[..., object], *args: object) -> float:
        cost = fn.lower(*args).compile().cost_analysis()  # type: ignore[attr-defined]
        if isinstance(cost, list | tuple):
            return float(sum(c.get("flops", 0.0) for c in cost))
        return float(cost.get("flops", 0.0))

    mflops = {
        "rule": flops(steps["rule"], state0, data[0]) / 1e6,
        "iface": flops(steps["iface"], state0, data[0]) / 1e6,
        "iface-min": flops(minimal, (v0, opt.init(v0)), data[0]) / 1e6,
    }

    times: dict[str, list[float]] = {k: [] for k in carries}
    for _ in range(args.rounds):
        for name in carries:
            c = carries[name]
            t0 = time.perf_counter()
            for i in range(args.inner):
                b = data[i % len(data)]
                c = minimal(c, b)[0] if name == "iface-min" else steps[name](c, b)[0]
            jax.block_until_ready(c)
            times[name].append((time.perf_counter() - t0) / args.inner)
            carries[name] = c

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "mlp": sizes,
        "batch": args.batch,
        "rounds": args.rounds,
        "inner": args.inner,
        "backend": jax.default_backend(),
        "load_avg": list(os.getloadavg()),
        "median_step_ms": {k: 1e3 * v for k, v in med.items()},
        "min_step_ms": {k: 1e3 * min(v) for k, v in times.items()},
        "ratio_iface_over_rule": med["iface"] / med["rule"],
        "ratio_iface_min_over_rule": med["iface-min"] / med["rule"],
        "compiles_in_3_calls": compiles,
        "mflop_per_step": mflops,
        "max_rel_grad_diff_rule_vs_iface": diff,
    }
    for k in carries:
        print(
            f"{k:10s} median {1e3 * med[k]:7.2f} ms/step (min {1e3 * min(times[k]):6.2f}), "
            f"{mflops[k]:7.1f} MFLOP, {compiles[k]} compile(s) in 3 calls"
        )
    print(
        f"iface / rule = {result['ratio_iface_over_rule']:.3f}, iface-min / rule = "
        f"{result['ratio_iface_min_over_rule']:.3f}; rule vs iface gradients from the same "
        f"state: max relative difference {diff:.2e}; "
        f"load average {result['load_avg']}"
    )
    if args.json:
        jsonio.write_or_keep(args.json, result, name="--json")  # strict JSON (no NaN)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
