"""``sgjax bench`` section ``pipeline``: the rows of
:func:`sgjax.apps.bench.pipeline_throughput.benchmark_pipeline`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sgjax.apps.bench.sizes import FULL
from sgjax.pipeline.distributed import with_device_count


def bench_pipeline(cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run :func:`~sgjax.apps.bench.pipeline_throughput.benchmark_pipeline` on fake CPU
    devices in a subprocess (the device count must be set before JAX starts).

    Returns the rows with ``"ok": True``; a failed run gives ``"ok": False`` and the
    ``error`` (the end of its output), and makes ``sgjax bench`` exit with status 1.
    """
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
        "from sgjax.apps.bench.pipeline_throughput import benchmark_pipeline\n"
        f"r = benchmark_pipeline({n}, **{kwargs!r})\n"
        "print('RESULT' + json.dumps(r, default=float))\n"
    )
    # the caller's XLA flags (as the sections in this process compile), n fake devices
    env = {**os.environ, "XLA_FLAGS": with_device_count(os.environ.get("XLA_FLAGS", ""), n)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": "pipeline benchmark failed: " + " | ".join(tail)}
    log(f"  pipeline: {n} fake devices done")
    return {"ok": True, "devices": n, **json.loads(lines[-1][len("RESULT") :])}


def format_pipeline(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return f"Pipeline: FAILED ({r.get('error')})"
    rows = [f"Pipeline on {r['devices']} fake CPU devices (sgjax.apps.bench.pipeline_throughput):"]
    rows += [
        f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}"
        for k, v in r.items()
        if k not in ("ok", "devices")
    ]
    return "\n".join(rows)
