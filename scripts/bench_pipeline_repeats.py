"""Fresh-process repeats of the SG pipeline against sequential SG on one core (not a test).

Single runs of ``scripts/bench_pipeline.py`` on a shared 2-core machine move by 30-50 %
between processes (a process can land in a slow mode: see docs/performance.md), so this
script interleaves R rounds of fresh launches: ``sg`` on one pinned core, then the SG
pipeline on 2 pinned processes — with this checkout's code and, with ``--other-root``,
with another checkout's (e.g. a worktree of an older commit), side by side — and prints
every round and the medians. ``--messages`` instead times the messages alone: two one-way
``ppermute`` per tick against one swap, over widths, in R fresh 2-process launches.

    python scripts/bench_pipeline_repeats.py --size 512x64 --rounds 3 --spmd
    python scripts/bench_pipeline_repeats.py --size 512x64 --other-root ../old-checkout
    python scripts/bench_pipeline_repeats.py --messages --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sgjax.apps.bench.pipeline_compare import run_job
from sgjax.pipeline.distributed import initialize_from_env, launch

HERE = Path(__file__).resolve().parents[1]


def _messages_worker(out: str) -> None:
    initialize_from_env()
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from sgjax.pipeline.mesh import AXIS, _put, _shard_map, make_mesh

    mesh, res = make_mesh(2), {}
    for k in (256, 523, 795, 1035):
        for mode in ("two one-way", "one swap"):

            def device(h, mode=mode):
                def tick(c, _):
                    if mode == "two one-way":
                        a = lax.ppermute(c, AXIS, [(0, 1)])
                        return a + lax.ppermute(c, AXIS, [(1, 0)]) + 1.0, None
                    return lax.ppermute(c, AXIS, [(0, 1), (1, 0)]) + 1.0, None

                return lax.scan(tick, h, None, length=200)[0]

            f = jax.jit(_shard_map(device, mesh, (P(AXIS),), P(AXIS)))
            x = _put(jnp.zeros((2 * 64, k), jnp.float32), mesh, P(AXIS))
            jax.block_until_ready(f(x))
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                jax.block_until_ready(f(x))
                best = min(best, time.perf_counter() - t0)
            res[f"{mode}, 64x{k} ({64 * k * 4 / 1e3:.0f} kB)"] = round(best / 200 * 1e3, 3)
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="512x64", help="WIDTHxMICRO_BATCH (default 512x64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="training time per launch")
    p.add_argument("--chunk", type=int, default=50, help="micro-batches per call (default 50)")
    p.add_argument("--other-root", type=Path, default=None, help="a second checkout to compare")
    p.add_argument("--messages", action="store_true", help="time the messages alone")
    p.add_argument(
        "--spmd", action="store_true", help="also run the SG pipeline as one SPMD program"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _messages_worker(a.worker)
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if a.messages:
            for r in range(a.rounds):
                out = tmp / f"m{r}.json"
                cmd = [sys.executable, __file__, "--worker", str(out)]
                launch(cmd, 2, timeout=300, pin=True, echo=False)
                print(f"round {r}: ms per tick: {out.read_text()}", flush=True)
            return 0
        w, b = (int(v) for v in a.size.split("x"))
        roots = {"this": HERE, **({"other": a.other_root.resolve()} if a.other_root else {})}
        common = {"batch_size": b, "micro_batches": 8, "lr": 1e-3, "chunk": a.chunk,
                  "sizes": [784, w, w, w, 10], "stages": 2, "seconds": a.seconds,
                  "eval_every": None}  # fmt: skip
        rows: dict[str, list[float]] = {}
        for r in range(a.rounds):
            runs = [("sg, 1 core", "sg", 1, HERE, "auto")]
            runs += [(f"sg-pipeline ({k})", "sg-pipeline", 2, v, "auto") for k, v in roots.items()]
            if a.spmd:  # this checkout's one-SPMD-program runner, side by side
                runs += [("sg-pipeline (this, SPMD)", "sg-pipeline", 2, HERE, "mesh")]
            for label, method, n, root, runner in runs:
                run = {**common, "label": label, "method": method, "sg_runner": runner}
                (row,) = run_job(
                    [run], n, tmp / f"{label}{r}".replace(" ", "").replace(",", ""),
                    cores=[0] if n == 1 else None, data_dir=a.data_dir, timeout=300,
                    env={**os.environ, "PYTHONPATH": str(root)},
                )  # fmt: skip
                rows.setdefault(f"{label}: ex/s", []).append(round(row["examples_per_s"]))
                if method == "sg-pipeline":
                    rows.setdefault(f"{label}: ms/tick", []).append(
                        round(row["s_per_tick"] * 1e3, 2)
                    )
                    rows.setdefault(f"{label}: messages ms/tick", []).append(
                        round(row["messaging_s_per_tick"] * 1e3, 3)
                    )
            print(f"round {r}: {json.dumps(rows)}", flush=True)
        print("medians:", json.dumps({k: statistics.median(v) for k, v in rows.items()}))
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
