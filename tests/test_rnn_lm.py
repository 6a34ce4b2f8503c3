"""The deciding LM study (``sgjax.apps.experiments.rnn_lm``): job list, claims of runs,
the verdicts computed from runs, and the bigram level — on hand-made records, no training."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sgjax.apps.experiments import rnn_lm, rnn_lm_report
from sgjax.recurrent import tasks

STUDY = sys.modules["sgjax.apps.experiments.rnn_lm"]


def _runs(values: dict[tuple[str, int], list[float]], chars: int = 10_000_000) -> dict:
    runs = {}
    for (method, T), vals in values.items():
        for seed, v in zip(rnn_lm.LM_SEEDS, vals):
            runs[f"lm/{method}/T{T}/s{seed}"] = {
                "key": f"lm/{method}/T{T}/s{seed}",
                "method": method,
                "T": T,
                "seed": seed,
                "settings": {**rnn_lm.LM, "chars": chars},
                "bpc": v,
                "cpu_seconds": 1.0,
                "wall_seconds": 1.0,
                "run_date": "2026-12-06T15:00:00+00:00",
                "curve": [[0, 4.2], [chars, v]],
            }
    return runs


def _full(dni2=(2.40, 2.41, 2.42), bptt3=(2.45, 2.46, 2.47), bptt8=(2.30, 2.31, 2.29)):
    vals = {("bptt", T): [2.5, 2.5, 2.5] for T in rnn_lm.LM_TS["bptt"]}
    vals.update({("dni", T): [2.6, 2.6, 2.6] for T in rnn_lm.LM_TS["dni"]})
    vals.update({("dni_aux", T): [2.6, 2.6, 2.6] for T in rnn_lm.LM_TS["dni_aux"]})
    vals[("dni", 2)], vals[("bptt", 3)], vals[("bptt", 8)] = list(dni2), list(bptt3), list(bptt8)
    return vals


def test_the_horizon_verdict_is_the_difference_of_seed_means_against_its_resolution():
    claims = rnn_lm_report.lm_claims(_runs(_full()), 3.58, STUDY)
    c = claims["DNI-2 at or below BPTT-3 (horizon beyond T)"]
    # by hand: margin = mean(BPTT-3) − mean(DNI-2) = 0.05; resolution t(2)·√(2·0.01²/3)
    assert c["margin"] == pytest.approx(0.05)
    assert c["resolution"] == pytest.approx(2.920 * math.sqrt(2 * 0.01**2 / 3))
    assert c["verdict"] == "held" and c["status"] == "confirmatory"
    # DNI-3 (2.6) against BPTT-4 (2.5): worse by 0.1 with no spread — contradicted
    assert claims["DNI-3 at or below BPTT-4 (horizon beyond T)"]["verdict"] == "contradicted"


def test_outside_the_regime_a_failure_is_untested():
    # BPTT-8 at 2.45 BPC: the budget does not decide
    claims = rnn_lm_report.lm_claims(_runs(_full(bptt8=(2.45, 2.45, 2.45))), 3.58, STUDY)
    assert claims["DNI-3 at or below BPTT-4 (horizon beyond T)"]["verdict"] == "untested"
    assert claims["DNI-2 at or below BPTT-3 (horizon beyond T)"]["verdict"] == "consistent"
    # ... and so is a short run, whatever its numbers
    short = rnn_lm_report.lm_claims(_runs(_full(), chars=3_000_000), 3.58, STUDY)
    assert short["DNI-3 at or below BPTT-4 (horizon beyond T)"]["verdict"] == "untested"


def test_collapses_are_counted_against_the_bigram_level():
    vals = _full()
    vals[("dni", 4)] = [2.4, 3.7, 2.4]  # one run above the bigram level 3.58
    name = "no DNI run of the LM table collapses"
    c = rnn_lm_report.lm_claims(_runs(vals), 3.58, STUDY)[name]
    assert c["verdict"] == "contradicted" and c["value"].startswith("1 of")
    ok = rnn_lm_report.lm_claims(_runs(_full()), 3.58, STUDY)[name]
    assert ok["verdict"] == "held"


def test_missing_runs_leave_a_claim_untested_not_filled_in():
    runs = _runs(_full())
    del runs["lm/dni/T2/s1"]
    c = rnn_lm_report.lm_claims(runs, 3.58, STUDY)
    assert c["DNI-2 at or below BPTT-3 (horizon beyond T)"]["verdict"] == "untested"
    assert c["no DNI run of the LM table collapses"]["verdict"] == "untested"


def test_runs_dated_before_the_registration_are_exploratory():
    runs = _runs(_full())
    for r in runs.values():
        r["run_date"] = "2026-12-01T00:00:00+00:00"
    c = rnn_lm_report.lm_claims(runs, 3.58, STUDY)
    assert c["no DNI run of the LM table collapses"]["verdict"] == "exploratory"
    # a run that finished 10 s after the registration but started before it: its data
    # existed before the claim
    from sgjax.apps.experiments.registry import RNN

    runs = _runs(_full())
    first = next(iter(runs.values()))
    first["run_date"] = RNN.replace("47:50", "48:00")
    first["wall_seconds"] = 100.0
    c = rnn_lm_report.lm_claims(runs, 3.58, STUDY)
    assert c["no DNI run of the LM table collapses"]["verdict"] == "exploratory"


def test_bigram_level_by_hand():
    # train "abab…b", valid "abba": unigram ½ each; bigram a→b certain, b→a certain (α→0)
    d = tasks.CharData(np.array([0, 1] * 20), np.array([0, 1, 1, 0]), "ab", Path("."))
    uni, bi = rnn_lm.bigram_bpc(d, alpha=1e-9)
    assert uni == pytest.approx(1.0)
    # pairs ab, bb, ba: ab and ba cost ~0 bits, bb costs −log2(α / (n_b + 2α)) bits
    n_b = 20
    want = -math.log2(1e-9 / (n_b - 1 + 2e-9)) / 3
    assert bi == pytest.approx(want, rel=1e-6)


def test_each_run_is_claimed_once_and_released_after_a_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(rnn_lm.tasks, "load_tinyshakespeare", lambda d=None: None)
    ran = []

    def fake_train(data, method, T, seed, cfg):
        ran.append((method, T, seed))
        return {"bpc": 2.0, "curve": [], "cos": [], "train_bpc_last": 2.0, "seconds": 0.0}

    monkeypatch.setattr(rnn_lm.rnn, "train_lm", fake_train)
    (tmp_path / "claimed").mkdir()
    (tmp_path / "claimed" / "lm_bptt_T2_s0.claim").touch()  # another worker holds it
    rnn_lm.run("lm", tmp_path, methods=("bptt",), seeds=(0,))
    assert ("bptt", 2, 0) not in ran and ("bptt", 3, 0) in ran
    # the holder died: release frees its claim (finished runs keep theirs), a rerun does it
    assert rnn_lm.release(tmp_path) == ["lm_bptt_T2_s0"]
    rnn_lm.run("lm", tmp_path, methods=("bptt",), seeds=(0,))
    assert ran.count(("bptt", 2, 0)) == 1 and ran.count(("bptt", 3, 0)) == 1
    keys = [json.loads(x)["key"] for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(rnn_lm.LM_TS["bptt"])


def test_unknown_part_and_method_are_refused():
    with pytest.raises(
        ValueError, match=r"`part` must be 'stability', 'lm', 'lm20' or 'lm256', got 'x'"
    ):
        rnn_lm.jobs("x")
    with pytest.raises(SystemExit):
        rnn_lm.main(["run", "lm", "--out", "/nonexistent", "--methods", "dnii"])


def test_the_advice_quotes_the_committed_stability_study():
    """README's and the harness warnings' collapse counts are those of the study's results."""
    from sgjax.recurrent import core

    root = Path(__file__).resolve().parents[1]
    st = json.loads((root / "docs/results/dni-rnn-lm/results.json").read_text())["stability"]

    def n(name: str) -> int:
        (key,) = [k for k in st if k.startswith(name)]
        assert st[key]["runs"] == 5, key
        return st[key]["collapses"]

    g1, g05, clip = n("γ = 1"), n("γ = 0.5"), n("injected SG clipped")
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"on {g1} of 5 seeds with γ = 1, {g05} of 5\nwith γ = 0.5 alone, {clip} of 5" in readme
    assert f"3M characters: {g1} of 5 seeds collapsed" in core.GAMMA_ADVICE
    assert f"({clip} of 5 collapsed)" in core.GAMMA_ADVICE
    assert f"γ = 0.5 alone {g05} of 5 seeds" in core.CLIP_ADVICE


def test_the_20m_part_is_judged_on_its_own_runs_and_regime():
    keys = [k for k, *_ in rnn_lm.jobs("lm20")]
    assert keys[:3] == ["lm20/bptt/T8/s0", "lm20/dni/T8/s0", "lm20/bptt/T16/s0"]
    assert all(c["lm"]["chars"] == 20_000_000 for *_, c in rnn_lm.jobs("lm20"))
    assert keys[-1] == "lm20/dni_aux/T8/s2" and len(keys) == len(set(keys)) == 12
    # the 10M part outside the regime (BPTT-8 at 2.40) and the 20M part inside it
    ten = _runs({("bptt", 8): [2.40, 2.40, 2.40], ("dni", 8): [2.30, 2.31, 2.32]})
    vals = {("bptt", 8): [2.30, 2.31, 2.29], ("dni", 8): [2.20, 2.21, 2.19]}
    vals[("bptt", 16)] = [2.35, 2.36, 2.34]
    twenty = {
        k.replace("lm/", "lm20/", 1): {**r, "key": k.replace("lm/", "lm20/", 1)}
        for k, r in _runs(vals, chars=20_000_000).items()
    }
    runs = {**ten, **twenty}
    c10 = rnn_lm_report.lm_claims(runs, 3.58, STUDY)
    c20 = rnn_lm_report.lm_claims(runs, 3.58, STUDY, "lm20")
    assert c10["DNI-8 below BPTT-8"]["verdict"] != "held"  # outside its regime
    assert c20["DNI-8 below BPTT-8"]["verdict"] == "held"
    assert c20["DNI-8 at or below BPTT-16 (horizon beyond T)"]["verdict"] == "held"
    # DNI+Aux-8 has not run at 20M: untested, not filled in from the 10M part
    assert c20["DNI+Aux-8 below DNI-8"]["verdict"] == "untested"
