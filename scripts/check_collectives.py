"""The multi-process runners against the single-process reference, call by call.

gloo's CPU collectives have had silent-corruption bugs in some operations; a job of
several processes must compute what one process with the same number of devices does.
This runs each mesh method for ``--calls`` jitted calls twice — in one process with two
fake CPU devices (the per-process SG runner's reference there is the SPMD mesh runner,
which it must equal), and as two processes of one ``jax.distributed`` job (``sgjax.pipeline
.launch``, gloo collectives) — and compares the *whole* training state (parameters,
optimiser states, SG modules, messages in flight) after every call: the SHA-256 of its
bytes, and at the first difference the largest absolute difference.

Usage::

    python scripts/check_collectives.py --out docs/results/fault-injection [--calls 200]

Writes ``collectives.md`` and ``collectives.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (name, train_pipelined keyword arguments); each call is `chunk` (or M) micro-batches
RUNS = [
    ("sg-pipeline, per-process runner", {"method": "sg-pipeline", "sg_runner": "per-process"}),
    ("sg-pipeline, SPMD mesh runner", {"method": "sg-pipeline", "sg_runner": "mesh"}),
    ("gpipe (M = 2)", {"method": "gpipe", "micro_batches": 2}),
    ("data-parallel", {"method": "data-parallel"}),
]
CHUNK, BATCH = 2, 16


def worker(out: str, calls: int, plant: int = -1) -> None:
    """Run every entry of RUNS; record the state's hash after each call (rank 0 writes)."""
    from sgjax.pipeline.distributed import initialize_from_env

    initialize_from_env()
    import jax
    import numpy as np
    import optax

    from sgjax import nets, rules
    from sgjax.infra import data
    from sgjax.infra.run import Run
    from sgjax.pipeline import Schedule, make_mesh, train_pipelined

    ds = data.load("digits")
    net = nets.mlp([64, 32, 10])  # two stages: one per device
    results = {}
    for name, kw in RUNS:
        kw = dict(kw)
        method = kw.pop("method")
        if kw.get("sg_runner") == "per-process" and jax.process_count() == 1:
            kw["sg_runner"] = "mesh"  # one process: the per-process runner's reference
        per_call = kw.get("micro_batches", CHUNK)
        hashes: list[str] = []
        last: list = []

        def on_call(seen, get_state, hashes=hashes, last=last):
            leaves = [np.asarray(x) for x in jax.tree.leaves(get_state())]
            if plant == len(hashes) and jax.process_count() > 1:  # --plant: must be caught
                leaves[0] = np.nextafter(leaves[0], np.inf).astype(leaves[0].dtype)
            h = hashlib.sha256()
            for a in leaves:
                h.update(np.ascontiguousarray(a).tobytes())
            hashes.append(h.hexdigest())
            last[:] = leaves

        t0 = time.perf_counter()
        rule = rules.synthetic_gradients() if method == "sg-pipeline" else rules.backprop()
        run = Run(net, rule, "xent", optax.adam(1e-3), steps=calls * per_call, batch_size=BATCH)
        schedule = Schedule(chunk=CHUNK, mesh=make_mesh(2), **kw)
        train_pipelined(method, run, ds.x_train, ds.y_train, schedule=schedule, on_call=on_call)
        results[name] = {
            "hashes": hashes,
            "seconds": time.perf_counter() - t0,
            "final": [a.tolist() for a in last if a.dtype.kind == "f"],
        }
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps({"processes": jax.process_count(), "runs": results}))


def main() -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/fault-injection")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--plant", type=int, default=-1, metavar="K",
                   help="self-test: the multi-process side moves one value by one ulp after "
                   "call K; the report must show that call as the first difference")  # fmt: skip
    args = p.parse_args()
    from sgjax.pipeline import launch

    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one.json", Path(tmp) / "two.json"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--worker", str(one), str(args.calls)],
            env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            check=True,
        )
        launch([sys.executable, __file__, "--worker", str(two), str(args.calls),
                str(args.plant)], 2, env=env, echo=False, timeout=1800)  # fmt: skip
        seconds = time.perf_counter() - t0
        ref, job = json.loads(one.read_text()), json.loads(two.read_text())
    rows = []
    for name, _ in RUNS:
        a, b = ref["runs"][name], job["runs"][name]
        diff = [i for i, (u, v) in enumerate(zip(a["hashes"], b["hashes"])) if u != v]
        final = max(
            (float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
             for u, v in zip(a["final"], b["final"])), default=0.0,
        )  # fmt: skip
        rows.append({
            "run": name, "calls": len(a["hashes"]), "calls_compared": len(b["hashes"]),
            "identical_calls": len(a["hashes"]) - len(diff) if len(a["hashes"]) == len(
                b["hashes"]) else 0,
            "first_difference": diff[0] if diff else None, "final_max_abs_diff": final,
        })  # fmt: skip
    ok = all(r["first_difference"] is None and r["calls"] == r["calls_compared"] >= args.calls
             for r in rows)  # fmt: skip
    summary = {"all_identical": ok, "calls": args.calls, "seconds": seconds,
               "processes": job["processes"], "load_average": os.getloadavg(),
               "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "collectives.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        "# Multi-process runners against the single-process reference",
        "",
        f"`python scripts/check_collectives.py --calls {args.calls}`: each mesh method of "
        "`train_pipelined` on a 64-32-10 MLP (digits, batch 16, two stages), run in one "
        "process with two fake CPU devices and as two processes of one `jax.distributed` "
        "job (gloo collectives, `sgjax.pipeline.launch`). After every jitted call the whole "
        "training state is gathered and hashed (SHA-256 of every leaf's bytes). "
        f"{seconds:.0f} s on 2 cores (load average {summary['load_average'][0]:.1f}).",
        "",
        f"**Every call bit-identical: {'yes' if ok else 'NO'}.**",
        "",
        "| run | calls | identical calls | first difference | final max abs diff |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['calls']} | {r['identical_calls']} | "
                     f"{'none' if r['first_difference'] is None else r['first_difference']} | "
                     f"{r['final_max_abs_diff']:.3g} |")  # fmt: skip
    (args.out / "collectives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else -1)
        sys.exit(0)
    sys.exit(main())
