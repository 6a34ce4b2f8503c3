"""Verdicts on the paper's claims: one run's (:func:`judge`, :func:`claim`), the
registration check (:func:`preregistered`), over seeds (:func:`aggregate`), and their
markdown tables. Definitions: docs/reproduce.md, "Verdicts"; the claims themselves are
registered in :mod:`sgjax.apps.experiments.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The verdicts a claim can get (defined in docs/reproduce.md, "Verdicts").
VERDICTS = ("held", "consistent", "contradicted", "untested", "inconclusive", "exploratory")
#: "held" needs the claim to pass on at least this many confirmatory seeds.
MIN_SEEDS_HELD = 3
#: "contradicted" needs at least this many: one seed says nothing of the spread over seeds.
MIN_SEEDS_CONTRADICTED = 2
#: one-sided 95 % Student-t quantiles by degrees of freedom (1.645 beyond the table)
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
        9: 1.833, 10: 1.812, 15: 1.753, 20: 1.725, 30: 1.697}  # fmt: skip


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float | np.floating):
        if not math.isfinite(float(v)):
            return str(v)
        return f"{float(v):.{digits}f}"
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def seed_resolution(margins: Sequence[float] | np.ndarray) -> float:
    """The margin the spread of ``margins`` over seeds can tell from zero: t₀.₉₅·sd/√n.

    Zero for one seed (its spread is unknown, see :func:`aggregate`).

    Example:
        >>> round(seed_resolution([0.064, 0.104, 0.068]), 4)
        0.0371
    """
    m = np.asarray(margins, dtype=float)
    n = len(m)
    if n < 2:
        return 0.0
    df = n - 1
    t = _T95.get(df) or next((v for k, v in sorted(_T95.items()) if k >= df), 1.645)
    return float(t * np.std(m, ddof=1) / math.sqrt(n))


def judge(margin: float, resolution: float, *, regime: bool = True, tested: bool = True) -> str:
    """One run's verdict on a claim from its signed ``margin`` (> 0: passes by that much).

    ``untested`` when the run cannot test the claim (``tested`` false, e.g. neither
    method leaves chance, or a probe saturates for every method) or when it fails outside
    the regime the paper's statement is about (too few steps, a network that did not
    train): a failure there says nothing about the claim. ``inconclusive`` when ``|margin|``
    is within the measurement ``resolution``; otherwise ``contradicted`` when it fails in
    the regime, ``held`` when it passes in the regime, ``consistent`` when it passes
    outside it (e.g. early training where the paper's curves are at ≈0.999).

    Example:
        >>> judge(0.03, 0.01), judge(0.03, 0.01, regime=False), judge(-0.005, 0.01)
        ('held', 'consistent', 'inconclusive')
        >>> judge(-0.03, 0.01), judge(-0.03, 0.01, regime=False), judge(0.5, 0.01, tested=False)
        ('contradicted', 'untested', 'untested')
    """
    if resolution < 0 or not math.isfinite(resolution):
        raise ValueError(f"judge: `resolution` must be finite and ≥ 0, got {resolution!r}")
    if not tested:
        return "untested"
    if not math.isfinite(margin) or abs(margin) <= resolution:
        return "inconclusive"
    if margin < 0:
        return "contradicted" if regime else "untested"
    return "held" if regime else "consistent"


def claim(
    value: Any,
    target: str,
    margin: float,
    resolution: float,
    *,
    cid: str,
    regime: bool = True,
    regime_note: str = "",
    tested: bool = True,
    untested_note: str = "",
    control: Any = None,
) -> dict:
    """A claim record: what we measured, the target, the margin and the verdict.

    ``cid`` names the claim's entry in :mod:`sgjax.apps.experiments.registry` (its source,
    registration and regime are copied into the record). ``margin`` is signed (> 0: the
    claim passes by that much, in the units of the target); ``resolution`` is the
    smallest margin the measurement can tell from zero. ``control``: backprop's value of
    the same statistic on the same run, where the claim is judged against it (the margin
    then already includes the contrast). A fresh record is confirmatory;
    :func:`preregistered` re-labels it for data older than the claim.
    """
    from sgjax.apps.experiments.registry import CLAIMS

    if cid not in CLAIMS:
        raise KeyError(f"claim: {cid!r} is not registered in sgjax.apps.experiments.registry")
    spec = CLAIMS[cid]
    margin = float(margin)
    return {
        "id": cid,
        "source": spec.source,
        "registered": spec.registered,
        "status": "confirmatory",
        "value": value,
        "control": control,
        "target": target,
        "margin": margin,
        "resolution": float(resolution),
        "regime": bool(regime),
        "regime_note": regime_note,
        "tested": bool(tested),
        "untested_note": untested_note,
        "holds": bool(tested and math.isfinite(margin) and margin > 0),
        "verdict": judge(margin, resolution, regime=regime, tested=tested),
    }


def preregistered(records: dict[str, dict], data_date: str | None) -> dict[str, dict]:
    """``records`` with each claim registered after ``data_date`` marked exploratory.

    An exploratory record keeps its would-be verdict in ``verdict_if_registered`` and gets
    the verdict ``exploratory``: a claim stated after its data existed is never evidence.
    """
    from sgjax.apps.experiments.registry import is_confirmatory

    out = {}
    for name, rec in records.items():
        rec = dict(rec)
        if not is_confirmatory(rec["id"], data_date):
            rec["status"] = "exploratory"
            rec["verdict_if_registered"] = rec["verdict"]
            rec["verdict"] = "exploratory"
        out[name] = rec
    return out


def accuracy_resolution(p1: float, p2: float | None, n: int, *, exact: bool = False) -> float:
    """The smallest accuracy margin ``n`` evaluated points can resolve.

    ``exact``: the points are the whole population the claim is about (train accuracy on
    the whole training set): one point, ``1/n``. Otherwise two binomial standard errors
    (of ``p1``, or of the difference ``p1 − p2`` of two independent estimates), at least
    ``1/n``.

    Example:
        >>> accuracy_resolution(0.999, 0.998, 60000, exact=True) == 1 / 60000
        True
        >>> round(accuracy_resolution(0.98, None, 10000), 4)
        0.0028
    """
    if n < 1:
        raise ValueError(f"accuracy_resolution: `n` must be ≥ 1, got {n}")
    if exact:
        return 1.0 / n
    var = p1 * (1 - p1) + (p2 * (1 - p2) if p2 is not None else 0.0)
    return max(2.0 * math.sqrt(var / n), 1.0 / n)


def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Combine per-seed claim records (``{seed: {claim: record}}``) into one verdict each.

    Only confirmatory seeds count (exploratory ones are listed with their margins); with
    none, the verdict is ``exploratory``. Over the confirmatory seeds, the resolution is
    the larger of the runs' measurement resolution and the spread of the margins over
    seeds (:func:`seed_resolution`), and the mean margin is judged against it:

    ``held``: every seed held, ≥ :data:`MIN_SEEDS_HELD` seeds and the mean margin beyond
    the resolution; ``consistent``: every seed passed (held or consistent) — fewer seeds,
    outside the paper's regime, or a mean margin within the spread over seeds;
    ``contradicted``: every seed contradicted, ≥
    :data:`MIN_SEEDS_CONTRADICTED` seeds and the mean margin beyond the resolution;
    ``untested``: every seed untested (outside the regime, or a measurement that cannot
    tell); anything else is ``inconclusive``. A claim missing on some seeds (a network not
    trained there, ``--set methods=…``) is combined over the seeds that have it.

    Example:
        >>> r = lambda m: {"x": claim(m, "> 0", m, 0.01, cid="fig3/bp-plateau")}
        >>> aggregate({0: r(0.1), 1: r(0.2), 2: r(0.3)})["x"]["verdict"]
        'held'
        >>> aggregate({0: r(0.1), 1: r(-0.2), 2: r(0.3)})["x"]["verdict"]
        'inconclusive'
        >>> aggregate({0: r(0.1)})["x"]["verdict"], aggregate({0: r(-0.1)})["x"]["verdict"]
        ('consistent', 'inconclusive')
        >>> aggregate({0: r(0.02), 1: r(0.3), 2: r(0.03)})["x"]["verdict"]  # spread > mean
        'consistent'
    """
    if not per_seed:
        raise ValueError("aggregate: `per_seed` is empty")
    names: list[str] = []
    for s in sorted(per_seed):
        names += [n for n in per_seed[s] if n not in names]
    out = {}
    for name in names:
        seeds = [s for s in sorted(per_seed) if name in per_seed[s]]
        recs = [per_seed[s][name] for s in seeds]
        conf = [(s, r) for s, r in zip(seeds, recs) if r.get("status") != "exploratory"]
        expl = [(s, r) for s, r in zip(seeds, recs) if r.get("status") == "exploratory"]
        notes = {n for r in recs for n in (r["regime_note"], r["untested_note"]) if n}
        for s, r in expl:
            notes.add(
                f"seed {s} exploratory (claim registered {r['registered'][:10]}, after the "
                f"data): would be {r.get('verdict_if_registered')}, margin {r['margin']:+.4g}"
            )
        use = conf or expl  # the figures shown; the verdict comes from `conf` only
        margins = np.array([r["margin"] for _, r in use], dtype=float)
        measured = max(r["resolution"] for _, r in use)
        spread = seed_resolution(margins) if conf else 0.0
        resolution = max(measured, spread)
        vs = [r["verdict"] for _, r in conf]
        mean = float(np.mean(margins))
        beyond = math.isfinite(mean) and abs(mean) > resolution
        if not conf:
            verdict = "exploratory"
        elif all(v == "untested" for v in vs):
            verdict = "untested"
        elif all(v == "contradicted" for v in vs):
            ok = len(conf) >= MIN_SEEDS_CONTRADICTED and beyond
            verdict = "contradicted" if ok else "inconclusive"
            if len(conf) < MIN_SEEDS_CONTRADICTED:
                notes.add("one seed fails: the spread over seeds is unknown, so not a verdict")
        elif all(v in ("held", "consistent") for v in vs):
            every = all(v == "held" for v in vs) and len(conf) >= MIN_SEEDS_HELD
            verdict = "held" if every and beyond else "consistent"
        else:
            verdict = "inconclusive"
        if conf and not beyond and spread > measured and verdict != "untested":
            notes.add(f"mean margin {mean:+.3g} within the spread over seeds ±{spread:.2g}")
        out[name] = {
            "id": recs[0].get("id"),
            "source": recs[0].get("source"),
            "verdict": verdict,
            "seeds": [s for s, _ in use],
            "confirmatory_seeds": [s for s, _ in conf],
            "per_seed_verdict": [r["verdict"] for _, r in use],
            "values": [r["value"] for _, r in use],
            "controls": [r.get("control") for _, r in use],
            "margins": margins.tolist(),
            "margin_min": float(np.min(margins)),
            "margin_mean": mean,
            "margin_max": float(np.max(margins)),
            "resolution": resolution,
            "measurement_resolution": measured,
            "seed_resolution": spread,
            "target": recs[0]["target"],
            "notes": sorted(notes),
        }
    return out


def claims_table(claims: dict[str, dict]) -> str:
    """The per-run claims as a markdown table with sources, margins and verdicts."""
    rows = []
    for name, c in claims.items():
        note = c.get("untested_note") if not c.get("tested", True) else c.get("regime_note")
        control = c.get("control")
        rows.append(
            [
                name,
                c.get("source", "—").split(" (")[0],
                c["value"] if control is None else f"{c['value']} (backprop: {control})",
                c["target"],
                f"{c['margin']:+.4g} (±{c['resolution']:.2g})",
                c["verdict"] + (f" — {note}" if note else ""),
            ]
        )
    return table(["claim", "source", "ours", "target", "margin (resolution)", "verdict"], rows)


def aggregate_table(agg: dict[str, dict]) -> str:
    """The multi-seed verdicts as a markdown table: per-seed values, margin spread, verdict."""
    rows = []
    for name, a in agg.items():
        vals = "; ".join(f"s{s}: {fmt(v)}" for s, v in zip(a["seeds"], a["values"]))
        controls = [c for c in a.get("controls", []) if c is not None]
        if controls:
            vals += " (backprop: " + "; ".join(fmt(c) for c in controls) + ")"
        spread = f"{a['margin_min']:+.4g} … {a['margin_max']:+.4g} (mean {a['margin_mean']:+.4g})"
        per = ", ".join(a["per_seed_verdict"])
        res = f"±{a['resolution']:.2g}"
        if a.get("seed_resolution", 0) > a.get("measurement_resolution", 0):
            res += " (seeds)"
        rows.append(
            [name, (a.get("source") or "—").split(" (")[0], a["target"], vals, spread, res, per,
             f"**{a['verdict']}**"]
        )  # fmt: skip
    return table(
        [
            "claim",
            "source",
            "target",
            "ours per seed",
            "margin min … max",
            "resolution",
            "per seed",
            "verdict",
        ],
        rows,
    )
