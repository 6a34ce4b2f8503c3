"""The report of :mod:`sgjax.apps.experiments.rnn_lm`: the stability table, the LM table,
learning curves, and the verdicts on the registered ``dni-rnn/*`` claims. ``study`` is
the module :mod:`~sgjax.apps.experiments.rnn_lm` (its settings and runs), passed in so
that the runner imports the report and not the other way round.

Everything is computed from ``runs.jsonl``; a run that has not finished is shown as
missing (and a claim that needs it is *untested*), never filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import verdicts as V
from sgjax.apps.experiments.rnn_lm_tables import (
    LABELS,
    clip01_section,
    collapse_claim,
    difference_resolution,
    first_start,
    score_upto,
    stability,
    stats,
)
from sgjax.recurrent import tasks


def _extension_sections(runs: dict, bigram: float, study: Any) -> tuple[list[str], dict]:
    """The LSTM 256 extension: the tune256 table (and the setting its rule chose), then each
    of the lm256t and lm256aux parts with its verdicts; nothing for parts without runs."""
    lines: list[str] = []
    out: dict = {}
    if any(k.startswith("tune256/") for k in runs):
        rows, summary = stability(runs, bigram, study, "tune256")
        out["tune256"] = summary
        try:
            chosen, opts = study.tuned_setting(runs, bigram)
            pick = f"The rule (registered before these runs) chose **{chosen}** ({opts})."
        except ValueError as e:
            chosen, pick = None, f"No setting chosen yet: {e}."
        out["tune256_chosen"] = chosen
        tl = study.TUNE256
        # BPTT-8 of the lm256 part (same settings, seeds) scored the same way over its
        # evaluations up to the tuning budget: where DNI-8 has to get to
        ref = [
            score_upto(r, tl["chars"])
            for s in study.TUNE256_SEEDS
            if (r := runs.get(f"lm256/bptt/T{study.TUNE256_T}/s{s}")) is not None
        ]
        if ref:
            rows.append(
                [
                    f"BPTT-{study.TUNE256_T} (reference: the lm256 runs, scored over their "
                    f"evaluations up to {tl['chars']:,} characters)",
                    "—",
                    ", ".join(f"{b:.3f}" for b in ref),
                    f"{np.mean(ref):.3f}",
                    f"{max(ref):.3f}",
                    "—",
                ]
            )
            out["tune256_bptt_reference"] = ref
        lines += [
            f"## DNI-8 at LSTM 256: the DNI setting re-chosen ({tl['chars']:,} characters, "
            f"{len(study.TUNE256_SEEDS)} seeds per setting)",
            "",
            "Each setting changes one thing from the LM setting. The scores are early-stopped "
            f"validation BPC ({tl['evals']} evaluations); a collapse is a final BPC above the "
            "bigram level. The rule: no collapse, then the lowest mean score.",
            "",
            V.table(
                ["setting", "collapses", "score per seed", "mean", "worst", "CPU s / run"], rows
            ),
            "",
            pick,
            "",
        ]
    for part, title in (
        ("lm256t", "DNI-8 with the re-chosen setting"),
        ("lm256aux", "DNI+Aux-4"),
        ("lm256noise", "DNI-8 with noise of the SG's norm injected instead of the SG"),
    ):
        if not any(k.startswith(f"{part}/") for k in runs):
            continue
        claims = lm_claims(runs, bigram, study, part)
        out[f"claims_{part}"] = claims
        mech = mechanism_line(runs, study, part)
        lines += [
            f"## LSTM 256: {title} (part `{part}`)",
            "",
            *_lm_section(runs, study, part, heading=False),
            f"Verdicts (claims `{', '.join(sorted({r['id'] for r in claims.values()}))}`, "
            "registered before these runs; the BPTT-T′ and DNI-4 runs they are judged "
            "against are the `lm256` part's):",
            "",
            V.claims_table(claims),
            "",
            mech,
            "",
        ]
    return lines, out


def mechanism_line(runs: dict, study: Any, part: str) -> str:
    """What the verdicts cannot show: per seed, the mean cosine between the boundary SG and
    the true gradient from beyond the window at the last evaluation (the mechanism the
    horizon claim names), and the training BPC at the end beside the baseline's BPTT-8."""
    spec = study.part_claims(part)
    base = spec.get("baseline", part)
    recs = [r for k, r in sorted(runs.items()) if k.startswith(f"{part}/")]
    cos = [float(np.mean(r["cos"][-1]["cos"])) for r in recs if r.get("cos")]
    train = [r["train_bpc_last"] for r in recs if "train_bpc_last" in r]
    bptt = [
        r["train_bpc_last"]
        for s in study.LM_SEEDS
        if (r := runs.get(f"{base}/bptt/T8/s{s}")) is not None and "train_bpc_last" in r
    ]

    def fmt(vals: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in vals) or "—"

    return (
        "The SG's mean cosine with the true gradient from beyond the window at the last "
        f"evaluation, per run: {fmt(cos)} (the mechanism the horizon claim names: near 0 "
        f"means the SG does not predict it); training BPC at the end: {fmt(train)} "
        f"(BPTT-8: {fmt(bptt)})."
    )


def _labels(study: Any, part: str) -> dict[str, str]:
    """The method labels of a part (a part may name its methods otherwise: the noise
    control's ``dni`` runs are "noise-T")."""
    spec = study.PART_CLAIMS.get(part, {})
    return {**LABELS, **{m: f"{v}-T" for m, v in spec.get("labels", {}).items()}}


def _lm_values(
    runs: dict, method: str, T: int, study: Any, part: str = "lm", field: str = "bpc"
) -> list[float]:
    out = []
    for s in study.LM_SEEDS:
        r = runs.get(f"{part}/{method}/T{T}/s{s}")
        if r is not None:
            out.append(r[field])
    return out


def lm_claims(runs: dict, bigram: float, study: Any, part: str = "lm") -> dict[str, dict]:
    """The verdicts on the registered claims of an LM part (``study.part_claims(part)``:
    their ids, the run field they judge and their regime) from its runs (the grid is
    ``study.LM_PARTS[part]``; the regime is judged on the part's own runs)."""
    grid = study.LM_PARTS[part][1]
    spec = study.part_claims(part)
    prefix = f"{part}/"
    field = spec["score"]
    # a part with a baseline reads what its own grid lacks (BPTT-T′, other methods) there
    base = spec.get("baseline", part)
    base_grid = study.LM_PARTS[base][1]

    def values(method, T):
        src = part if T in grid.get(method, ()) else base
        return _lm_values(runs, method, T, study, src, field)

    bptt8 = values("bptt", 8)
    chars = min(
        (
            r["settings"]["chars"]
            for k, r in runs.items()
            if k.startswith(prefix) or k.startswith(f"{base}/")
        ),
        default=0,
    )
    regime = chars >= spec["chars"] and len(bptt8) > 0 and float(np.mean(bptt8)) <= spec["bptt8"]
    note = (
        ""
        if regime
        else f"outside the regime: BPTT-8 {np.mean(bptt8) if bptt8 else float('nan'):.3f} "
        f"BPC at {chars:,} characters (the regime: ≤ {spec['bptt8']} at ≥ "
        f"{spec['chars']:,})"
    )
    full = len(study.LM_SEEDS)
    claims: dict[str, dict] = {}

    def add(name, a_vals, b_vals, value, target, *, cid):
        tested = len(a_vals) == full and len(b_vals) == full
        margin = float(np.mean(b_vals) - np.mean(a_vals)) if tested else float("nan")
        res = difference_resolution(a_vals, b_vals) if tested else 0.0
        claims[name] = V.claim(
            value,
            target,
            margin,
            res,
            cid=cid,
            regime=regime,
            regime_note=note,
            tested=tested,
            untested_note="" if tested else "runs missing",
        )

    bptt_Ts = sorted(set(grid.get("bptt", ())) | set(base_grid.get("bptt", ())))

    labels = _labels(study, part)

    def horizon(method: str, T: int, cid: str) -> None:
        """DNI (or DNI+Aux) at T against BPTT-T′ for T′ > T: the next T′, or (``horizon_any``)
        every T′, the one whose margin clears its resolution by the most the verdict."""
        lab = labels[method].removesuffix("-T")
        a = values(method, T)
        later = [t for t in bptt_Ts if t > T]
        if not later:
            return
        if not spec["horizon_any"]:
            later = later[:1]
        names = []
        for Tp in later:
            b = values("bptt", Tp)
            names.append(f"{lab}-{T} at or below BPTT-{Tp} (horizon beyond T)")
            add(
                names[-1],
                a,
                b,
                f"{lab}-{T} {stats(a)} vs BPTT-{Tp} {stats(b)}",
                f"{lab}-{T}'s BPC ≤ BPTT-{Tp}'s",
                cid=cid,
            )
        if spec["horizon_any"]:
            recs = [claims.pop(n) for n in names]
            best = max(
                recs, key=lambda r: r["margin"] - r["resolution"] if r["tested"] else -np.inf
            )
            best = dict(best, others=[r["value"] for r in recs if r is not best])
            claims[f"{lab}-{T} at or below BPTT-T′ for some T′ > {T} (horizon beyond T)"] = best

    def below(a_m: str, b_m: str, T: int, cid: str) -> None:
        la, lb = (labels[m].removesuffix("-T") for m in (a_m, b_m))
        a, b = values(a_m, T), values(b_m, T)
        add(
            f"{la}-{T} below {lb}-{T}",
            a,
            b,
            f"{la}-{T} {stats(a)} vs {lb}-{T} {stats(b)}",
            f"{la}-{T}'s BPC < {lb}-{T}'s",
            cid=cid,
        )

    for T in grid.get("dni", ()):
        if "horizon" in spec:
            horizon("dni", T, spec["horizon"])
        if "dni_vs_bptt" in spec:
            below("dni", "bptt", T, spec["dni_vs_bptt"])
    for T in grid.get("dni_aux", ()):
        if "aux_horizon" in spec:
            horizon("dni_aux", T, spec["aux_horizon"])
        if "aux_vs_bptt" in spec:
            below("dni_aux", "bptt", T, spec["aux_vs_bptt"])
        if "aux_vs_dni" in spec:
            below("dni_aux", "dni", T, spec["aux_vs_dni"])
    for T in grid.get("cdni", ()):
        below("cdni", "dni", T, spec["cdni_vs_dni"])
    if "sg_vs_noise" in spec:  # the SG's DNI-T (another part) below the noise control's
        for T in grid.get("dni", ()):
            a = _lm_values(runs, "dni", T, study, spec["sg_part"], field)
            b = values("dni", T)
            add(
                f"DNI-{T} (the SG injected) below DNI-{T} with noise of its norm",
                a,
                b,
                f"DNI-{T} {stats(a)} vs noise-{T} {stats(b)}",
                f"DNI-{T}'s BPC < noise-{T}'s",
                cid=spec["sg_vs_noise"],
            )
    sg_runs = [r for k, r in runs.items() if k.startswith(prefix) and r["method"] != "bptt"]
    n_sg = sum(len(Ts) for m, Ts in grid.items() if m != "bptt") * full
    claims["no DNI run of the LM table collapses"] = collapse_claim(
        [r["bpc"] for r in sg_runs],  # the final BPC: a collapse
        n_sg,
        bigram,
        spec["stable"],
        regime=regime,
        regime_note=note,
    )
    since = first_start(r for k, r in runs.items() if k.startswith(prefix))
    return V.preregistered(claims, since)


def _lm_figure(out: Path, runs: dict, study: Any, part: str, name: str) -> str:
    """Validation BPC by characters, one panel per T of ``part``'s BPTT column."""
    plt = C.pyplot()
    grid = study.LM_PARTS[part][1]
    Ts = grid["bptt"]
    fig, axes = plt.subplots(1, len(Ts), figsize=(3 * len(Ts), 3.2), sharey=True, squeeze=False)
    for ax, T in zip(axes[0], Ts):
        for j, method in enumerate(LABELS):
            for i, s in enumerate(study.LM_SEEDS):
                r = runs.get(f"{part}/{method}/T{T}/s{s}")
                if r is None:
                    continue
                c = np.asarray(r["curve"], float)
                label = LABELS[method] if i == 0 else None
                ax.plot(c[1:, 0] / 1e6, c[1:, 1], color=f"C{j}", alpha=0.8, label=label)
        ax.set_title(f"T = {T}")
        ax.set_xlabel("training characters (M)")
    axes[0][0].set_ylabel("validation BPC")
    if axes[0][0].get_legend_handles_labels()[1]:
        axes[0][0].legend(fontsize=7)
    return C.save_figure(fig, out / name)


def _curves(out: Path, runs: dict, study: Any) -> list[str]:
    plt = C.pyplot()
    figs = [_lm_figure(out, runs, study, "lm", "bpc_curves.png")]
    if any(k.startswith("lm20/") for k in runs):
        figs.append(_lm_figure(out, runs, study, "lm20", "bpc_curves_20m.png"))
    if any(k.startswith("lm256/") for k in runs):
        figs.append(_lm_figure(out, runs, study, "lm256", "bpc_curves_256.png"))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for j, (name, _) in enumerate(study.VARIANTS.items()):
        for i, s in enumerate(study.STABILITY_SEEDS):
            r = runs.get(f"stability/{name}/s{s}")
            if r is None:
                continue
            c = np.asarray(r["curve"], float)
            ax.plot(
                c[1:, 0] / 1e6, c[1:, 1], color=f"C{j}", alpha=0.7, label=name if i == 0 else None
            )
    ax.set_xlabel("training characters (M)")
    ax.set_ylabel("validation BPC")
    ax.set_title("DNI-8 variants, 5 seeds each")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=5)
    figs.append(C.save_figure(fig, out / "stability_curves.png"))
    return figs


def _lm_section(runs: dict, study: Any, part: str, heading: bool = True) -> list[str]:
    """The BPC table and the CPU table of an LM part (a missing run leaves its cell out);
    for a part scored by early stopping, the early-stopped table first, then the final.
    ``heading``: begin with the part's ``##`` heading (a caller with its own says False)."""
    lm, grid = study.LM_PARTS[part]
    Ts = sorted({T for Ts_m in grid.values() for T in Ts_m})
    head = ["method"] + [f"T={T}" for T in Ts]
    labels = _labels(study, part)

    def rows(field: str, fmt=stats) -> list[list[str]]:
        out = []
        for method, Ts_m in grid.items():
            cells = []
            for T in Ts:
                vals = _lm_values(runs, method, T, study, part, field)
                cells.append(fmt(vals) if T in Ts_m and vals else "")
            out.append([labels[method], *cells])
        return out

    def mean0(vals: list[float]) -> str:
        return f"{np.mean(vals):.0f}"

    def chars(vals: list[float]) -> str:
        return ", ".join(f"{v / 1e6:.1f}" for v in vals)

    lines = []
    if study.PART_CLAIMS.get(part, {}).get("score", "bpc") == "bpc_best":
        if heading:
            lines += [
                f"## Character LM (LSTM {lm['hidden']}): early-stopped validation BPC, "
                f"{lm['chars']:,} characters per run (mean ± sd over seeds (per seed))",
                "",
            ]
        lines += [
            "Each run is evaluated "
            f"{lm['evals']} times; the score is the BPC of the report half of the validation "
            "text at the evaluation where the selection half's BPC is lowest (the halves: "
            "alternate blocks of the text, one block per stream, so the report half takes no "
            "part in the choice).",
            "",
            V.table(head, rows("bpc_best")),
            "",
            "Characters (M) at the chosen evaluation, per seed:",
            "",
            V.table(head, rows("best_chars", chars)),
            "",
            "Final validation BPC (the whole validation text, after the last character):",
            "",
            V.table(head, rows("bpc")),
            "",
        ]
    else:
        if heading:
            lines += [
                f"## Character LM: validation BPC after {lm['chars']:,} characters "
                f"(mean ± sd over seeds (per seed))",
                "",
            ]
        lines += [
            V.table(head, rows("bpc")),
            "",
        ]
    return [
        *lines,
        "CPU seconds per run (one core, `time.process_time`, mean over seeds):",
        "",
        V.table(head, rows("cpu_seconds", mean0)),
        "",
    ]


def write(out: Path, data: tasks.CharData, study: Any) -> dict:
    """Write ``report.md`` and ``results.json`` into ``out`` from its ``runs.jsonl``."""
    runs = study.load(out)
    unigram, bigram = study.bigram_bpc(data)
    st_rows, st_summary = stability(runs, bigram, study)
    claims = lm_claims(runs, bigram, study)
    lm20_sections: list[str] = []
    if any(k.startswith("lm20/") for k in runs):
        claims20 = lm_claims(runs, bigram, study, "lm20")
        lm20_sections = [
            *_lm_section(runs, study, "lm20"),
            f"Verdicts from the {study.LM20['chars']:,}-character runs (the same registered "
            "claims):",
            "",
            V.claims_table(claims20),
            "",
        ]
    else:
        claims20 = {}
    lm256_sections: list[str] = []
    claims256: dict = {}
    if any(k.startswith("lm256/") for k in runs):
        claims256 = lm_claims(runs, bigram, study, "lm256")
        lm256_sections = [
            *_lm_section(runs, study, "lm256"),
            "Verdicts from the LSTM 256 runs (claims `dni-rnn/lm256-*`, registered before "
            "these runs):",
            "",
            V.claims_table(claims256),
            "",
        ]
    ext_sections, ext = _extension_sections(runs, bigram, study)
    clip01_lines: list[str] = []
    if any(k.startswith("stability01/") for k in runs):
        c01_rows, ext["stability01"] = clip01_section(runs, bigram, study)
        st_rows += c01_rows
        clip01_lines = [
            "The last row (part `stability01`) was added after the choice: the LSTM 256 "
            "setting (clipped to 0.1) at LSTM 128, judged under claims registered before its "
            "runs against the row clipped to norm 1 (same seeds):",
            "",
            V.claims_table(ext["stability01"]["claims"]),
            "",
        ]
    figs = _curves(out, runs, study)
    lm = study.LM
    sections = [
        "## Levels on the same split",
        "",
        f"Unigram {unigram:.3f} BPC, add-one bigram {bigram:.3f} BPC (fitted on the training "
        "90 %, scored on the validation 10 %). A run **collapses** when its final validation "
        "BPC is above the bigram level.",
        "",
        f"## Stability: DNI-8 for {study.STABILITY['chars']:,} characters, "
        f"{len(study.STABILITY_SEEDS)} seeds per variant",
        "",
        V.table(
            ["variant", "collapses", "final BPC per seed", "mean", "worst", "CPU s / run"],
            st_rows,
        ),
        "",
        *clip01_lines,
        *_lm_section(runs, study, "lm"),
        "## Verdicts (claims registered before these runs)",
        "",
        V.claims_table(claims),
        "",
        *lm20_sections,
        *lm256_sections,
        *ext_sections,
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
    ]
    results = {
        "levels": {"unigram": unigram, "bigram": bigram},
        "stability": st_summary,
        "lm": {
            f"{m}/T{T}": _lm_values(runs, m, T, study)
            for m, Ts_ in study.LM_TS.items()
            for T in Ts_
        },
        "claims": claims,
        "lm20": {
            f"{m}/T{T}": _lm_values(runs, m, T, study, "lm20")
            for m, Ts_ in study.LM20_TS.items()
            for T in Ts_
        },
        "claims_lm20": claims20,
        "lm256": {
            f"{m}/T{T}": _lm_values(runs, m, T, study, "lm256", "bpc_best")
            for m, Ts_ in study.LM256_TS.items()
            for T in Ts_
            if _lm_values(runs, m, T, study, "lm256")
        },
        "claims_lm256": claims256,
        **ext,
        "lm_dni_options": study.LM_DNI,
        "runs": {k: {kk: vv for kk, vv in r.items() if kk != "curve"} for k, r in runs.items()},
    }
    C.write_json(out / "results.json", results)
    header = [
        "# Recurrent DNI on Tiny Shakespeare at a deciding budget",
        "",
        "`python -m sgjax.apps.experiments.rnn_lm run stability|lm|lm20|lm256 --out DIR`, then "
        "`... report --out DIR`. LSTM 128 (256 in `lm256`), 32 streams, Adam 1e-3 (model "
        "and SG), global-norm "
        f"clip {study.CLIP}, linear SG zero-initialised, γ = {lm['decay']} unless a variant "
        f"says otherwise; the LM part's DNI harness options: {study.LM_DNI or 'none'}.",
        "",
    ]
    (out / "report.md").write_text("\n".join(header + sections) + "\n")
    return results
