"""The comparison the pipeline exists for: the same cores, one process per core.

:func:`compare` runs, side by side in one call, on MNIST:

* ``backprop, 1 core`` and ``sg, 1 core``: one process pinned to one core (sequential
  backprop; sequential DNI with the SG module at the same stage boundary);
* ``backprop, 1 process, all cores``: one unpinned process, XLA's own intra-op threads
  (what a user gets without doing anything);
* ``data-parallel``, ``gpipe``, ``sg-pipeline``: N processes (:func:`launch`), each
  pinned to its own core, one ``jax.distributed`` job (gloo collectives);

each until a target test accuracy or a time budget, and reports examples/s, the time to
the target (training time, compile and evaluation excluded; the compiling first call is
charged at the measured rate) and the learning curve. A sweep then measures the SG
pipeline's throughput against ``sg, 1 core`` over (width, micro-batch) sizes, with the
time per tick of the pipeline's messages alone (a program that only sends them).

The network is ``mlp(sizes)`` regrouped into N stages of about equal work
(:func:`balanced_net`): a stage may hold several dense layers, so that neither process
waits for the other.

Example (shell; see docs/pipeline.md)::

    python scripts/bench_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sgjax.pipeline.distributed import initialize_from_env, launch

#: the contenders of the main table: (label, method, processes (None: N), pinned)
CONTENDERS = (
    ("backprop, 1 core", "backprop", 1, True),
    ("sg, 1 core", "sg", 1, True),
    ("backprop, 1 process, all cores", "backprop", 1, False),
    ("data-parallel", "data-parallel", None, True),
    ("gpipe", "gpipe", None, True),
    ("sg-pipeline", "sg-pipeline", None, True),  # per process: each its stage's program
    ("sg-pipeline, one SPMD program", "sg-pipeline", None, True),  # sg_on_mesh
)
#: the SG pipeline's runner per contender label (train_pipelined's ``sg_runner``)
RUNNERS = {"sg-pipeline": "auto", "sg-pipeline, one SPMD program": "mesh"}
#: the sweep's (width, micro-batch) points unless given
SWEEP = ((256, 32), (512, 64), (1024, 128))


def balanced_net(sizes: Sequence[int], n_stages: int) -> Any:
    """``mlp(sizes)`` with its dense layers grouped into ``n_stages`` contiguous stages of
    about equal work per example (a stage of several layers applies them in turn).

    The work of a stage is counted in multiply-adds: 3× its layers' (forward, and the
    backward's two products), plus, on every stage but the last, 3× those of a
    label-conditioned SG module at its output (δ̂, and the regression's forward and
    gradient). The split minimising the largest stage is chosen.

    Example:
        >>> net = balanced_net([784, 512, 512, 512, 10], 2)
        >>> [(s.in_shape, s.out_shape) for s in net.stages]
        [((784,), (512,)), ((512,), (10,))]
    """
    from sgjax import nets
    from sgjax.pipeline import balanced_boundaries

    n_layers = len(sizes) - 1
    if not 1 <= n_stages <= n_layers:
        raise ValueError(
            f"balanced_net: `n_stages` must be in 1..{n_layers} (the layers of {sizes}), "
            f"got {n_stages}"
        )
    work = [3 * int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:])]
    classes = int(sizes[-1])
    sg = [3 * (int(w) * int(w) + classes * int(w)) for w in sizes[1:-1]]  # at boundary i
    return nets.group(nets.mlp(sizes), balanced_boundaries(work, n_stages, sg))


def _stage_compute_per_tick(net: Any, batch: int, lr: float, ticks: int = 50) -> list[float]:
    """Seconds per tick of each stage's own work alone, in this process, no messages: its
    forward, signal, update of θ_s and (all but the last stage) the regression of its SG
    module — exactly the functions the pipeline's devices run
    (:func:`~sgjax.pipeline.stages._stage_update`, ``_sg_update``), without the packing,
    the stage dispatch or any collective. The slowest stage bounds the pipeline's tick."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax import lax

    from sgjax.pipeline.stages import Message, _sg_update, _stage_update, init_sg, sg_pipeline

    opt = optax.adam(lr)
    pipe = sg_pipeline(net, "xent", opt, opt)
    st = init_sg(pipe, jax.random.key(0), batch_size=batch)
    rng = np.random.default_rng(0)
    y = jax.nn.one_hot(rng.integers(0, net.out_dim, (ticks, batch)), net.out_dim)
    last = net.depth - 1
    out = []
    for s in range(net.depth):
        shape = net.in_shape if s == 0 else net.stages[s - 1].out_shape
        hs = jnp.asarray(rng.standard_normal((ticks, batch, *shape)), jnp.float32)

        def run(carry: Any, hs: Any, s: int = s) -> Any:
            def tick(c: Any, inp: Any) -> Any:
                theta, o, phi, so = c
                h, yy = inp
                yes = jnp.ones((), bool)
                theta, o, h_out, g_in, *_ = _stage_update(
                    pipe, s, theta, o, phi, Message(h, yy, yes)
                )
                if s < last:  # regress onto a target of the right shape (values immaterial)
                    phi, so, _, _ = _sg_update(pipe, phi, so, Message(h_out, yy, yes), h_out)
                return (theta, o, phi, so), jnp.sum(g_in)

            return lax.scan(tick, carry, (hs, y))

        sg = (st.sg_params[s], st.sg_opt_state[s]) if s < last else ((), ())
        f = jax.jit(run)
        carry = (st.params[s], st.opt_state[s], *sg)
        jax.block_until_ready(f(carry, hs))  # compile
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(f(carry, hs))
            times.append(time.perf_counter() - t0)
        out.append(float(np.median(times)) / ticks)
    return out


def _messaging_per_tick(mesh: Any, batch: int, width: int, classes: int, ticks: int) -> float:
    """Seconds per tick of the SG pipeline's messages alone: one buffer [h | y | valid]
    down, the target up (``lax.ppermute``), in a scan of ``ticks`` ticks that does
    nothing else."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from sgjax.pipeline.mesh import AXIS, _send, _shard_map

    n = int(mesh.shape[AXIS])
    down, up = [(s, s + 1) for s in range(n - 1)], [(s + 1, s) for s in range(n - 1)]

    def device(h: Any, g: Any) -> Any:
        def tick(c: Any, _: Any) -> Any:
            h, g = c
            return (_send(h, down) + 1.0, _send(g, up) + 1.0), None

        return jax.lax.scan(tick, (h, g), None, length=ticks)[0]

    f = jax.jit(_shard_map(device, mesh, (P(AXIS),) * 2, (P(AXIS),) * 2))
    from sgjax.pipeline.mesh import _put

    args = [
        _put(jnp.zeros((n * batch, k), jnp.float32), mesh, P(AXIS))
        for k in (width + classes + 1, width)
    ]
    jax.block_until_ready(f(*args))  # compile
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best / ticks


def _time_to(curve: list[dict[str, float]], target: float, charge: float) -> float | None:
    for point in curve:
        if point["test_accuracy"] >= target:
            return point["seconds"] + charge
    return None


def _problem(run: dict[str, Any], data_dir: str | None, cache: dict[str, Any]) -> tuple:
    """``(net, rule, loss, x_train, y_train, x_test, y_test)`` of a run row: the MNIST MLP
    (:func:`balanced_net`) or the transformer LM (``run["model"]``)."""
    if run.get("model", "mlp") == "transformer":
        from sgjax.apps.bench import pipeline_compare_lm

        return pipeline_compare_lm.problem(run, data_dir, cache)
    import optax

    from sgjax import rules
    from sgjax.infra import data

    if "mnist" not in cache:
        cache["mnist"] = data.load("mnist", data_dir=data_dir)
    ds = cache["mnist"]
    rule = (
        rules.synthetic_gradients(sg_optimizer=optax.adam(run.get("sg_lr", run["lr"])))
        if run["method"] in ("sg", "sg-pipeline")
        else rules.backprop()
    )
    net = balanced_net(run["sizes"], run["stages"])
    return net, rule, "xent", ds.x_train, ds.y_train, ds.x_test, ds.y_test


def _worker(spec_path: str) -> None:
    """One launched job: run ``spec["runs"]`` in order; process 0 writes the results."""
    initialize_from_env()
    import jax
    import optax

    from sgjax.infra import allocator, jsonio
    from sgjax.infra.run import Run
    from sgjax.pipeline.loop import MESH_METHODS, Evaluation, Schedule, train_pipelined
    from sgjax.pipeline.mesh import make_mesh
    from sgjax.pipeline.packing import _width

    spec = json.loads(Path(spec_path).read_text())
    cache: dict[str, Any] = {}
    results = []
    for run in spec["runs"]:
        lm = run.get("model", "mlp") == "transformer"
        net, rule, loss, x_train, y_train, x_test, y_test = _problem(
            run, spec.get("data_dir"), cache
        )
        mesh = make_mesh(jax.device_count()) if run["method"] in MESH_METHODS else None
        what = Run(net, rule, loss, optax.adam(run["lr"]), steps=run.get("steps"),
                   batch_size=run["batch_size"], seed=run.get("seed", 0))  # fmt: skip
        schedule = Schedule(run["chunk"], run["micro_batches"], mesh, run.get("sg_runner", "auto"))
        evaluation = (  # the LM trains its whole budget: no stop at a target accuracy
            Evaluation(x_test, y_test, run["eval_every"], None if lm else run.get("target"))
            if run["eval_every"]
            else None
        )
        r = train_pipelined(
            run["method"], what, x_train, y_train, seconds=run["seconds"],
            schedule=schedule, evaluation=evaluation,
        )  # fmt: skip
        r.pop("params")
        r.update(label=run["label"], processes=jax.process_count(), sizes=run.get("sizes"))
        r["seed"] = run.get("seed", 0)
        r["allocator"] = allocator.settings()  # under which malloc settings it ran
        r["cpus"] = sorted(os.sched_getaffinity(0))
        if r["examples_per_s"] and r.get("curve") is not None and run.get("target"):
            first = run["micro_batches"] if run["method"] == "gpipe" else run["chunk"]
            charge = first * run["batch_size"] / r["examples_per_s"]
            if lm:
                from sgjax.apps.bench.pipeline_compare_lm import time_to_bpc

                T = run["lm"]["context"]
                r["seconds_to_target"] = time_to_bpc(r["curve"], run["target"], T, charge)
            else:
                r["seconds_to_target"] = _time_to(r["curve"], run["target"], charge)
        if run["method"] == "sg" and run.get("stage_compute"):
            r["stage_s_per_tick"] = _stage_compute_per_tick(net, run["batch_size"], run["lr"])
        if run["method"] == "sg-pipeline":
            width = _width(net)
            r["messaging_s_per_tick"] = _messaging_per_tick(
                mesh, run["batch_size"], width, net.out_dim, 200
            )
            ticks = r["examples_per_s"] and r["examples_per_s"] / run["batch_size"]
            r["s_per_tick"] = 1 / ticks if ticks else None
        results.append(r)
    if jax.process_index() == 0:
        jsonio.write(spec["out"], {"results": results})


def sweep_point(point: Sequence[int]) -> tuple[int, int, int]:
    """(width, micro-batch) or (width, micro-batch, hidden layers) → the triple (3 hidden
    layers unless given); ValueError unless 2 or 3 positive ints (a float or a bool is
    refused, not truncated)."""
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in point)
    if len(point) not in (2, 3) or not ints or any(v < 1 for v in point):
        raise ValueError(
            "sweep: each point must be (width, micro-batch[, hidden layers]) of positive "
            f"ints, got {tuple(point)}"
        )
    w, b, *d = (int(v) for v in point)
    return w, b, d[0] if d else 3


def run_job(
    runs: list[dict[str, Any]],
    n: int,
    stem: Path,
    *,
    pin: bool = True,
    cores: Sequence[int] | None = None,
    data_dir: str | None = None,
    timeout: float = 900.0,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``runs`` (rows as :func:`compare` builds them) in order in one launched job of
    ``n`` processes; the spec and results go to ``stem.json`` / ``stem.out.json``.
    Returns the result rows (process 0's)."""
    spec, out = stem.with_suffix(".json"), stem.with_suffix(".out.json")
    spec.write_text(json.dumps({"runs": runs, "out": str(out), "data_dir": data_dir}))
    launch(
        [sys.executable, "-m", "sgjax.apps.bench.pipeline_compare", "--worker", str(spec)], n,
        timeout=timeout, pin=pin, cores=cores, echo=False, env=env,
    )  # fmt: skip
    return json.loads(out.read_text())["results"]


def compare(
    *,
    sizes: Sequence[int] = (784, 512, 512, 512, 10),
    processes: int = 2,
    batch_size: int = 64,
    micro_batches: int = 8,
    lr: float = 1e-3,
    target: float = 0.95,
    seconds: float = 30.0,
    eval_every: int = 200,
    chunk: int = 50,
    sweep: Sequence[tuple[int, ...]] | None = None,
    sweep_seconds: float = 5.0,
    data_dir: str | None = None,
    timeout: float = 900.0,
    seed: int = 0,
    model: str = "mlp",
    lm: dict[str, Any] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the contenders (:data:`CONTENDERS`) and the sweep; see the module docstring.

    ``sizes`` is the MNIST MLP of the main table, split into ``processes`` stages;
    ``seconds`` is each contender's training budget (it stops earlier at ``target``
    test accuracy, evaluated every ``eval_every`` micro-batches). ``sweep`` lists (width,
    micro-batch size) pairs or (width, micro-batch size, hidden layers) triples: the
    network is ``[784, w, …, w, 10]`` with 3 hidden layers of width w unless a triple
    says otherwise, each run trains ``sweep_seconds`` without evaluation (default
    :data:`SWEEP`); an empty ``sweep`` skips it. ``seed`` is every run's
    :class:`~sgjax.infra.run.Run` seed (the initialisation and the batch order).

    ``model="transformer"``: the contenders train the character transformer LM of
    :mod:`~sgjax.apps.bench.pipeline_compare_lm` instead (``lm``: its
    :func:`~sgjax.apps.bench.pipeline_compare_lm.lm_config`, default the ``medium``
    transformer, 8192 training and 64 validation windows); ``sizes`` is unused, ``target``
    is a validation BPC that the curve is read for (no early stop) and there is no sweep.

    Returns
    ``{"load": ..., "main": [...], "sweep": [...]}``; every row is
    :func:`~sgjax.pipeline.train_pipelined`'s result (no params) plus ``label``, ``cpus``,
    ``allocator`` (the malloc settings it ran under) and, where measured,
    ``seconds_to_target``, ``messaging_s_per_tick`` and ``s_per_tick``.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < processes:
        log(f"warning: {len(cores)} usable cores for {processes} processes; none pinned")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"compare: `seed` must be an int ≥ 0, got {seed!r}")
    from sgjax.apps.bench import pipeline_compare_lm as L

    if model not in L.MODELS:
        raise ValueError(f"compare: `model` must be one of {L.MODELS}, got {model!r}")
    extra: dict[str, Any] = {"model": model}
    if model == "transformer":
        if sweep:
            raise ValueError(f"compare: the sweep is the MLP's; got {sweep!r} for a transformer")
        sweep = ()
        lm = lm or L.lm_config(L.FULL, train_windows=8192, eval_windows=64)
        L.cuts(lm["blocks"], processes)  # refuses a count the blocks cannot be cut into
        from sgjax.recurrent import tasks

        tasks.find_tinyshakespeare(data_dir)  # before any launch
        extra["lm"] = lm
    elif sweep is None:
        sweep = SWEEP
    mlp_sizes = list(sizes) if model == "mlp" else None
    common = {"batch_size": batch_size, "micro_batches": micro_batches, "lr": lr, "chunk": chunk,
              "seed": int(seed)}  # fmt: skip
    # Every contender trains the same network: the single-process baselines too (so that
    # sequential SG has its module where the SG pipeline has it).
    main: list[dict[str, Any]] = [
        {**common, **extra, "label": label, "method": method, "sizes": mlp_sizes,
         "stages": processes,
         "seconds": seconds, "eval_every": eval_every, "target": target,
         "_n": n or processes, "_pin": pin, "sg_runner": RUNNERS.get(label, "auto")}
        for label, method, n, pin in CONTENDERS
    ]  # fmt: skip
    sweep_runs: list[dict[str, Any]] = [
        {**common, "batch_size": b, "label": f"{method}, w={w}, B={b}, hidden={d}",
         "method": method,
         "sizes": [784, *[w] * d, 10], "stages": processes, "seconds": sweep_seconds,
         "eval_every": None, "_n": 1 if method == "sg" else processes, "_pin": True,
         "stage_compute": method == "sg"}
        for w, b, d in (sweep_point(p) for p in sweep)
        for method in ("sg", "sg-pipeline")
    ]  # fmt: skip
    t0 = time.monotonic()
    load0 = os.getloadavg()
    log(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, cores {cores}")
    rows: dict[str, list[dict[str, Any]]] = {"main": [], "sweep": []}
    with tempfile.TemporaryDirectory() as tmp:
        # One launch per process layout, runs in order inside it.
        for part, runs in (("main", main), ("sweep", sweep_runs)):
            for layout in sorted({(r["_n"], r["_pin"]) for r in runs}, key=str):
                batch = [r for r in runs if (r["_n"], r["_pin"]) == layout]
                n, pin = layout
                log(f"{part}: {', '.join(r['label'] for r in batch)} ({n} process(es))")
                rows[part] += run_job(
                    batch, n, Path(tmp) / f"{part}-{n}-{pin}", pin=pin,
                    cores=cores[:1] if n == 1 and pin else None, data_dir=data_dir,
                    timeout=timeout,
                )  # fmt: skip
    load1 = os.getloadavg()
    wall = time.monotonic() - t0
    log(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {wall:.0f} s in all")
    order = {r["label"]: i for i, r in enumerate(main + sweep_runs)}
    for part in rows:
        rows[part].sort(key=lambda r: order[r["label"]])
    return {"load": {"start": load0, "end": load1, "cores": cores}, "wall_seconds": wall, **rows,
            "config": {"sizes": mlp_sizes, "processes": processes, "batch_size": batch_size,
                       "micro_batches": micro_batches, "lr": lr, "target": target,
                       "seconds": seconds, "eval_every": eval_every,
                       "sweep": [list(p) for p in sweep],
                       "seed": int(seed), **extra}}  # fmt: skip


def format_tables(r: dict[str, Any]) -> str:
    """The comparison as markdown: the main table, the sweep (if run), the load it ran
    under."""
    base = {row["label"]: row for row in r["main"]}
    one = base["backprop, 1 core"]["examples_per_s"] or float("nan")
    sg_one = base["sg, 1 core"]["examples_per_s"] or float("nan")
    cfg = r["config"]
    if cfg.get("model", "mlp") == "transformer":
        from sgjax.apps.bench.pipeline_compare_lm import bpc, table_head

        T = cfg["lm"]["context"]
        head, scale = table_head(r), T  # tokens/s: examples (windows) × context

        def reached(point: dict[str, float]) -> bool:
            return bpc(point["test_loss"], T) <= cfg["target"]

        def final(row: dict[str, Any]) -> str:
            return f"{bpc(row['test_loss'], T):.3f}"
    else:
        head, scale = _mlp_head(cfg), 1

        def reached(point: dict[str, float]) -> bool:
            return point["test_accuracy"] >= cfg["target"]

        def final(row: dict[str, Any]) -> str:
            return f"{row['test_accuracy']:.4f}"

    lines = head + _main_rows(r["main"], one, sg_one, scale, reached, final)
    if r["sweep"]:
        lines += ["", *_sweep_table(r["sweep"])]
    ld = r["load"]
    lines += ["", f"Load average {ld['start'][0]:.2f} at start, {ld['end'][0]:.2f} at end, "
              f"on cores {ld['cores']}."]  # fmt: skip
    return "\n".join(lines)


def _mlp_head(cfg: dict[str, Any]) -> list[str]:
    """The MNIST main table's title and header lines."""
    n, M = cfg["processes"], cfg["micro_batches"]
    return [
        f"MNIST, MLP {cfg['sizes']} in {n} stages, B = {cfg['batch_size']}, Adam {cfg['lr']:g}, "
        f"seed {cfg.get('seed', 0)}, "
        f"GPipe M = {M} (bubble bound {n * M / (M + n - 1):.2f}× backprop, 1 core)",
        "",
        f"| contender | processes × cores | examples/s | × backprop 1 core | × sg 1 core | "
        f"s to {cfg['target']:.0%} test acc | micro-batches then | final test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]


def _main_rows(
    rows: list[dict[str, Any]],
    one: float,
    sg_one: float,
    scale: float,
    reached: Callable[[dict[str, float]], bool],
    final: Callable[[dict[str, Any]], str],
) -> list[str]:
    """One markdown line per contender (either model): its rate × ``scale``, the speed-ups
    over the 1-core rates ``one`` and ``sg_one``, the seconds to the target, the
    micro-batches at the first curve point where ``reached(point)``, ``final(row)``."""
    lines = []
    for row in rows:
        eps = row["examples_per_s"]
        reach = row.get("seconds_to_target")
        hit = next((p for p in row.get("curve") or [] if reached(p)), None)
        lines.append(
            f"| {row['label']} | {row['processes']} × {len(row['cpus'])} | "
            f"{eps * scale:.0f} | {eps / one:.2f} | {eps / sg_one:.2f} | "
            f"{'not reached' if reach is None else f'{reach:.1f}'} | "
            f"{'' if hit is None else hit['micro_batches']} | {final(row)} |"
            if eps
            else f"| {row['label']} | | no timed call | | | | | |"
        )
    return lines


def _sweep_table(sw: list[dict[str, Any]]) -> list[str]:
    """The sweep's rows (pairs: ``sg`` on 1 core, then ``sg-pipeline``) as markdown."""
    lines = [
        "Sweep: SG pipeline on N processes vs sequential SG on 1 core, same network",
        "",
        "| width | hidden layers | B | sg 1 core, ex/s | sg-pipeline, ex/s | speed-up | "
        "s per tick | messages per tick | messages / tick | stages alone, per tick | "
        "slowest stage + messages | bound on the speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(sw[0::2], sw[1::2]):
        w = a["sizes"][1]
        ea, eb = a["examples_per_s"] or float("nan"), b["examples_per_s"] or float("nan")
        tick, msg = b.get("s_per_tick") or float("nan"), b["messaging_s_per_tick"]
        stages = a.get("stage_s_per_tick") or []
        slow = max(stages, default=float("nan"))
        # one micro-batch through sequential SG vs the slowest stage plus the messages
        bound = a["batch_size"] / ea / (slow + msg)
        lines.append(
            f"| {w} | {len(a['sizes']) - 2} | {a['batch_size']} | {ea:.0f} | {eb:.0f} | "
            f"{eb / ea:.2f} | "
            f"{tick * 1e3:.2f} ms | {msg * 1e3:.3f} ms | {msg / tick:.1%} | "
            f"{' + '.join(f'{t * 1e3:.2f}' for t in stages)} ms | "
            f"{(slow + msg) * 1e3:.2f} ms | {bound:.2f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="worker of sgjax.apps.bench.pipeline_compare (internal)"
    )
    p.add_argument("--worker", required=True, help="the run spec (JSON)")
    _worker(p.parse_args(argv).worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
