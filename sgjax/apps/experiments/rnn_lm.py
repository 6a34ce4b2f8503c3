"""Recurrent DNI on Tiny Shakespeare at budgets that decide (issue 24).

Two parts, each a list of independent runs appended to ``<out>/runs.jsonl`` as they
finish (so a killed study resumes where it stopped, and several workers — processes each pinned
to one core — share a part: each run is claimed once, in ``<out>/claimed/``):

* ``stability`` — DNI-8 (LSTM 128, 32 streams) for 3M characters on 5 seeds, once per
  stabilising variant of :func:`sgjax.recurrent.core.harness` (and BPTT-8 as the
  reference). A run *collapses* when its final validation BPC is above the bigram
  model's on the same split (:func:`bigram_bpc`). The variant with no collapse and the
  lowest mean BPC becomes the harness setting of the ``lm`` part (:data:`LM_DNI`).
* ``lm`` — BPTT-T for T ∈ {2, 3, 4, 5, 8, 16}, DNI-T for T ∈ {2, 3, 4, 5, 8}, DNI+Aux-T
  for T ∈ {2, 8}, 3 seeds, 10M characters each, validation BPC every 1M characters
  (cDNI is left to ``sgjax reproduce dni-rnn``: the grid is what 2 cores run in a session).
* ``lm20`` — the T = 8 column of ``lm`` (BPTT-8, DNI-8, BPTT-16, DNI+Aux-8) at 20M
  characters, where BPTT-8 can reach the claims' regime (the whole grid at 20M is ~4.3
  core-hours; this part ~1 core-hour).
* ``lm256`` — LSTM 256 for 7M characters with early stopping (BPTT-8, DNI-8, BPTT-16 seed
  by seed, then DNI+Aux-8, cDNI-8, BPTT-4 and DNI-4; 4.5–10 minutes of one core per run):
  LSTM 128 overfits the 1M-character training split before BPTT-8 reaches the regime
  (docs/results/dni-rnn-lm/gap/gap.md). Judged under its own claims (``dni-rnn/lm256-*``).
* ``tune256`` → ``lm256t``, and ``lm256aux`` — the LSTM 256 extension (claims
  ``dni-rnn/lm256x-*``): DNI's settings re-chosen at 256 units (DNI-8, 5 settings × 2 seeds
  at 3M characters, a rule fixed before the runs: :func:`tuned_setting`), DNI-8 with that
  setting on 3 seeds at 7M, and DNI+Aux-4 on 3 seeds at 7M; both judged against the
  ``lm256`` part's BPTT-T′ and DNI-4 runs (their ``baseline``), which must sit in the same
  ``runs.jsonl``.

The report judges the registered claims (``dni-rnn/*`` in
:mod:`sgjax.apps.experiments.registry`, registered before these runs; each part's ids in
:data:`PART_CLAIMS`, and a part without them is refused): the DNI paper's "predicting
future gradients extends the effective time horizon" as DNI-T at or below BPTT-T′ for the
next T′ > T (``lm256``: for some T′ > T, each judged, the best margin the verdict).

Usage::

    taskset -c 1 python -m sgjax.apps.experiments.rnn_lm run stability --out DIR
    taskset -c 0 python -m sgjax.apps.experiments.rnn_lm run lm --out DIR --methods bptt
    taskset -c 0 python -m sgjax.apps.experiments.rnn_lm run lm256 --out DIR
    python -m sgjax.apps.experiments.rnn_lm report --out DIR
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import rnn
from sgjax.recurrent import tasks

HIDDEN = 128
#: The settings every run shares (LSTM 128, Adam 1e-3 for model and SG, global-norm clip 1).
BASE = dict(
    hidden=HIDDEN,
    batch=32,
    chunk=240,
    eval_chars=None,
    lr=1e-3,
    sg_lr=1e-3,
    decay=0.5,
)
STABILITY = dict(BASE, chunk=120, chars=3_000_000, evals=6)
STABILITY_T = 8
STABILITY_SEEDS = (0, 1, 2, 3, 4)
#: variant name -> (method, harness options). γ (``decay``) 0.5 is the setting of the
#: earlier LM runs; the others change one thing each.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "BPTT-8 (reference)": ("bptt", {}),
    "γ = 0.5 (earlier LM setting)": ("dni", {}),
    "γ = 1 (exact bootstrapping)": ("dni", {"decay": 1.0}),
    "SG on h only": ("dni", {"sg_dims": HIDDEN}),
    "SG reads tanh(state)": ("dni", {"sg_squash": True}),
    "injected SG clipped to norm 1": ("dni", {"inject_clip": 1.0}),
    "SG warm-up over 2,000 updates": ("dni", {"warmup": 2000}),
    "target network τ = 0.01": ("dni", {"target_tau": 0.01}),
}
LM = dict(BASE, chars=10_000_000, evals=10)
LM_SEEDS = (0, 1, 2)
LM_TS = {"bptt": (2, 3, 4, 5, 8, 16), "dni": (2, 3, 4, 5, 8), "dni_aux": (2, 8)}
#: The ``lm20`` part: the T = 8 comparisons of the LM table at twice the budget (20M
#: characters), where BPTT-8 can reach the claims' regime (≤ 2.35 BPC; it ended at 2.390
#: after 10M). Judged under the same registered claims as ``lm``.
LM20 = dict(LM, chars=20_000_000)
LM20_TS = {"bptt": (8, 16), "dni": (8,), "dni_aux": (8,)}
#: The ``lm256`` part: LSTM 256 with early stopping, where truncated BPTT-8 reaches the
#: claims' regime (≤ 2.35 BPC) in a budget one core affords (LSTM 128 plateaus at
#: 2.36–2.39 by 20M characters: see the docs page). Each evaluation scores the two
#: interleaved halves of the validation text (:func:`sgjax.apps.experiments.rnn.
#: validation_halves`); a run's score (``bpc_best``) is the report half's BPC at the
#: evaluation where the selection half's is lowest.
LM256 = dict(BASE, hidden=256, chars=7_000_000, evals=14, early_stop=True)
LM256_TS = {"bptt": (4, 8, 16), "dni": (4, 8), "dni_aux": (8,), "cdni": (8,)}
#: The ``tune256`` part: the DNI settings were chosen at LSTM 128 (the stability part); at
#: 256 they leave DNI-8 0.47 BPC behind BPTT-8 (the SG's cosine with the true boundary
#: gradient stays within ±0.05). DNI-8 at LSTM 256 for 3M characters, 2 seeds per setting,
#: each changing one thing from the LM setting. The rule, fixed with the claims before its
#: runs (registry ``LM256X``): the setting with no collapse and the lowest mean early-stopped
#: BPC becomes the DNI setting of the ``lm256t`` part (:func:`tuned_setting`).
TUNE256 = dict(LM256, chars=3_000_000, evals=6)
TUNE256_T = 8
TUNE256_SEEDS = (0, 1)
TUNE256_VARIANTS: dict[str, dict[str, Any]] = {
    "LM setting (injected SG clipped to 1, γ = 0.5, SG lr 1e-3)": {},
    "SG lr 1e-4": {"sg_lr": 1e-4},
    "γ = 0.25": {"decay": 0.25},
    "SG on h only": {"sg_dims": 256},
    "injected SG clipped to 0.1": {"inject_clip": 0.1},
}
#: The ``lm256aux`` part: DNI+Aux-4 at LSTM 256 (the ``lm256`` settings), judged against the
#: ``lm256`` part's BPTT-T′ and DNI-4 runs (its ``baseline``) under claims registered before
#: its runs — DNI+Aux-8's lead over BPTT-16 in ``lm256`` was seen before any claim named it.
LM256AUX_TS: dict[str, tuple[int, ...]] = {"dni_aux": (4,)}
#: The ``lm256t`` part: DNI-8 at LSTM 256 with the setting ``tune256`` chose, 3 seeds,
#: judged against the ``lm256`` part's BPTT-8 and BPTT-16.
LM256T_TS: dict[str, tuple[int, ...]] = {"dni": (8,)}
#: The ``lm256noise`` part: the mechanism probe — DNI-8 with the setting ``tune256`` chose,
#: the injected SG replaced by a random direction of the same per-example norm (``core.
#: harness(..., inject_noise=seed)``), 3 seeds at 7M; judged against the ``lm256t`` part's
#: DNI-8 (does the SG's direction matter?) and the ``lm256`` part's BPTT-T′.
LM256NOISE_TS: dict[str, tuple[int, ...]] = {"dni": (8,)}
#: The ``stability01`` part: the stability part's DNI-8 (LSTM 128, 3M characters, seeds 0–4)
#: with the injected SG clipped to 0.1, the setting chosen at LSTM 256; judged against the
#: stability part's runs clipped to 1 (claims ``dni-rnn/clip01-128-*``).
STABILITY01: dict[str, Any] = {"inject_clip": 0.1}
STABILITY01_NAME = "injected SG clipped to 0.1"
STABILITY01_REF = "injected SG clipped to norm 1"
#: part -> (its settings, its grid)
LM_PARTS: dict[str, tuple[dict[str, Any], dict[str, tuple[int, ...]]]] = {
    "lm": (LM, LM_TS),
    "lm20": (LM20, LM20_TS),
    "lm256": (LM256, LM256_TS),
    "lm256aux": (LM256, LM256AUX_TS),
    "lm256t": (LM256, LM256T_TS),
    "lm256noise": (LM256, LM256NOISE_TS),
}
#: part -> the ids of the registered claims that judge it (:mod:`~sgjax.apps.experiments.
#: registry`), the run field they judge and their regime (at least ``chars`` characters per
#: run and BPTT-8's mean score at most ``bptt8``); ``horizon_any``: the horizon claim is
#: judged against every BPTT-T′ with T′ > T (the best margin is the verdict) rather than
#: the next T′ only. A part is run only with registered claims (the CLI refuses others).
_LM_IDS = {
    "horizon": "dni-rnn/lm-horizon",
    "dni_vs_bptt": "dni-rnn/lm-dni-vs-bptt",
    "aux_vs_dni": "dni-rnn/lm-aux-vs-dni",
    "stable": "dni-rnn/lm-default-stable",
}
#: the kinds of claim a part's entry names (each an id in the registry)
CLAIM_KINDS = (
    "horizon",
    "dni_vs_bptt",
    "aux_vs_dni",
    "cdni_vs_dni",
    "stable",
    "aux_horizon",
    "aux_vs_bptt",
    "sg_vs_noise",
    "vs_reference",
)
PART_CLAIMS: dict[str, dict[str, Any]] = {
    "lm": {**_LM_IDS, "score": "bpc", "chars": 10_000_000, "bptt8": 2.35, "horizon_any": False},
    "lm20": {**_LM_IDS, "score": "bpc", "chars": 10_000_000, "bptt8": 2.35, "horizon_any": False},
    "lm256": {
        "horizon": "dni-rnn/lm256-horizon",
        "dni_vs_bptt": "dni-rnn/lm256-dni-vs-bptt",
        "aux_vs_dni": "dni-rnn/lm256-aux-vs-dni",
        "cdni_vs_dni": "dni-rnn/lm256-cdni-vs-dni",
        "stable": "dni-rnn/lm256-default-stable",
        "score": "bpc_best",
        "chars": LM256["chars"],
        "bptt8": 2.35,
        "horizon_any": True,
    },
    # a part with a ``baseline`` reads the runs its own grid lacks (BPTT-T′, DNI-4) from
    # that part, whose settings are its own
    "lm256aux": {
        "aux_horizon": "dni-rnn/lm256x-aux-horizon",
        "aux_vs_bptt": "dni-rnn/lm256x-aux-vs-bptt",
        "aux_vs_dni": "dni-rnn/lm256x-aux-vs-dni",
        "stable": "dni-rnn/lm256x-aux-stable",
        "score": "bpc_best",
        "chars": LM256["chars"],
        "bptt8": 2.35,
        "horizon_any": True,
        "baseline": "lm256",
    },
    "lm256t": {
        "horizon": "dni-rnn/lm256x-tuned-horizon",
        "dni_vs_bptt": "dni-rnn/lm256x-tuned-vs-bptt",
        "stable": "dni-rnn/lm256x-tuned-stable",
        "score": "bpc_best",
        "chars": LM256["chars"],
        "bptt8": 2.35,
        "horizon_any": True,
        "baseline": "lm256",
    },
    # the noise-injected DNI-8: its "dni" runs are labelled as the noise control, judged
    # against the baseline's BPTT-T′ and (sg_vs_noise) the ``sg_part``'s DNI-8
    "lm256noise": {
        "horizon": "dni-rnn/lm256n-noise-horizon",
        "dni_vs_bptt": "dni-rnn/lm256n-noise-vs-bptt",
        "sg_vs_noise": "dni-rnn/lm256n-sg-vs-noise",
        "stable": "dni-rnn/lm256n-stable",
        "score": "bpc_best",
        "chars": LM256["chars"],
        "bptt8": 2.35,
        "horizon_any": True,
        "baseline": "lm256",
        "sg_part": "lm256t",
        "labels": {"dni": "noise"},
    },
    # not an LM grid: judged by rnn_lm_report.clip01_claims (against the stability part)
    "stability01": {
        "stable": "dni-rnn/clip01-128-stable",
        "vs_reference": "dni-rnn/clip01-128-vs-clip1",
    },
}


def part_claims(part: str) -> dict[str, Any]:
    """The registered claims of an LM part (a clear error for a part without them).

    Example:
        >>> part_claims("lm256")["horizon"]
        'dni-rnn/lm256-horizon'
    """
    from sgjax.apps.experiments.registry import CLAIMS

    if part not in PART_CLAIMS:
        raise ValueError(
            f"`part`: no LM claims are registered for {part!r} (registered: "
            f"{', '.join(PART_CLAIMS)}); register them in sgjax.apps.experiments.registry "
            "(and PART_CLAIMS) before the runs that judge them"
        )
    spec = PART_CLAIMS[part]
    ids = [v for k, v in spec.items() if k in CLAIM_KINDS]
    missing = [cid for cid in ids if cid not in CLAIMS]
    if missing:
        raise ValueError(
            f"`part` {part!r}: its claims {missing} are not registered in "
            "sgjax.apps.experiments.registry; register them before the runs that judge them"
        )
    return spec


#: The DNI harness options of the ``lm`` part, chosen by the stability study's rule (no
#: collapse, then the lowest mean BPC): the injected SG clipped to norm 1 per example —
#: 0 of 5 seeds collapsed, mean 2.583 BPC (BPTT-8: 2.577; γ = 0.5 alone: 1 of 5 collapsed;
#: SG on h only 0 of 5 at 2.647; the others collapsed or ended higher).
LM_DNI: dict[str, Any] = {"inject_clip": 1.0}
CLIP, AUX_WEIGHT = 1.0, 0.1


def _cfg(lm: dict) -> dict:
    return {"lm": lm, "clip": CLIP, "aux_weight": AUX_WEIGHT}


def tuned_setting(runs: dict[str, dict], bigram: float) -> tuple[str, dict[str, Any]]:
    """The ``tune256`` setting the registered rule picks from finished ``runs``: no
    collapse (final BPC at or below ``bigram``), then the lowest mean early-stopped BPC;
    its name and its harness options on top of :data:`LM_DNI`. Refuses while a run is
    missing (the rule is judged on the whole part).

    Example:
        >>> runs = {f"tune256/{n}/s{s}": {"bpc": 2.5, "bpc_best": 2.6 - 0.01 * i}
        ...         for i, n in enumerate(TUNE256_VARIANTS) for s in TUNE256_SEEDS}
        >>> tuned_setting(runs, bigram=3.58)
        ('injected SG clipped to 0.1', {'inject_clip': 0.1})
    """
    missing = [
        f"tune256/{n}/s{s}"
        for n in TUNE256_VARIANTS
        for s in TUNE256_SEEDS
        if f"tune256/{n}/s{s}" not in runs
    ]
    if missing:
        raise ValueError(
            f"the lm256t part needs the whole tune256 part first; {len(missing)} of its runs "
            f"are not finished ({missing[0]}, ...): run `rnn_lm run tune256` into the same --out"
        )
    scores = {}
    for name in TUNE256_VARIANTS:
        recs = [runs[f"tune256/{name}/s{s}"] for s in TUNE256_SEEDS]
        if all(r["bpc"] <= bigram for r in recs):
            scores[name] = float(np.mean([r["bpc_best"] for r in recs]))
    if not scores:
        raise ValueError("every tune256 setting collapsed on some seed: no setting to carry on")
    best = min(scores, key=scores.__getitem__)
    return best, {**LM_DNI, **TUNE256_VARIANTS[best]}


def jobs(part: str, tuned: dict[str, Any] | None = None) -> list[tuple[str, str, int, int, dict]]:
    """``(key, method, T, seed, cfg)`` of every run of ``part`` (``lm256t``: with the
    harness options ``tuned`` that :func:`tuned_setting` chose)."""
    out = []
    if part == "tune256":
        for name, opts in TUNE256_VARIANTS.items():
            for seed in TUNE256_SEEDS:
                cfg = _cfg({**TUNE256, **LM_DNI, **opts})
                out.append((f"tune256/{name}/s{seed}", "dni", TUNE256_T, seed, cfg))
    elif part == "lm256aux":
        for seed in LM_SEEDS:
            cfg = _cfg({**LM256, **LM_DNI})
            out.append((f"lm256aux/dni_aux/T4/s{seed}", "dni_aux", 4, seed, cfg))
    elif part == "lm256t":
        if tuned is None:
            raise ValueError("`tuned`: the lm256t part needs the setting tune256 chose")
        for seed in LM_SEEDS:
            cfg = _cfg({**LM256, **tuned})
            out.append((f"lm256t/dni/T8/s{seed}", "dni", 8, seed, cfg))
    elif part == "lm256noise":
        if tuned is None:
            raise ValueError("`tuned`: the lm256noise part needs the setting tune256 chose")
        for seed in LM_SEEDS:  # each run its own noise stream, seeded by its seed
            cfg = _cfg({**LM256, **tuned, "inject_noise": seed})
            out.append((f"lm256noise/dni/T8/s{seed}", "dni", 8, seed, cfg))
    elif part == "stability01":
        for seed in STABILITY_SEEDS:
            cfg = _cfg({**STABILITY, **STABILITY01})
            out.append((f"stability01/{STABILITY01_NAME}/s{seed}", "dni", STABILITY_T, seed, cfg))
    elif part == "stability":
        for name, (method, opts) in VARIANTS.items():
            for seed in STABILITY_SEEDS:
                cfg = _cfg({**STABILITY, **opts})
                out.append((f"stability/{name}/s{seed}", method, STABILITY_T, seed, cfg))
    elif part == "lm":
        # in the order the verdicts need them: BPTT-8 first (it decides the regime), then
        # each DNI-T with the BPTT-T′ it is judged against, T rising, DNI+Aux last
        order = [("bptt", 8)]
        for T in LM_TS["dni"]:
            later = [t for t in LM_TS["bptt"] if t > T]
            order += [("bptt", T), ("dni", T)] + ([("bptt", later[0])] if later else [])
        order += [(m, T) for m, Ts in LM_TS.items() if m not in ("bptt", "dni") for T in Ts]
        order = list(dict.fromkeys(order))  # (each once, first place kept)
        for method, T in order:
            opts = {} if method == "bptt" else LM_DNI
            for seed in LM_SEEDS:
                cfg = _cfg({**LM, **opts})
                out.append((f"lm/{method}/T{T}/s{seed}", method, T, seed, cfg))
    elif part == "lm256":
        # seed by seed BPTT-8, DNI-8, BPTT-16 (a partial part holds whole comparisons),
        # then DNI+Aux-8, cDNI-8, and the T = 4 column last
        groups: list[list[tuple[str, int]]] = [
            [("bptt", 8), ("dni", 8), ("bptt", 16)],
            [("dni_aux", 8)],
            [("cdni", 8)],
            [("bptt", 4), ("dni", 4)],
        ]
        for group in groups:
            for seed in LM_SEEDS:
                for method, T in group:
                    cfg = _cfg({**LM256, **({} if method == "bptt" else LM_DNI)})
                    out.append((f"lm256/{method}/T{T}/s{seed}", method, T, seed, cfg))
    elif part == "lm20":
        # seed by seed (a partial part holds whole comparisons), DNI+Aux last
        for seed in LM_SEEDS:
            for method, T in (("bptt", 8), ("dni", 8), ("bptt", 16)):
                cfg = _cfg({**LM20, **({} if method == "bptt" else LM_DNI)})
                out.append((f"lm20/{method}/T{T}/s{seed}", method, T, seed, cfg))
        for seed in LM_SEEDS:
            cfg = _cfg({**LM20, **LM_DNI})
            out.append((f"lm20/dni_aux/T8/s{seed}", "dni_aux", 8, seed, cfg))
    else:
        raise ValueError(f"`part` must be one of {', '.join(PARTS)}, got {part!r}")
    return out


#: every part :func:`run` takes, in the order they were added
PARTS = (
    "stability",
    "lm",
    "lm20",
    "lm256",
    "tune256",
    "lm256aux",
    "lm256t",
    "lm256noise",
    "stability01",
)
#: the parts that choose a setting by a rule rather than judge claims (no PART_CLAIMS)
UNCLAIMED_PARTS = ("stability", "tune256")
load = C.load_runs  #: the finished runs of ``out/runs.jsonl`` by key


def run(part: str, out: Path, *, data_dir: str | None = None, methods=None, seeds=None) -> None:
    """Run (resuming) every unfinished run of ``part``, appending each to runs.jsonl."""
    if part not in UNCLAIMED_PARTS:
        part_claims(part)  # refused before any long work
    out = Path(out)
    data = tasks.load_tinyshakespeare(data_dir)  # validated before any long work
    tuned = None
    if part in ("lm256t", "lm256noise"):
        name, tuned = tuned_setting(load(out), bigram_bpc(data)[1])
        print(f"{part}: the tune256 rule chose {name!r}: {tuned}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        j
        for j in jobs(part, tuned)
        if (methods is None or j[1] in methods) and (seeds is None or j[3] in seeds)
    ]
    (out / "claimed").mkdir(exist_ok=True)
    for key, method, T, seed, cfg in todo:
        done = load(out)  # (another worker may have finished it meanwhile)
        if key in done and done[key]["settings"] == cfg["lm"]:
            continue
        # workers on other cores share the list: each run is claimed once (a killed
        # worker's claims are released by `release` before resuming)
        mark = out / "claimed" / (key.replace("/", "_").replace(" ", "_") + ".claim")
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        c0, t0 = time.process_time(), time.perf_counter()
        res = rnn.train_lm(data, method, T, seed, cfg)
        rec = {
            "key": key,
            "method": method,
            "T": T,
            "seed": seed,
            "settings": cfg["lm"],
            "cpu_seconds": time.process_time() - c0,
            "wall_seconds": time.perf_counter() - t0,
            "run_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in res.items() if k != "seconds"},
        }
        with (out / "runs.jsonl").open("a") as f:
            f.write(C.json_line(rec) + "\n")
        print(f"{key}: {res['bpc']:.3f} BPC ({rec['cpu_seconds']:.0f} s CPU)", flush=True)


def release(out: Path) -> list[str]:
    """Remove the claims of runs that did not finish (after a killed worker); returns them."""
    out = Path(out)
    done = {k.replace("/", "_").replace(" ", "_") + ".claim" for k in load(out)}
    freed = []
    for mark in sorted((out / "claimed").glob("*.claim")):
        if mark.name not in done:
            mark.unlink()
            freed.append(mark.stem)
    return freed


def bigram_bpc(data: tasks.CharData, alpha: float = 1.0) -> tuple[float, float]:
    """Validation BPC of the unigram and the add-``alpha`` bigram model fitted on the
    training split: the levels a model that learns nothing beyond them reaches.

    Example:
        >>> d = tasks.CharData(np.array([0, 1] * 50), np.array([0, 1] * 5), "ab", Path("."))
        >>> [round(v, 3) for v in bigram_bpc(d, alpha=0.01)]
        [1.0, 0.0]
    """
    V = len(data.vocab)
    uni = np.bincount(data.train, minlength=V) + alpha
    uni = uni / uni.sum()
    pairs = np.zeros((V, V))
    np.add.at(pairs, (data.train[:-1], data.train[1:]), 1.0)
    pairs += alpha
    pairs /= pairs.sum(axis=1, keepdims=True)
    v = data.valid
    return (
        float(-np.mean(np.log2(uni[v[1:]]))),
        float(-np.mean(np.log2(pairs[v[:-1], v[1:]]))),
    )


def report(out: Path, *, data_dir: str | None = None) -> dict:
    """Write ``report.md`` and ``results.json`` from the runs finished so far."""
    import sys

    from sgjax.apps.experiments import rnn_lm_report

    return rnn_lm_report.write(
        Path(out), tasks.load_tinyshakespeare(data_dir), sys.modules[__name__]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sgjax.apps.experiments.rnn_lm")
    sub = p.add_subparsers(dest="cmd", required=True)
    rel = sub.add_parser("release", help="free the claims of unfinished runs (no worker may run)")
    rel.add_argument("--out", required=True, type=Path)
    r = sub.add_parser("run", help="run (resume) a part")
    r.add_argument("part", choices=PARTS)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--data-dir", default=None)
    r.add_argument("--methods", default=None, help="comma-separated: bptt,dni,dni_aux,cdni")
    r.add_argument("--seeds", default=None, help="comma-separated seeds")
    rep = sub.add_parser("report", help="write report.md and results.json from runs.jsonl")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    if a.cmd == "release":
        print("\n".join(release(a.out)) or "nothing to release")
    elif a.cmd == "run":
        methods = None if a.methods is None else tuple(a.methods.split(","))
        known = sorted({m for _, grid in LM_PARTS.values() for m in grid})
        for m in methods or ():
            if m not in known:
                p.error(f"--methods: {m!r} is not one of {known}")
        if a.part not in UNCLAIMED_PARTS:
            try:
                part_claims(a.part)
            except ValueError as e:
                p.error(str(e))
        seeds = None if a.seeds is None else tuple(int(s) for s in a.seeds.split(","))
        run(a.part, a.out, data_dir=a.data_dir, methods=methods, seeds=seeds)
    else:
        report(a.out, data_dir=a.data_dir)


if __name__ == "__main__":
    main()
