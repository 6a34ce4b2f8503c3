"""The claims the reproductions judge, registered before the runs that judge them.

Every claim an experiment can report has one entry here: where it comes from
(``paper.md`` — the paper digest, written before any of our runs — or ``ours``), when it
was registered (the commit that first stated it), what regime it presupposes, how its
resolution is measured, and whether it is judged against backprop from the same run.

A run's claim is **confirmatory** only when the claim was registered before the run's
data existed (``results.json``'s ``run_date``; for results committed before runs recorded
their date, the commit that first added the file, see ``scripts/rejudge.py``). Otherwise it
is **exploratory**: its margin is reported, and it never counts towards a verdict
(:func:`sgjax.apps.experiments.common.aggregate`). A claim can thus be formed on one seed
and confirmed on seeds run after it was registered.

Example:
    >>> spec = CLAIMS["fig5/sg-star-decreasing"]
    >>> spec.source, spec.contrast != ""
    ('paper.md §6 item 26', True)
    >>> is_confirmatory("fig5/sg-star-decreasing", "2026-11-25T00:00:00+00:00")
    True
    >>> is_confirmatory("fig5/single-sg-below-above", "2026-11-30T01:51:20+00:00")
    False
"""

from __future__ import annotations

from datetime import datetime

from sgjax.apps.experiments.claimspec import DIGEST, ClaimSpec
from sgjax.apps.experiments.registry_rnn import SPECS as _RNN_SPECS

#: When the claims of issue 25 (the backprop contrasts that are ours, DFA's settling layer)
#: were registered: before the seeds 3–5 runs that judge them.
TODAY = "2026-12-06T11:20:00+00:00"


_SEEDS = (
    "per run: none (a deterministic function of the trained networks); over seeds: t₀.₉₅ · sd/√n"
)
_TRAINED = "every network the claim names at ≥ 99 % train accuracy (the paper's are converged)"
_PROBED = _TRAINED + "; probes not saturated for every method"
_FITTED = "exact: 1/n of the fitted points"

_SPECS = (
    # ------------------------------------------------------------------ Fig. 3 (RDM drift)
    ClaimSpec("fig3/bp-plateau", "paper.md §6 item 24", DIGEST, "digest", _TRAINED, _SEEDS),
    ClaimSpec("fig3/sg-break", "paper.md §6 item 24", DIGEST, "digest", _TRAINED, _SEEDS),
    ClaimSpec(
        "fig3/sg-star-no-plateau",
        "paper.md §6 item 24",
        DIGEST,
        "digest",
        _TRAINED,
        _SEEDS,
        contrast="backprop's minimum over the same layers must be below SG*'s (the paper: "
        "backprop plateaus, SG* does not)",
    ),
    ClaimSpec(
        "fig3/dfa-layer1-below-bp",
        "ours",
        "2026-11-24T23:29:12+00:00",
        "36e0c28",
        _TRAINED,
        _SEEDS,
        contrast="is itself a comparison with backprop",
    ),
    ClaimSpec(
        "fig3/dfa-settles-first",
        "ours (paper.md §3.3: DFA's representation 'barely evolves after the first layer')",
        TODAY,
        "issue 25",
        _TRAINED,
        _SEEDS,
        contrast="the first layer from which DFA's distance stays ≤ 0.05 is before backprop's",
    ),
    # ---------------------------------------------------------------- Fig. 5 (weight norms)
    ClaimSpec(
        "fig5/sg-star-decreasing",
        "paper.md §6 item 26",
        DIGEST,
        "digest",
        _TRAINED,
        _SEEDS,
        contrast="SG*'s first/last ratio above backprop's (the paper: backprop flat)",
    ),
    ClaimSpec("fig5/bp-flat-or-rising", "paper.md §6 item 26", DIGEST, "digest", _TRAINED, _SEEDS),
    ClaimSpec(
        "fig5/single-sg-below-above",
        "ours (paper.md §3.5 figure values; first stated in fbd8d6c without the contrast)",
        TODAY,
        "issue 25",
        _TRAINED,
        _SEEDS,
        contrast="the single SG's below/above ratio above backprop's with the same split",
    ),
    # ---------------------------------------------------------------- Fig. 8 (probes)
    *(
        ClaimSpec(f"fig8/{k}", "paper.md §6 item 25", DIGEST, "digest", _PROBED, _FITTED)
        for k in ("bp-sg-layer2", "dfa-layer1")
    ),
    ClaimSpec(
        "fig8/dfa-highest-train",
        "ours (paper.md §3.4 figure values)",
        "2026-11-30T00:27:56+00:00",
        "fbd8d6c",
        _PROBED,
        _FITTED,
        contrast="is itself a comparison with backprop, SG and SG*",
    ),
    ClaimSpec(
        "fig8/dfa-highest-heldout",
        "ours",
        "2026-11-30T00:27:56+00:00",
        "fbd8d6c",
        _TRAINED,
        "two binomial standard errors of the difference on the held-out points",
        contrast="is itself a comparison with backprop, SG and SG*",
    ),
    ClaimSpec(
        "fig8/sg-star-shape",
        "paper.md §6 item 25",
        DIGEST,
        "digest",
        _TRAINED + "; probes in layers 4–12 not saturated for every method",
        "exact: 1/n of the fitted points",
    ),
    ClaimSpec(
        "fig8/sg-star-rise-heldout",
        "ours",
        "2026-11-30T00:27:56+00:00",
        "fbd8d6c",
        _TRAINED,
        "two binomial standard errors of the difference on the held-out points",
    ),
    ClaimSpec(
        "fig8/dfa-regressor",
        "paper.md §3.4 check",
        DIGEST,
        "digest",
        _TRAINED,
        _SEEDS,
        contrast="is itself a comparison with backprop, SG and SG*",
    ),
    # ---------------------------------------------------------------- Fig. 4 (depth)
    ClaimSpec(
        "fig4/sg-ahead",
        "paper.md §6 item 23",
        DIGEST,
        "digest",
        "both curves at ≥ 99 % at the checkpoints (the paper's are at ≈ 0.999); a ReLU net of "
        "≥ 20 layers; a failure where neither network trains is untested",
        "train accuracy on every training image: 1/n; over seeds: t₀.₉₅ · sd/√n",
        contrast="is itself a comparison with backprop",
    ),
    ClaimSpec(
        "fig4/sg-final",
        "paper.md §6 item 23",
        DIGEST,
        "digest",
        "≥ 100k steps (the paper's budget); a ReLU net of ≥ 20 layers",
        "train accuracy on every training image: 1/n; over seeds: t₀.₉₅ · sd/√n",
    ),
    # ---------------------------------------------------------------- Fig. 2 (grid)
    *(
        ClaimSpec(f"fig2/{k}", "paper.md §6 item 13", DIGEST, "digest", r, "ρ over 100 points: 0.1")
        for k, r in (
            ("single-rho", "Adam 3e-5 (the paper's)"),
            ("top-vs-bottom", "Adam 3e-5 (the paper's)"),
            ("conditioned-vs-ablation", "Adam 3e-5 (the paper's)"),
        )
    ),
    ClaimSpec(
        "fig2/ablation-ends-higher",
        "ours (paper.md §3.1, Fig. 9: the ablations 'did not converge to a good solution')",
        "2026-11-30T00:27:56+00:00",
        "fbd8d6c",
        "Adam 3e-5 (the paper's)",
        "final losses closer than 1e-3 are the same outcome",
    ),
    # ------------------------------------------- DNI paper: stochastic updates (p_update)
    ClaimSpec(
        "p-update/cdni-drop-vs-bp",
        "ours (operationalises paper.md §5.1, unverified: cDNI 'keeps training well at low "
        "p_update', 'backprop cannot do this')",
        TODAY,
        "issue 25",
        "equal updates per stage (p = 0.2 for 5× the steps of p = 1); at equal steps a "
        "stage makes 5× fewer updates, so a failure there is untested",
        "two binomial standard errors of the difference of the two drops (4 accuracies on "
        "10k test images); over seeds: t₀.₉₅ · sd/√n",
        contrast="cDNI's drop from p = 1 to p = 0.2 no larger than backprop-with-skips'",
    ),
    ClaimSpec(
        "p-update/cdni-within-1pt",
        "ours (operationalises paper.md §5.1: 'keeps training well'; the 1-point threshold "
        "is ours)",
        TODAY,
        "issue 25",
        "equal updates per stage, as above",
        "two binomial standard errors of the difference on 10k test images; over seeds: "
        "t₀.₉₅ · sd/√n",
    ),
    # ---------------------------------------------------------------- DNI paper MNIST FCN
    *(
        ClaimSpec(
            f"dni-mnist/{k}",
            "paper.md §6 item 27 (DNI paper, unverified)",
            DIGEST,
            "digest",
            "≥ 500k steps (the DNI paper's budget)",
            "two binomial standard errors on the 10k test images",
            contrast=c,
        )
        for k, c in (
            ("cdni-vs-bp", "is itself a comparison with backprop"),
            ("dni-depth", ""),
            ("no-bprop", ""),
        )
    ),
)

#: When the claims of issue 29 item 3(a) (the decoupled transformer LM on one core against
#: backprop) were registered: before every judged run of ``docs/results/dni-transformer``
#: (:mod:`sgjax.apps.experiments.transformer_lm`). A pilot on seed 99 (not a judged seed)
#: sized the runs and set the regime: backprop reached 2.76 BPC at 1,000 steps, DNI 5.61
#: (above the unigram level, 4.83), cDNI 5.7 at 300 steps; the claims come from the
#: papers and the issue, not from the pilot, and were written knowing it.
TRANSFORMER = "2026-12-06T21:59:34+00:00"
_TF_REGIME = (
    "the medium settings of transformer_lm (char transformer, 4 pre-LN blocks of width 128, "
    "4 heads, context 64, batch 16, the cross-entropy summed over the window, Adam 1e-3 "
    "for network and SGs with global-norm clip 1 per position, SGs at all 5 boundaries, "
    "1,000 steps) and "
    "backprop at ≤ 2.90 validation BPC (mean over its 3 seeds) at 1,000 steps — well below "
    "the bigram model's 3.58 on the same split, so backprop has learned more than character "
    "statistics (the pilot, seed 99, reached 2.76); above it nothing is decided"
)
_TF_RES = (
    "over seeds: t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b) of the two methods' validation BPC (the "
    "validation sample is fixed, so the spread over seeds is the resolution)"
)
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-transformer/cdni-near-bp",
        "ours (transposes paper.md §5.3, DNI paper, unverified: cDNI trains every-layer "
        "decoupled networks to within a little of backprop; the 0.10 BPC tolerance is ours)",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        _TF_RES,
        contrast="is itself a comparison with backprop: cDNI's BPC ≤ backprop's + 0.10 at "
        "equal steps",
    ),
    ClaimSpec(
        "dni-transformer/dni-near-bp",
        "ours (the same for unconditioned DNI; paper.md §5.3 recalls that unconditioned DNI "
        "degrades with depth, so this one may fail)",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        _TF_RES,
        contrast="is itself a comparison with backprop: DNI's BPC ≤ backprop's + 0.10 at "
        "equal steps",
    ),
    ClaimSpec(
        "dni-transformer/cdni-vs-dni",
        "paper.md §5.1/§5.3 (DNI paper, unverified): conditioning the SG on the label "
        "(here: the next character at each position) helps — cDNI at or below DNI",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        _TF_RES,
    ),
    ClaimSpec(
        "dni-transformer/prop-near-cdni",
        "ours (paper.md §1, §2.8 footnote 5: SG + prop lets the SG error reach the lower "
        "network and alone suffices to converge): adding prop (α = 0.1) to cDNI costs at "
        "most 0.10 BPC at equal steps",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        _TF_RES,
    ),
    ClaimSpec(
        "dni-transformer/cdni-vs-bp-wall",
        "ours (issue 29: update unlocking should pay off in time, not only in steps): at "
        "backprop's training wall time on the same core, cDNI's BPC at or below backprop's",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        _TF_RES,
        contrast="is itself a comparison with backprop (each seed's cDNI run trains until "
        "the wall time of the backprop run of the same seed)",
    ),
    ClaimSpec(
        "dni-transformer/cdni-cosine-positive",
        "ours (paper.md §2: the SG tracks the true gradient): at the last checkpoint the "
        "cosine between cDNI's SG and the true ∂ℓ/∂h is positive at every boundary",
        TRANSFORMER,
        "issue 29",
        _TF_REGIME,
        "over seeds: t₀.₉₅ · sd/√n of each boundary's cosine (the largest over boundaries), "
        "on a held batch of 32 validation windows",
    ),
)

#: id -> :class:`ClaimSpec` (the recurrent claims of issue 24 in :mod:`~sgjax.apps.
#: experiments.registry_rnn`)
CLAIMS: dict[str, ClaimSpec] = {s.id: s for s in (*_SPECS, *_RNN_SPECS)}


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected an ISO date-time like {DIGEST!r}, got {text!r}") from None


def is_confirmatory(cid: str, data_date: str | None) -> bool:
    """Whether claim ``cid`` was registered before data dated ``data_date`` existed.

    An unknown ``data_date`` (None) is confirmatory only for the paper digest's claims,
    which precede every run.
    """
    if cid not in CLAIMS:
        raise KeyError(f"claim {cid!r} is not registered in sgjax.apps.experiments.registry")
    spec = CLAIMS[cid]
    if data_date is None:
        return spec.registered == DIGEST
    return _time(spec.registered) <= _time(data_date)
