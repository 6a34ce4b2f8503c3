"""The per-seed statistics and tables of the recurrent studies' reports: the seed
resolution of a difference of means, the ``mean ± sd (per seed)`` cells, the stability
tables (``stability``, ``tune256``, ``stability01``) with the verdicts of the
``stability01`` part, and the early-stopped score at a budget. Shared by
:mod:`~sgjax.apps.experiments.rnn_lm_report`, :mod:`~sgjax.apps.experiments.rnn_copy` and
:mod:`~sgjax.apps.experiments.transformer_lm_report`; ``study`` is the module
:mod:`~sgjax.apps.experiments.rnn_lm`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from sgjax.apps.experiments import verdicts as V

LABELS = {"bptt": "BPTT-T", "dni": "DNI-T", "dni_aux": "DNI+Aux-T", "cdni": "cDNI-T"}


def _t95(df: int) -> float:
    return V._T95.get(df) or next((v for k, v in sorted(V._T95.items()) if k >= df), 1.645)


def difference_resolution(a: list[float], b: list[float]) -> float:
    """t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b): the difference of two seed means that their
    spreads can tell from zero (0 when either has one seed).

    Example:
        >>> round(difference_resolution([2.0, 2.1, 2.2], [2.5, 2.5, 2.5]), 4)
        0.1686
    """
    if len(a) < 2 or len(b) < 2:
        return 0.0
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    return _t95(min(len(a), len(b)) - 1) * se


def stats(vals: list[float], fmt: str = ".3f", spread: str = ".3f") -> str:
    """``mean ± sd (v1, v2, …)`` over seeds (one value alone; "—" for none)."""
    if not vals:
        return "—"
    per = ", ".join(format(v, fmt) for v in vals)
    if len(vals) == 1:
        return per
    return f"{format(np.mean(vals), spread)} ± {format(np.std(vals, ddof=1), spread)} ({per})"


def stability(
    runs: dict[str, dict], bigram: float, study: Any, part: str = "stability"
) -> tuple[list[list[Any]], dict]:
    """Rows of the stability table (``part="tune256"``: the LSTM 256 tuning table, scored
    by the early-stopped BPC, the final BPC deciding collapse) and, per variant, its
    summary."""
    if part == "tune256":
        variants = {n: ("dni", o) for n, o in study.TUNE256_VARIANTS.items()}
        seeds, field = study.TUNE256_SEEDS, "bpc_best"
    elif part == "stability01":
        variants = {study.STABILITY01_NAME: ("dni", study.STABILITY01)}
        seeds, field = study.STABILITY_SEEDS, "bpc"
    else:
        variants, seeds, field = study.VARIANTS, study.STABILITY_SEEDS, "bpc"
    rows, summary = [], {}
    for name, (method, opts) in variants.items():
        recs = [runs.get(f"{part}/{name}/s{s}") for s in seeds]
        done = [r for r in recs if r is not None]
        score = [r[field] for r in done]
        bpc = [r["bpc"] for r in done]
        collapsed = [b > bigram for b in bpc]
        ok = [b for b, c in zip(bpc, collapsed) if not c]
        cpu = [r["cpu_seconds"] for r in done]
        summary[name] = {
            "method": method,
            "options": opts,
            "bpc": bpc,
            "collapses": int(sum(collapsed)),
            "runs": len(done),
            "mean": float(np.mean(bpc)) if bpc else None,
            "mean_not_collapsed": float(np.mean(ok)) if ok else None,
            "worst": float(max(bpc)) if bpc else None,
            "score": score,
        }
        rows.append(
            [
                name,
                f"{sum(collapsed)} / {len(done)}",
                ", ".join(f"{b:.3f}" for b in score) or "—",
                f"{np.mean(score):.3f}" if score else "—",
                f"{max(score):.3f}" if score else "—",
                f"{np.mean(cpu):.0f}" if cpu else "—",
            ]
        )
    return rows, summary


def clip01_section(runs: dict, bigram: float, study: Any) -> tuple[list[list[Any]], dict]:
    """The ``stability01`` part (LSTM 128, the injected SG clipped to 0.1): its stability
    row and the verdicts on its registered claims, against the stability part's runs
    clipped to 1 (the same settings and seeds)."""
    rows, summary = stability(runs, bigram, study, "stability01")
    spec = study.part_claims("stability01")
    seeds = study.STABILITY_SEEDS
    own, other = f"stability01/{study.STABILITY01_NAME}", f"stability/{study.STABILITY01_REF}"
    mine = [r["bpc"] for s in seeds if (r := runs.get(f"{own}/s{s}"))]
    ref = [r["bpc"] for s in seeds if (r := runs.get(f"{other}/s{s}"))]
    full = len(seeds)
    claims = {
        "DNI-8 at LSTM 128 clipped to 0.1: no run collapses": collapse_claim(
            mine, full, bigram, spec["stable"]
        )
    }
    tested = len(mine) == full and len(ref) == full
    claims["DNI-8 at LSTM 128: clipped to 0.1 at or below clipped to 1"] = V.claim(
        f"clip 0.1 {stats(mine)} vs clip 1 {stats(ref)}",
        "clip 0.1's final BPC ≤ clip 1's",
        float(np.mean(ref) - np.mean(mine)) if tested else float("nan"),
        difference_resolution(mine, ref) if tested else 0.0,
        cid=spec["vs_reference"],
        tested=tested,
        untested_note="" if tested else "runs missing",
    )
    since = first_start(r for k, r in runs.items() if k.startswith("stability01/"))
    return rows, {"summary": summary, "claims": V.preregistered(claims, since)}


def first_start(recs) -> str | None:
    """When the data of finished runs began to exist: the earliest run's start (a record's
    ``run_date`` is written when it finishes, ``wall_seconds`` after it started), ISO.

    Example:
        >>> first_start([{"run_date": "2026-12-07T06:00:00+00:00", "wall_seconds": 60.0}])
        '2026-12-07T05:59:00+00:00'
    """
    starts = [
        (datetime.fromisoformat(r["run_date"]) - timedelta(seconds=r["wall_seconds"])).isoformat()
        for r in recs
    ]
    return min(starts, default=None)


def collapse_claim(
    bpcs: list[float], expected: int, bigram: float, cid: str, **regime: Any
) -> dict:
    """The "no run collapses" claim on the final BPCs of the finished runs (``expected`` of
    them for a tested claim); ``regime``: ``regime`` and ``regime_note`` of
    :func:`~sgjax.apps.experiments.verdicts.claim`."""
    collapses = sum(b > bigram for b in bpcs)
    return V.claim(
        f"{collapses} of {len(bpcs)} runs above the bigram level ({bigram:.3f} BPC)",
        "0 collapses",
        1.0 if collapses == 0 else -float(collapses),
        0.0,
        cid=cid,
        tested=len(bpcs) == expected,
        untested_note="" if len(bpcs) == expected else f"{len(bpcs)} of {expected} runs finished",
        **regime,
    )


def score_upto(run: dict, chars: int) -> float:
    """A run's early-stopped score as if it had stopped at ``chars`` characters: the report
    half's BPC at the evaluation up to ``chars`` (the untrained one excluded) where the
    selection half's is lowest, the first of equals (as :func:`sgjax.apps.experiments.rnn.
    train_lm` scores a whole run).

    Example:
        >>> run = {"halves_curve": [[0, 6, 6], [10, 2, 3.1], [20, 3, 2.2], [30, 1, 1.5]]}
        >>> score_upto(run, 25)  # not the last (2.2), not the lowest report (2.2), not 1.5
        3.1
    """
    pts = [h for h in run["halves_curve"][1:] if h[0] <= chars]
    if not pts:
        raise ValueError(f"the run has no evaluation up to {chars:,} characters")
    return float(min(pts, key=lambda h: h[1])[2])
