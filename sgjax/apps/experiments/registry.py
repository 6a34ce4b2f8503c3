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
from typing import NamedTuple

#: When the paper digest (``paper.md``, its §3 checks and §6 claims) existed: before the
#: project's first commit, so before every run.
DIGEST = "2026-11-24T00:00:00+00:00"
#: When the claims of issue 25 (the backprop contrasts that are ours, DFA's settling layer)
#: were registered: before the seeds 3–5 runs that judge them.
TODAY = "2026-12-06T11:20:00+00:00"


class ClaimSpec(NamedTuple):
    """One registered claim (see the module docstring)."""

    id: str
    source: str  # "paper.md §6 item N", "paper.md §3.x check", or "ours"
    registered: str  # ISO time of the commit that first stated it (DIGEST for paper claims)
    commit: str  # that commit ("digest" for paper claims)
    regime: str  # what the claim presupposes; outside it a failure is "untested"
    resolution: str  # how a margin is told from zero
    contrast: str = ""  # the backprop control judged on the same run, if any


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

#: When the claims of issue 24 (recurrent DNI judged at a deciding budget) were registered:
#: before every run of ``docs/results/dni-rnn-lm`` (the stability study and the LM table).
RNN = "2026-12-06T13:47:50+00:00"
_LM_REGIME = (
    "≥ 10M training characters per run and truncated BPTT-8 at ≤ 2.35 validation BPC (mean "
    "over seeds): below that budget even BPTT sits near the bigram level and nothing is decided"
)
_LM_RES = "over seeds: t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b) of the two methods' final BPC"
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-rnn/lm-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon'",
        DIGEST,
        "digest",
        _LM_REGIME,
        _LM_RES,
        contrast="is itself a comparison with truncated BPTT: DNI-T's BPC at or below "
        "BPTT-T′'s for the next T′ > T of the grid (the T′ where BPTT is weakest)",
    ),
    ClaimSpec(
        "dni-rnn/lm-dni-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): the boundary SG stands in for the "
        "gradients from beyond the window",
        DIGEST,
        "digest",
        _LM_REGIME,
        _LM_RES,
        contrast="is itself a comparison with BPTT-T at the same T",
    ),
    ClaimSpec(
        "dni-rnn/lm-aux-vs-dni",
        "paper.md §5.1 (RNN case, unverified detail): DNI + Aux",
        DIGEST,
        "digest",
        _LM_REGIME,
        _LM_RES,
    ),
    ClaimSpec(
        "dni-rnn/lm-default-stable",
        "ours (issue 24: the harness default chosen by the stability study must not collapse)",
        RNN,
        "issue 24",
        _LM_REGIME,
        "a collapse is a final validation BPC above the bigram model's on the same split "
        "(a count: exact)",
    ),
)

#: When the Copy claims of issue 24 were registered: before every run of
#: ``docs/results/dni-rnn-copy`` (:mod:`sgjax.apps.experiments.rnn_copy`).
COPY = "2026-12-06T17:04:38+00:00"
_COPY_REGIME = (
    "full BPTT (one update per whole sequence) solves Copy N ≥ 16 (mean over 3 seeds) within "
    "the runs' batch budget (LSTM 256, 4-bit vectors, batches of 32, Adam 3e-3, no clip, "
    "15,000 batches): N ≫ T, so every window boundary matters; where full BPTT itself stops "
    "short of that, nothing is decided (untested at this budget)"
)
_COPY_RES = (
    "solved N per run: exact (an integer); over seeds: t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b) of the "
    "two methods' solved N"
)
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-rnn/copy-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon'; the DNI paper's Copy comparison",
        COPY,
        "issue 24",
        _COPY_REGIME,
        _COPY_RES,
        contrast="is itself a comparison with truncated BPTT: DNI-T's mean solved N above "
        "BPTT-T′'s, beyond the seed resolution, for some T′ > T of the grid (each T′ > T is "
        "judged; the best margin is the verdict)",
    ),
    ClaimSpec(
        "dni-rnn/copy-dni-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): the boundary SG stands in for the "
        "gradients from beyond the window",
        COPY,
        "issue 24",
        _COPY_REGIME,
        _COPY_RES,
        contrast="is itself a comparison with BPTT-T at the same T",
    ),
)

#: When the Copy claims at 20,000 batches were registered: after the 15,000-batch runs left
#: full BPTT at a mean solved N of 15.33 (below the regime of 16) and before any run at
#: 20,000 batches (the same settings and grid, the budget alone raised).
COPY20K = "2026-12-06T19:04:34+00:00"
_COPY20K_REGIME = _COPY_REGIME.replace("15,000 batches", "20,000 batches")
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-rnn/copy20k-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon'; the DNI paper's Copy comparison",
        COPY20K,
        "issue 24",
        _COPY20K_REGIME,
        _COPY_RES,
        contrast="is itself a comparison with truncated BPTT: DNI-T's mean solved N above "
        "BPTT-T′'s, beyond the seed resolution, for some T′ > T of the grid (each T′ > T is "
        "judged; the best margin is the verdict)",
    ),
    ClaimSpec(
        "dni-rnn/copy20k-dni-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): the boundary SG stands in for the "
        "gradients from beyond the window",
        COPY20K,
        "issue 24",
        _COPY20K_REGIME,
        _COPY_RES,
        contrast="is itself a comparison with BPTT-T at the same T",
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

#: When the LSTM 256 LM claims of issue 24 were registered: after the LSTM 128 runs left
#: BPTT-8 at 2.370 BPC at 20M characters (outside the regime: it overfits the training
#: split) and one BPTT-8 probe of LSTM 256 (seed 0: 2.322 at 7M characters), before any
#: run of the ``lm256`` part (:mod:`sgjax.apps.experiments.rnn_lm`).
LM256 = "2026-12-06T21:54:47+00:00"
_LM256_REGIME = (
    "LSTM 256, 32 streams, Adam 1e-3 (model and SG), global-norm clip 1, 7M training "
    "characters per run, early stopping (the score: the BPC of the report half of the "
    "validation text at the one of 14 evaluations where the selection half's is lowest; the "
    "halves are alternate blocks of the text), and truncated BPTT-8's mean score ≤ 2.35 "
    "over 3 seeds; where BPTT-8 stops short of that, nothing is decided (untested)"
)
_LM256_RES = "over seeds: t₀.₉₅ · √(sd_a²/n_a + sd_b²/n_b) of the two methods' scores"
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-rnn/lm256-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon'",
        LM256,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with truncated BPTT: DNI-T's score at or below "
        "BPTT-T′'s for some T′ > T of the grid (each T′ > T is judged; the best margin is "
        "the verdict)",
    ),
    ClaimSpec(
        "dni-rnn/lm256-dni-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): the boundary SG stands in for the "
        "gradients from beyond the window",
        LM256,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with BPTT-T at the same T",
    ),
    ClaimSpec(
        "dni-rnn/lm256-aux-vs-dni",
        "paper.md §5.1 (RNN case, unverified detail): DNI + Aux",
        LM256,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
    ),
    ClaimSpec(
        "dni-rnn/lm256-cdni-vs-dni",
        "paper.md §5.1 cDNI (the SG also reads a context; for RNNs an unverified detail): "
        "cDNI-T, the SG conditioned on the boundary's input character, below DNI-T",
        LM256,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
    ),
    ClaimSpec(
        "dni-rnn/lm256-default-stable",
        "ours (issue 24: the harness default must not collapse)",
        LM256,
        "issue 24",
        _LM256_REGIME,
        "a collapse is a final validation BPC above the bigram model's on the same split "
        "(a count: exact)",
    ),
)

#: When the LSTM 256 extension claims of issue 24 were registered (the ``lm256aux`` and
#: ``lm256t`` parts, and the ``tune256`` rule that picks ``lm256t``'s DNI setting): after
#: the ``lm256`` part (DNI+Aux-8 2.288 BPC, below BPTT-16's 2.324 and BPTT-8's 2.312 —
#: seen, so DNI+Aux-8 is judged nowhere here), before any run of these parts. The BPTT-T′
#: and DNI-4 runs they are judged against are the ``lm256`` part's (same settings, seeds
#: 0–2); only the runs of the named method are new.
LM256X = "2026-12-07T03:04:31+00:00"
_SPECS = (
    *_SPECS,
    ClaimSpec(
        "dni-rnn/lm256x-aux-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon' — here for DNI+Aux (the SG plus the auxiliary task of "
        "predicting the next window's SG)",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with truncated BPTT: DNI+Aux-4's score at or below "
        "BPTT-T′'s for some T′ > 4 of the lm256 grid (8, 16; each judged, the best margin "
        "the verdict)",
    ),
    ClaimSpec(
        "dni-rnn/lm256x-aux-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): DNI + Aux below BPTT at the same T",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with BPTT-4 (the lm256 part's runs)",
    ),
    ClaimSpec(
        "dni-rnn/lm256x-aux-vs-dni",
        "paper.md §5.1 (RNN case, unverified detail): DNI + Aux below DNI at the same T",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
    ),
    ClaimSpec(
        "dni-rnn/lm256x-aux-stable",
        "ours (issue 24: the harness default must not collapse)",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        "a collapse is a final validation BPC above the bigram model's on the same split "
        "(a count: exact)",
    ),
    ClaimSpec(
        "dni-rnn/lm256x-tuned-horizon",
        "paper.md §5.1 abstract (verified): for RNNs 'predicting future gradients extends "
        "the effective time horizon' — DNI-8 with the DNI setting re-chosen at LSTM 256 "
        "(the tune256 rule: no collapse over 2 seeds at 3M characters, then the lowest mean "
        "early-stopped BPC)",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with truncated BPTT: DNI-8's score at or below "
        "BPTT-16's (the lm256 part's runs)",
    ),
    ClaimSpec(
        "dni-rnn/lm256x-tuned-vs-bptt",
        "paper.md §5.1 (RNN case, unverified detail): the boundary SG stands in for the "
        "gradients from beyond the window — DNI-8 with the re-chosen setting below BPTT-8",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        _LM256_RES,
        contrast="is itself a comparison with BPTT-8 (the lm256 part's runs)",
    ),
    ClaimSpec(
        "dni-rnn/lm256x-tuned-stable",
        "ours (issue 24: the harness default must not collapse)",
        LM256X,
        "issue 24",
        _LM256_REGIME,
        "a collapse is a final validation BPC above the bigram model's on the same split "
        "(a count: exact)",
    ),
)

#: id -> :class:`ClaimSpec`
CLAIMS: dict[str, ClaimSpec] = {s.id: s for s in _SPECS}


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
