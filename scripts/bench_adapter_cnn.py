#!/usr/bin/env python3
"""The flax adapter's CNN (issue 28): SG parameter count and SG/backprop step-time ratio,
before (the flatten inside the conv block: a flat 3136-vector boundary, the dense cDNI SG
there) and after (the flatten joins the next module: an (H, W, C) boundary, the conv SG via
``flax_adapter.estimator_per_boundary``), side by side in one process.

Conv(1→4, 3×3)-ReLU-flatten-Linear(3136→128)-ReLU-Linear(128→10) on random 28×28 inputs,
batch 64, Adam, SG at every boundary. Each configuration: one compile step, then 5 rounds
of 10 steps interleaved with the others; the median ms/step. Usage:
``python scripts/bench_adapter_cnn.py``.
"""

from __future__ import annotations

import time
import warnings

import jax
import numpy as np
import optax
from flax import nnx

from sgjax import flax_adapter, rules, train


def blocks() -> list:
    r = nnx.Rngs(0)
    flatten = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    return [nnx.Conv(1, 4, (3, 3), rngs=r), nnx.relu, flatten,
            nnx.Linear(3136, 128, rngs=r), nnx.relu, nnx.Linear(128, 10, rngs=r)]  # fmt: skip


def main() -> None:
    x = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 10)
    b = blocks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before, _ = flax_adapter.network_from_nnx([nnx.Sequential(*b[:3]), *b[3:]], x[:1])
    print("before, network_from_nnx warns:", *(str(w.message) for w in caught))
    after, _ = flax_adapter.network_from_nnx(blocks(), x[:1])
    cases = {
        "before SG": (before, rules.synthetic_gradients()),
        "before backprop": (before, rules.backprop()),
        "after SG": (after, rules.synthetic_gradients(flax_adapter.estimator_per_boundary(after))),
        "after backprop": (after, rules.backprop()),
    }
    opt, steps = optax.adam(1e-3), {}
    for name, (net, rule) in cases.items():
        state = train.init(jax.random.key(0), net, rule, opt)
        n_net = sum(v.size for v in jax.tree.leaves(state.params))
        n_sg = sum(v.size for v in jax.tree.leaves(state.rule_state))
        print(f"{name}: boundaries {[s.out_shape for s in net.stages[:-1]]}, "
              f"network {n_net:,} parameters, SG modules {n_sg:,}")  # fmt: skip
        step = jax.jit(train.make_step(net, rule, "xent", opt))
        state, m = step(state, (x, y))
        jax.block_until_ready(m)
        steps[name] = [step, state]
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(5):
        for name, entry in steps.items():
            t0 = time.perf_counter()
            for _ in range(10):
                entry[1], m = entry[0](entry[1], (x, y))
            jax.block_until_ready(m)
            times[name].append((time.perf_counter() - t0) / 10)
    ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    for when in ("before", "after"):
        sg, bp = ms[f"{when} SG"], ms[f"{when} backprop"]
        print(f"{when}: SG {sg:.2f} ms/step, backprop {bp:.2f} ms/step, ratio {sg / bp:.2f}")


if __name__ == "__main__":
    main()
