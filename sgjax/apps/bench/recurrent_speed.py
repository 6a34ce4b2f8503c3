"""Speed and activation memory of recurrent DNI (the ``dni-rnn`` row of ``sgjax bench``).

* :func:`speed` — time per character of a DNI-T window step, a BPTT-T window step and full
  BPTT over the whole sequence, measured side by side in interleaved rounds (median);
* :func:`memory` — XLA's ``temp_size_in_bytes`` (``jax.jit(...).lower(...).compile()
  .memory_analysis()``) of one window's gradient computation: a DNI-T window holds the
  activations of T steps whatever the sequence length, full BPTT those of all L steps.

Example:
    >>> rows = memory(hidden=8, batch=2, window=4, lengths=(8, 32))
    >>> [r["full_bptt_bytes"] > r["dni_bytes"] for r in rows]
    [True, True]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax.recurrent import cells, core

VOCAB = 65


def _model(hidden: int) -> core.Model:
    return core.Model(cells.lstm(hidden), VOCAB, VOCAB, "xent")


def _window(h: core.Harness, batch: int, length: int) -> core.Window:
    z = jnp.zeros(())
    c = jnp.zeros((batch, max(h.context_dim, 1)))
    return core.Window(
        jnp.zeros((length, batch, VOCAB)),
        jnp.zeros((length, batch), jnp.int32),
        jnp.ones((length, batch)),
        c,
        c,
        z + 1,
        z + 1,
    )


def temp_bytes(h: core.Harness, batch: int, length: int) -> int:
    """XLA temp (activation) bytes of one window's gradients over ``length`` steps."""
    key = jax.random.key(0)
    params = core.init_params(h.model, key, aux=h.method == "dni_aux")
    sg = None
    if h.sg is not None:
        sg = h.sg.init(key, (h.model.cell.state_dim,), max(h.context_dim, 1))
    carry = core.initial_carry(h, batch)
    fn = jax.jit(lambda p, s, c, w: core.window_grads(h, p, s, c, w))
    compiled = fn.lower(params, sg, carry, _window(h, batch, length)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:  # pragma: no cover - backends without the analysis
        raise RuntimeError("this backend gives no memory analysis")
    return int(analysis.temp_size_in_bytes)


def memory(
    hidden: int = 128, batch: int = 32, window: int = 8, lengths: Sequence[int] = (64, 256, 1024)
) -> list[dict]:
    """Activation bytes of a DNI-T window vs full BPTT over ``L`` steps, for each L."""
    model = _model(hidden)
    dni = temp_bytes(core.harness(model, window=window, method="dni"), batch, window)
    rows = []
    for L in lengths:
        full = temp_bytes(core.harness(model, window=L, method="bptt"), batch, L)
        rows.append(
            {
                "length": L,
                "window": window,
                "dni_bytes": dni,
                "full_bptt_bytes": full,
                "ratio": full / dni,
            }
        )
    return rows


def speed(
    hidden: int = 128, batch: int = 32, window: int = 8, length: int = 240, rounds: int = 5
) -> dict:
    """Median seconds per character of DNI-T, BPTT-T and full BPTT (one update per window,
    one per sequence for full BPTT), timed in interleaved rounds on the same data."""
    if length % window:
        raise ValueError(f"`length` ({length}) must be a multiple of `window` ({window})")
    model = _model(hidden)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(length + 1, batch))
    x = np.eye(VOCAB, dtype=np.float32)[ids[:-1]]
    y = ids[1:]
    opt = optax.adam(1e-3)
    runs: dict[str, list[Any]] = {}
    for name, method, T in (
        ("dni", "dni", window),
        ("bptt", "bptt", window),
        ("full_bptt", "bptt", length),
    ):
        h = core.harness(model, window=T, method=method)
        state = core.init(h, jax.random.key(0), opt)
        step = core.make_window_step(h, opt)
        state, _, _ = core.train_sequence(h, step, state, x, y)  # compile
        jax.block_until_ready(state)
        runs[name] = [h, step, state, []]
    for _ in range(rounds):
        for r in runs.values():
            h, step, state, times = r
            t0 = time.perf_counter()
            state, _, _ = core.train_sequence(h, step, state, x, y)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
            r[2] = state
    per_char = {k: statistics.median(r[3]) / (length * batch) for k, r in runs.items()}
    return {
        "hidden": hidden,
        "batch": batch,
        "window": window,
        "length": length,
        "rounds": rounds,
        "seconds_per_char": per_char,
        "dni_over_bptt": per_char["dni"] / per_char["bptt"],
        "dni_over_full": per_char["dni"] / per_char["full_bptt"],
    }


def bench_row(hidden: int = 128, batch: int = 32, window: int = 8, length: int = 240) -> dict:
    """The ``dni-rnn`` row for ``sgjax bench``: speed ratios and the memory ratio at L."""
    s = speed(hidden, batch, window, length)
    m = memory(hidden, batch, window, (length,))[0]
    return {"name": "dni-rnn", **s, "memory": m}
