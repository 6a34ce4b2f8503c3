"""Measurement helpers of ``sgjax bench``: load average, compile counter, FLOPs, rounds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return None


class CompileCounter:
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


# One listener per process (jax.monitoring listeners cannot be removed): the only
# module-level state of the bench, and it only ever grows from None to one counter.
_COUNTER: CompileCounter | None = None


def compile_counter() -> CompileCounter:
    global _COUNTER
    if _COUNTER is None:  # one listener per process: listeners cannot be removed
        _COUNTER = CompileCounter()
    return _COUNTER


def flops(compiled: Any) -> float:
    """FLOPs of a compiled computation from XLA's cost analysis (dict or list of dicts)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        return float(sum(c.get("flops", 0.0) for c in cost))
    return float(cost.get("flops", 0.0))


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
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
