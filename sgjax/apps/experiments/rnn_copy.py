"""Recurrent DNI on Copy at a length where the window boundary matters (issue 24).

The DNI paper's Copy comparison, sized so that full BPTT reaches N ≫ T: with N ≤ T the
whole sequence fits in one window and DNI-T and BPTT-T run the identical computation,
so only lengths well past T can tell them apart. Settings (:data:`SETTINGS`): LSTM 256,
4-bit vectors, batches of 32, Adam 3e-3 (the model) and 1e-3 (the SG), no gradient clip,
γ = 1 (a finite sequence: its last window injects nothing), the curriculum of
:class:`sgjax.recurrent.tasks.Curriculum` (0.15 bits per output step over the last 10
batches), 15,000 batches per run. Full BPTT makes one update per sequence; BPTT-T and
DNI-T one per window of T steps.

The grid (:func:`jobs`): full BPTT, DNI-T for T ∈ {2, 4}, BPTT-T for T ∈ {2, 4, 8}, seeds
0–2, seed by seed (a partial grid holds whole comparisons). Each finished run is appended
to ``<out>/runs.jsonl`` with its settings, the longest N solved, the batch (and seconds)
at which each N was solved, and its CPU seconds; a restarted study skips finished runs.

Repeat Copy (``--task repeat_copy``; :data:`GRIDS`, :data:`TASK_SEEDS`): the same settings,
the curriculum raising N and R alternately, the score the output length N·R; full BPTT,
DNI-T for T ∈ {4, 8}, BPTT-T for T ∈ {4, 8, 16}, seeds 1–3, 10,000 batches, claims
``dni-rnn/rcopy10k-*``. One task per study directory.

The report (:func:`report`) judges the registered claims ``dni-rnn/copy-*``
(:mod:`sgjax.apps.experiments.registry`, registered before these runs; their regime is
full BPTT's mean solved N ≥ 16): DNI-T above BPTT-T′ for some T′ > T (the paper's
"extends the time horizon"), and DNI-T above BPTT-T.

Usage::

    taskset -c 1 python -m sgjax.apps.experiments.rnn_copy run --out DIR
    python -m sgjax.apps.experiments.rnn_copy report --out DIR --to docs/results/dni-rnn-copy
    taskset -c 1 python -m sgjax.apps.experiments.rnn_copy run --out DIR2 --task repeat_copy \
        --batches 10000
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import rnn
from sgjax.apps.experiments import verdicts as V
from sgjax.apps.experiments.rnn_lm_tables import difference_resolution, first_start, stats

#: The settings every run shares (``cfg["copy"]`` of :func:`sgjax.apps.experiments.rnn.train_copy`).
SETTINGS: dict[str, Any] = dict(
    hidden=256,
    batch=32,
    bits=4,
    batches=15_000,
    patience=10,
    cos_every=5_000,
    lr=3e-3,
    sg_lr=1e-3,
    decay=1.0,
)
CLIP, AUX_WEIGHT, THRESHOLD = 0.0, 0.1, 0.15  # clip 0: none
SEEDS = (0, 1, 2)
#: method -> the truncation lengths T of the grid (full BPTT: one entry, T = 0)
GRID: dict[str, tuple[int, ...]] = {"full": (0,), "dni": (2, 4), "bptt": (2, 4, 8)}
#: The tasks: Copy (score N) and Repeat Copy (score N·R, the output length; its
#: curriculum raises N and R alternately). Repeat Copy's grid and seeds: a pilot of seed 0
#: at 6,000 batches (full BPTT solved 25, BPTT-8 9, seen before its claims were registered)
#: sized the grid, so its registered runs take seeds 1–3.
TASKS = ("copy", "repeat_copy")
GRIDS: dict[str, dict[str, tuple[int, ...]]] = {
    "copy": GRID,
    "repeat_copy": {"full": (0,), "dni": (4, 8), "bptt": (4, 8, 16)},
}
TASK_SEEDS: dict[str, tuple[int, ...]] = {"copy": SEEDS, "repeat_copy": (1, 2, 3)}
TASK_NAMES = {"copy": "Copy", "repeat_copy": "Repeat Copy"}
SCORE_NAMES = {"copy": "N", "repeat_copy": "N·R"}
#: full BPTT's mean solved N (over the seeds) from which the comparison decides anything
REGIME_N = 16
LABELS = {"full": "full BPTT", "bptt": "BPTT-T", "dni": "DNI-T"}
#: (task, batch budget) -> the registered ids of its (horizon, DNI-vs-BPTT) claims. A
#: budget is judged only under claims registered for it before its runs: the CLI refuses
#: any other.
CLAIM_IDS: dict[tuple[str, int], tuple[str, str]] = {
    ("copy", 15_000): ("dni-rnn/copy-horizon", "dni-rnn/copy-dni-vs-bptt"),
    ("copy", 20_000): ("dni-rnn/copy20k-horizon", "dni-rnn/copy20k-dni-vs-bptt"),
    ("repeat_copy", 10_000): ("dni-rnn/rcopy10k-horizon", "dni-rnn/rcopy10k-dni-vs-bptt"),
}


def claim_ids(batches: int, task: str = "copy") -> tuple[str, str]:
    """The registered claim ids of the ``task`` at the ``batches`` budget (a clear error
    for any other).

    Example:
        >>> claim_ids(20_000)[0], claim_ids(10_000, "repeat_copy")[0]
        ('dni-rnn/copy20k-horizon', 'dni-rnn/rcopy10k-horizon')
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
    if (task, batches) not in CLAIM_IDS:
        known = ", ".join(f"{b:,}" for t, b in CLAIM_IDS if t == task)
        raise ValueError(
            f"`batches`: no {TASK_NAMES[task]} claims are registered for {batches:,} batches "
            f"(registered: {known}); register them in sgjax.apps.experiments.registry (and "
            "CLAIM_IDS) before the runs that judge them"
        )
    return CLAIM_IDS[(task, batches)]


def cfg(settings: dict | None = None) -> dict:
    """The ``cfg`` :func:`~sgjax.apps.experiments.rnn.train_copy` takes."""
    s = dict(SETTINGS if settings is None else settings)
    return {"copy": s, "clip": CLIP, "aux_weight": AUX_WEIGHT, "threshold": THRESHOLD}


def key(method: str, T: int, seed: int, task: str = "copy") -> str:
    return f"{task}/{method}/T{T}/s{seed}"


def jobs(
    grid: dict[str, tuple[int, ...]] | None = None, seeds=SEEDS, task: str = "copy"
) -> list[tuple]:
    """``(key, method, T, seed)`` of every run, seed by seed; within a seed full BPTT (the
    regime), then DNI-T next to the BPTT-T′ it is judged against, BPTT at the DNI's own T last."""
    grid = GRIDS[task] if grid is None else grid
    order = [(m, T) for m in ("full",) for T in grid.get(m, ())]
    dni_Ts = set(grid.get("dni", ()))
    for T in sorted(dni_Ts):
        order.append(("dni", T))
        order += [("bptt", t) for t in grid.get("bptt", ()) if t > T]
    order += [("bptt", t) for t in grid.get("bptt", ())]
    order += [(m, T) for m, Ts in grid.items() for T in Ts]
    order = list(dict.fromkeys(order))
    return [(key(m, T, s, task), m, T, s) for s in seeds for m, T in order]


load = C.load_runs  #: the finished runs of ``out/runs.jsonl`` by key


def run(
    out: Path, *, settings: dict | None = None, grid=None, seeds=None, task: str = "copy"
) -> list[str]:
    """Run every unfinished run of the ``task``'s grid (resuming), appending each to
    runs.jsonl; returns the keys it ran. A run recorded under other settings is run again."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = cfg(settings)
    ran = []
    seeds = TASK_SEEDS[task] if seeds is None else seeds
    for k, method, T, seed in jobs(grid, seeds, task):
        done = load(out)
        if k in done and done[k]["settings"] == c:
            continue
        c0, t0 = time.process_time(), time.perf_counter()
        # a run whose loss turns non-finite stops there with what it solved (no clip on
        # the model's gradient: a divergence is a result, not a crash of the grid)
        res = rnn.train_copy(task, method, T, seed, c, stop_on_nonfinite=True)
        rec = {
            "key": k,
            "task": task,
            "method": method,
            "T": T,
            "seed": seed,
            "settings": c,
            "cpu_seconds": time.process_time() - c0,
            "wall_seconds": time.perf_counter() - t0,
            "run_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{kk: v for kk, v in res.items() if kk != "seconds"},
        }
        with (out / "runs.jsonl").open("a") as f:
            f.write(C.json_line(rec) + "\n")
        ran.append(k)
        print(
            f"{k}: solved {SCORE_NAMES[task]}={res['solved']} ({rec['cpu_seconds']:.0f} s CPU)",
            flush=True,
        )
    return ran


def _values(runs: dict, method: str, T: int, seeds=SEEDS, task: str = "copy") -> list[float]:
    ks = [key(method, T, s, task) for s in seeds]
    return [float(runs[k]["solved"]) for k in ks if k in runs]


def _stats(vals: list[float]) -> str:
    return stats(vals, "g", ".2f")


def claims(
    solved: dict[str, dict[int, list[float]]],
    *,
    n_seeds: int = len(SEEDS),
    regime_n: float = REGIME_N,
    data_date: str | None = None,
    batches: int = SETTINGS["batches"],
    task: str = "copy",
) -> dict[str, dict]:
    """The verdicts on ``dni-rnn/copy-*`` from the solved N per method and T (per seed).

    ``batches`` (the runs' budget) and ``task`` pick the registered claim ids
    (:func:`claim_ids`); the solved values are N (Copy) or N·R (Repeat Copy).
    ``solved["full"][0]`` decides the regime (mean ≥ ``regime_n`` over ``n_seeds`` seeds);
    a comparison with fewer than ``n_seeds`` values on either side is untested. The
    horizon claim is judged, for each DNI-T, against every BPTT-T′ with T′ > T; the
    T′ with the best margin beyond its resolution is the verdict ("some T′ > T").

    Example:
        >>> s = {"full": {0: [16, 17, 18]}, "dni": {2: [6, 7, 7]}}
        >>> s["bptt"] = {2: [2, 2, 2], 4: [4, 5, 4]}
        >>> c = claims(s, data_date="2027-01-01T00:00:00+00:00")
        >>> [(r["id"], r["verdict"]) for r in c.values()]
        [('dni-rnn/copy-horizon', 'held'), ('dni-rnn/copy-dni-vs-bptt', 'held')]
    """
    horizon_id, vs_id = claim_ids(batches, task)
    score = SCORE_NAMES[task]
    full = solved.get("full", {}).get(0, [])
    regime = len(full) == n_seeds and float(np.mean(full)) >= regime_n
    note = (
        ""
        if regime
        else f"untested at this budget: full BPTT solved {score} "
        f"{_stats(full)}, not ≥ {regime_n} on {n_seeds} seeds"
    )
    out: dict[str, dict] = {}

    def record(a, b, la, lb, *, cid):
        tested = len(a) == n_seeds and len(b) == n_seeds
        margin = float(np.mean(a) - np.mean(b)) if tested else float("nan")
        return V.claim(
            f"{la} {_stats(a)} vs {lb} {_stats(b)}",
            f"{la}'s solved {score} > {lb}'s",
            margin,
            difference_resolution(a, b) if tested else 0.0,
            cid=cid,
            regime=regime,
            regime_note=note,
            tested=tested,
            untested_note="" if tested else "runs missing",
        )

    bptt = solved.get("bptt", {})
    for T, dni in sorted(solved.get("dni", {}).items()):
        later = [t for t in sorted(bptt) if t > T]
        if later:
            recs = [record(dni, bptt[t], f"DNI-{T}", f"BPTT-{t}", cid=horizon_id) for t in later]
            # "some T' > T": the record whose margin clears its resolution by the most
            best = max(
                recs, key=lambda r: r["margin"] - r["resolution"] if r["tested"] else -np.inf
            )
            best = dict(best, others=[r["value"] for r in recs if r is not best])
            out[f"DNI-{T} above BPTT-T′ for some T′ > {T} (horizon)"] = best
        if T in bptt:
            out[f"DNI-{T} above BPTT-{T}"] = record(
                dni, bptt[T], f"DNI-{T}", f"BPTT-{T}", cid=vs_id
            )
    return V.preregistered(out, data_date)


def summary(
    runs: dict, grid=None, seeds=SEEDS, task: str = "copy"
) -> dict[str, dict[int, list[float]]]:
    grid = GRIDS[task] if grid is None else grid
    return {m: {T: _values(runs, m, T, seeds, task) for T in Ts} for m, Ts in grid.items()}


def _first_batch(rec: dict, n: int) -> int | None:
    return next((b for N, b, _ in rec.get("levels", []) if N >= n), None)


def _figure(to: Path, runs: dict, grid: dict, seeds, task: str = "copy") -> str:
    """Solved N (N·R) against batches, one line per run (the learning curves)."""
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for j, (m, T) in enumerate((m, T) for m, Ts in grid.items() for T in Ts):
        for i, s in enumerate(seeds):
            r = runs.get(key(m, T, s, task))
            if r is None:
                continue
            lv = [(0, 0)] + [(b, n) for n, b, _ in r.get("levels", [])]
            lv.append((r["settings"]["copy"]["batches"], lv[-1][1]))
            b, n = zip(*lv)
            name = LABELS[m].replace("-T", f"-{T}") if m != "full" else LABELS[m]
            ax.step(b, n, where="post", color=f"C{j}", alpha=0.8, label=name if i == 0 else None)
    ax.set_xlabel("batches")
    ax.set_ylabel(f"longest {SCORE_NAMES[task]} solved")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    return C.save_figure(fig, to / "solved_n.png")


def report(out: Path, to: Path | None = None, grid=None, seeds=None) -> dict:
    """Write README.md, results.json (and a copy of runs.jsonl) into ``to`` (default ``out``)
    from the runs finished so far (one task per study: the runs' own); a missing run is
    listed, never filled in."""
    out = Path(out)
    to = out if to is None else Path(to)
    to.mkdir(parents=True, exist_ok=True)
    runs = load(out)
    tasks_seen = {r.get("task", "copy") for r in runs.values()}
    if len(tasks_seen) > 1:
        raise ValueError(f"{out}: runs of several tasks ({sorted(tasks_seen)}); one per study")
    task = tasks_seen.pop() if tasks_seen else "copy"
    grid = GRIDS[task] if grid is None else grid
    seeds = TASK_SEEDS[task] if seeds is None else seeds
    name, score = TASK_NAMES[task], SCORE_NAMES[task]
    solved = summary(runs, grid, seeds, task)
    s = SETTINGS if not runs else next(iter(runs.values()))["settings"]["copy"]
    verdicts = claims(
        solved,
        n_seeds=len(seeds),
        data_date=first_start(runs.values()),
        batches=s["batches"],
        task=task,
    )
    rows, missing = [], []
    for m, Ts in grid.items():
        for T in Ts:
            recs = [runs.get(key(m, T, s, task)) for s in seeds]
            done = [r for r in recs if r is not None]
            missing += [key(m, T, s, task) for s, r in zip(seeds, recs) if r is None]
            last = [_first_batch(r, r["solved"]) if r["solved"] else None for r in done]
            rows.append(
                [
                    LABELS[m].replace("-T", f"-{T}") if m != "full" else LABELS[m],
                    _stats(solved[m][T]),
                    ", ".join(str(r["final_level"]) for r in done) or "—",
                    ", ".join("—" if b is None else f"{b:,}" for b in last) or "—",
                    ", ".join(f"{r['cpu_seconds']:.0f}" for r in done) or "—",
                    f"{len(done)} / {len(seeds)}",
                ]
            )
    curves = {
        k: [list(map(float, lv[:2])) for lv in r.get("levels", [])] for k, r in sorted(runs.items())
    }
    text = [
        f"# Recurrent DNI on {name}: does DNI-T extend BPTT-T's horizon?",
        "",
        "`taskset -c 1 python -m sgjax.apps.experiments.rnn_copy run --out DIR "
        f"{'' if task == 'copy' else '--task repeat_copy '}--batches "
        f"{s['batches']}` (`--seeds` splits a study between cores), then "
        "`python -m sgjax.apps.experiments.rnn_copy report --out DIR --to DEST` (one core per "
        "worker; a killed run resumes at the next unfinished run).",
        "",
        f"{name} with {s['bits']}-bit vectors, LSTM {s['hidden']}, batches of {s['batch']}, "
        f"Adam {s['lr']:g} (model) / {s['sg_lr']:g} (linear SG, zero-initialised), "
        f"{'no clip' if not CLIP else f'clip {CLIP}'}, γ = {s['decay']:g}, "
        f"{s['batches']:,} batches per run, seeds {', '.join(map(str, seeds))}; the curriculum "
        f"raises {'N' if task == 'copy' else 'N and R alternately'} when the mean error of "
        f"the last {s['patience']} batches is below {THRESHOLD} bits per output step. Full BPTT "
        "makes one update per sequence, BPTT-T and DNI-T one per window of T steps. Score: "
        f"the longest {'N' if task == 'copy' else 'output length N·R'} solved within the "
        "budget.",
        "",
        f"## Solved {score} (mean ± sd over seeds (per seed))",
        "",
        V.table(
            [
                "method",
                f"solved {score}",
                "level at the end",
                f"batch at which that {score} was solved",
                "CPU s per run",
                "runs",
            ],
            rows,
        ),
        "",
        "CPU seconds: `time.process_time()` of each run on one core.",
        "",
        "## Verdicts (claims registered before these runs)",
        "",
        f"Regime: full BPTT's mean solved {score} ≥ {REGIME_N} over {len(seeds)} seeds; outside "
        "it a failure is untested and a pass only consistent. "
        "A margin within t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b) is inconclusive.",
        "",
        V.claims_table(verdicts),
        "",
        "Missing runs: " + (", ".join(missing) if missing else "none") + ".",
        "",
        "Runs stopped by a non-finite loss: "
        + (
            ", ".join(f"{k} ({r['diverged']})" for k, r in runs.items() if r.get("diverged"))
            or "none"
        )
        + ".",
        "",
        f"Learning curves (the batch at which each {score} was solved; `levels` in "
        "`results.json`):",
        "",
        f"![solved {score}]({_figure(to, runs, grid, seeds, task)})",
    ]
    (to / "README.md").write_text("\n".join(text) + "\n")
    results = {
        "task": task,
        "settings": cfg(s),
        "solved": {f"{m}/T{T}": v for m, d in solved.items() for T, v in d.items()},
        "claims": verdicts,
        "levels": curves,
        "missing": missing,
        "runs": {k: {kk: vv for kk, vv in r.items() if kk != "curve"} for k, r in runs.items()},
    }
    C.write_json(to / "results.json", results)
    if to != out and (out / "runs.jsonl").exists():
        shutil.copyfile(out / "runs.jsonl", to / "runs.jsonl")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sgjax.apps.experiments.rnn_copy")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (resume) the grid")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--task", choices=TASKS, default="copy")
    r.add_argument(
        "--batches",
        type=int,
        default=SETTINGS["batches"],
        help=f"batches per run (one with registered claims: {sorted(CLAIM_IDS)})",
    )
    r.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds (default: Copy 0,1,2; Repeat Copy 1,2,3)",
    )
    rep = sub.add_parser("report", help="write README.md and results.json from runs.jsonl")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--to", default=None, type=Path, help="write the report here (default OUT)")
    a = p.parse_args(argv)
    if a.cmd == "run":
        try:
            claim_ids(a.batches, a.task)  # refused before any long work
            seeds = None if a.seeds is None else tuple(int(x) for x in a.seeds.split(","))
            known = sorted({r.get("task", "copy") for r in load(a.out).values()})
            if known and known != [a.task]:
                raise ValueError(f"--out {a.out} holds runs of {known}: one task per study")
        except ValueError as e:
            p.error(str(e))
        run(a.out, settings={**SETTINGS, "batches": a.batches}, seeds=seeds, task=a.task)
    else:
        report(a.out, a.to)


if __name__ == "__main__":
    main()
