"""The report of :mod:`sgjax.apps.experiments.transformer_lm`: the method × seed table
(validation BPC at equal steps and at backprop's wall time, tokens per second, CPU per
run), loss curves by steps and by wall time, the SG-vs-true-gradient cosines per boundary,
and the verdicts on the registered ``dni-transformer/*`` claims.

Everything is computed from ``runs.jsonl``; a run that has not finished is missing (a
claim that needs it is *untested*), never filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import verdicts as V
from sgjax.apps.experiments.rnn_lm_tables import difference_resolution, stats
from sgjax.apps.experiments.transformer_lm_settings import (
    LABELS,
    LN2,
    METHODS,
    SCALES,
    SEEDS,
    json_cfg,
)

#: The regime of every ``dni-transformer/*`` claim: backprop's mean validation BPC at the
#: equal-steps point (registered with the claims, before the runs).
REGIME_BPC = 2.90
#: "within" tolerance of the near-backprop claims (BPC; ours)
TOLERANCE = 0.10


def values(runs: dict, method: str, field: str = "at_steps", seeds=SEEDS) -> list[float]:
    """Validation BPC of ``method``'s finished runs: ``at_steps`` (equal steps) or
    ``at_wall`` (at backprop's training wall time of the same seed)."""
    out = []
    for s in seeds:
        r = runs.get(f"{method}/s{s}")
        if r is None:
            continue
        if field == "at_steps":
            out.append(r["at_steps"]["val_bpc"])
        elif field == "at_wall":
            v = at_wall(r, runs.get(f"backprop/s{s}"))
            if v is not None:
                out.append(v)
        else:
            raise ValueError(f"values: `field` must be 'at_steps' or 'at_wall', got {field!r}")
    return out


def at_wall(run: dict, bp: dict | None) -> float | None:
    """The run's validation BPC at backprop's training wall time (the same seed); None
    when unknown (no backprop run, or a run that stopped before that time).

    A run given the budget went on past its ``steps`` until the first check (every 10
    steps) at or past it: its last evaluation. A run slower than backprop: its last
    evaluation at or before the budget. Backprop itself: its equal-steps value.

    Example:
        >>> r = {"method": "dni", "settings": {"steps": 20}, "curve": [
        ...      {"step": 0, "wall": 0, "val_bpc": 6.0}, {"step": 10, "wall": 5, "val_bpc": 3.0},
        ...      {"step": 20, "wall": 9, "val_bpc": 2.0}]}
        >>> r["final"] = r["curve"][-1]
        >>> at_wall(r, {"steps_wall": 8.0}), at_wall(r, {"steps_wall": 10.0}), at_wall(r, None)
        (3.0, None, None)
        >>> r["curve"].append({"step": 30, "wall": 12, "val_bpc": 1.5}); r["final"] = r["curve"][-1]
        >>> at_wall(r, {"steps_wall": 11.5})
        1.5
    """
    if bp is None:
        return None
    if run.get("method") == "backprop":
        return float(run["at_steps"]["val_bpc"])
    budget = bp["steps_wall"]
    curve = run["curve"]
    if run["final"]["step"] > run["settings"]["steps"]:
        return float(run["final"]["val_bpc"])  # went on to the budget
    if curve[-1]["wall"] < budget:
        return None  # stopped before backprop's time: unknown there
    pts = [c for c in curve if c["wall"] <= budget]
    return float(pts[-1]["val_bpc"]) if pts else None


def at_cpu(run: dict, bp: dict | None) -> float | None:
    """The run's validation BPC at backprop's training CPU time (the same seed): its last
    evaluation at or before it; None when the run stopped before it (a check of the
    wall-time comparison that other processes on the core do not distort)."""
    if bp is None:
        return None
    budget = bp["at_steps"]["cpu"]
    curve = run["curve"]
    if curve[-1]["cpu"] < budget and run.get("method") != "backprop":
        return None
    pts = [c for c in curve if c["cpu"] <= budget + 1e-9]
    return float(pts[-1]["val_bpc"]) if pts else None


def claims(runs: dict, seeds=SEEDS) -> dict[str, dict]:
    """The verdicts on the ``dni-transformer/*`` claims from the finished runs."""
    bp = values(runs, "backprop", seeds=seeds)
    full = len(seeds)
    registered = json_cfg(SCALES["medium"])
    same = all(r["settings"] == registered for r in runs.values())
    regime = same and len(bp) == full and float(np.mean(bp)) <= REGIME_BPC
    note = (
        ""
        if regime
        else "outside the regime: "
        + ("" if same else "not the registered medium settings; ")
        + f"backprop {np.mean(bp) if bp else float('nan'):.3f} BPC (needs ≤ {REGIME_BPC})"
    )
    out: dict[str, dict] = {}

    def add(name, a_vals, b_vals, value, target, *, cid, shift=0.0):
        """Passes when mean(a) ≤ mean(b) + shift (margin in BPC)."""
        tested = len(a_vals) == full and len(b_vals) == full
        margin = float(np.mean(b_vals) + shift - np.mean(a_vals)) if tested else float("nan")
        res = difference_resolution(a_vals, b_vals) if tested else 0.0
        out[name] = V.claim(value, target, margin, res, cid=cid, regime=regime,
                            regime_note=note, tested=tested,
                            untested_note="" if tested else "runs missing")  # fmt: skip

    dni, cdni, prop = (values(runs, m, seeds=seeds) for m in ("dni", "cdni", "sg-prop"))
    tol = TOLERANCE
    add("cDNI within 0.10 BPC of backprop (equal steps)", cdni, bp,
        f"cDNI {stats(cdni)} vs backprop {stats(bp)}", f"cDNI ≤ backprop + {tol}",
        cid="dni-transformer/cdni-near-bp", shift=tol)  # fmt: skip
    add("DNI within 0.10 BPC of backprop (equal steps)", dni, bp,
        f"DNI {stats(dni)} vs backprop {stats(bp)}", f"DNI ≤ backprop + {tol}",
        cid="dni-transformer/dni-near-bp", shift=tol)  # fmt: skip
    add("cDNI at or below DNI (equal steps)", cdni, dni,
        f"cDNI {stats(cdni)} vs DNI {stats(dni)}", "cDNI ≤ DNI",
        cid="dni-transformer/cdni-vs-dni")  # fmt: skip
    add("cDNI + prop within 0.10 BPC of cDNI (equal steps)", prop, cdni,
        f"cDNI + prop {stats(prop)} vs cDNI {stats(cdni)}", f"cDNI + prop ≤ cDNI + {tol}",
        cid="dni-transformer/prop-near-cdni", shift=tol)  # fmt: skip
    cw = values(runs, "cdni", "at_wall", seeds=seeds)
    add("cDNI at or below backprop at backprop's wall time", cw, bp,
        f"cDNI {stats(cw)} vs backprop {stats(bp)}", "cDNI ≤ backprop",
        cid="dni-transformer/cdni-vs-bp-wall")  # fmt: skip
    last = [_last_cosines(runs.get(f"cdni/s{s}")) for s in seeds]
    have = [c for c in last if c is not None]
    tested = len(have) == full
    worst = np.min(np.mean(have, axis=0)) if tested else float("nan")
    res = (
        max(V.seed_resolution(np.asarray(have)[:, j]) for j in range(len(have[0])))
        if tested
        else 0.0
    )
    out["cDNI's SG points along the true gradient at every boundary"] = V.claim(
        "mean over seeds per boundary: "
        + (", ".join(f"{v:.3f}" for v in np.mean(have, axis=0)) if tested else "—"),
        "cosine > 0 at every boundary (last checkpoint)",
        float(worst),
        float(res),
        cid="dni-transformer/cdni-cosine-positive",
        regime=regime,
        regime_note=note,
        tested=tested,
        untested_note="" if tested else "runs missing",
    )
    starts = [r["run_date"] for r in runs.values()]
    return V.preregistered(out, min(starts, default=None))


def _last_cosines(run: dict | None) -> list[float] | None:
    if run is None or not run["cosines"]:
        return None
    return run["cosines"][-1]["cosine"]


def _figure(out: Path, runs: dict, seeds, x: str, name: str) -> str:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for j, m in enumerate(METHODS):
        for i, s in enumerate(seeds):
            r = runs.get(f"{m}/s{s}")
            if r is None:
                continue
            c = r["curve"]
            ax.plot([p[x] for p in c], [p["val_bpc"] for p in c], color=f"C{j}", alpha=0.8,
                    label=LABELS[m] if i == 0 else None)  # fmt: skip
    ax.set_xlabel("training steps" if x == "step" else "training wall time (s, one core)")
    ax.set_ylabel("validation BPC")
    ax.set_ylim(top=min(ax.get_ylim()[1], 6.5))
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    return C.save_figure(fig, out / name)


def tables(runs: dict, seeds=SEEDS) -> list[str]:
    """The method × seeds table and the cosine table (markdown lines)."""
    rows = []
    for m in METHODS:
        recs = [runs[f"{m}/s{s}"] for s in seeds if f"{m}/s{s}" in runs]
        st = values(runs, m, seeds=seeds)
        nats = [r["at_steps"]["val_nats"] for r in recs]
        wall = values(runs, m, "at_wall", seeds=seeds)
        cpu = [at_cpu(r, runs.get(f"backprop/s{r['seed']}")) for r in recs]
        steps_at_wall = [r["final"]["step"] for r in recs]
        rows.append([
            LABELS[m], stats(st), stats(nats), stats(wall),
            stats([v for v in cpu if v is not None]) + (" (of fewer seeds)" if None in cpu else ""),
            ", ".join(str(s) for s in steps_at_wall) or "—",
            stats([r["tokens_per_s"] for r in recs], ".0f", ".0f"),
            stats([r["cpu_seconds"] for r in recs], ".0f", ".0f"),
        ])  # fmt: skip
    head = ["method", "val BPC, equal steps", "val nats, equal steps",
            "val BPC at backprop's wall time", "at backprop's CPU time", "steps by then",
            "tokens/s (training)",
            "CPU s per run"]  # fmt: skip
    lines = [V.table(head, rows), ""]
    cos_rows = []
    for m in METHODS[1:]:
        recs = [runs[f"{m}/s{s}"] for s in seeds if f"{m}/s{s}" in runs]
        if not recs or not recs[0]["cosines"]:
            continue
        for k, ck in enumerate(recs[0]["cosines"]):
            per = np.array([r["cosines"][k]["cosine"] for r in recs if len(r["cosines"]) > k])
            mean = per.mean(axis=0)
            cells = [
                f"{mu:.3f}" + (f" ± {sd:.3f}" if len(per) > 1 else "")
                for mu, sd in zip(mean, per.std(axis=0, ddof=1) if len(per) > 1 else mean)
            ]
            cos_rows.append([LABELS[m], ck["step"], *cells])
    if cos_rows:
        n_b = len(cos_rows[0]) - 2
        names = ["embedding"] + [f"block {i}" for i in range(1, n_b)]
        lines += [
            "Cosine between the SG each boundary received and the true ∂ℓ/∂h there "
            "(flattened over a held batch of validation windows; mean ± sd over seeds); "
            "boundary = the output of:",
            "",
            V.table(["method", "step", *names], cos_rows),
            "",
        ]
    return lines


def write(
    out: Path,
    cfg: dict[str, Any],
    seeds=SEEDS,
    title: str | None = None,
    levels: tuple[float, float] | None = None,
) -> dict:
    """Write ``report.md``, ``results.json``, ``bpc_by_steps.png`` and ``bpc_by_wall.png``;
    ``levels``: the unigram and bigram models' validation BPC on the same split."""
    out = Path(out)
    runs = C.load_runs(out)
    cl = claims(runs, seeds)
    figs = [_figure(out, runs, seeds, "step", "bpc_by_steps.png"),
            _figure(out, runs, seeds, "wall", "bpc_by_wall.png")]  # fmt: skip
    lines = [
        f"# {title or 'Decoupled transformer LM on one core vs backprop'}",
        "",
        f"Settings: {cfg}. Seeds {list(seeds)}; {len(runs)} runs finished. Validation: "
        f"{cfg['eval_windows']} fixed windows of {cfg['context']} characters (nats/char, "
        f"BPC = nats / ln 2 = nats × {1 / LN2:.4f}).",
        "",
        *(
            [
                f"Levels on the same split: unigram {levels[0]:.3f} BPC, add-one bigram "
                f"{levels[1]:.3f} BPC (fitted on the training 90 %).",
                "",
            ]
            if levels
            else []
        ),
        "## Runs",
        "",
        *tables(runs, seeds),
        *[f"![{f}]({f})" for f in figs],
        "",
        "## Verdicts (claims registered before these runs)",
        "",
        V.claims_table(cl),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines).rstrip() + "\n")
    res = {"settings": cfg, "claims": cl, "runs": sorted(runs), "levels": levels,
           "run_date": min((r["run_date"] for r in runs.values()), default=None)}  # fmt: skip
    C.write_json(out / "results.json", res)
    return res
