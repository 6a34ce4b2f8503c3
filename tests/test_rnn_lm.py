"""The deciding LM study (``sgjax.apps.experiments.rnn_lm``): job list, claims of runs,
the verdicts computed from runs, and the bigram level — on hand-made records, no training."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sgjax.apps.experiments import rnn, rnn_lm, rnn_lm_report
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
    from sgjax.apps.experiments.registry_rnn import RNN

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
        ValueError, match=r"`part` must be one of stability, lm, lm20, lm256, .*, got 'x'"
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
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())  # (reflowed)
    assert f"on {g1} of 5 seeds with γ = 1, {g05} of 5 with γ = 0.5 alone, {clip} of 5" in readme
    res = json.loads((root / "docs/results/dni-rnn-lm/results.json").read_text())
    c01 = res["stability01"]["summary"]["injected SG clipped to 0.1"]
    assert c01["collapses"] == clip and c01["runs"] == 5  # "0 of 5 with the clip (at 1 or 0.1"
    assert f"3M characters: {g1} of 5 seeds collapsed" in core.GAMMA_ADVICE
    assert f"({clip} of 5 collapsed)" in core.GAMMA_ADVICE
    assert f"γ = 0.5 alone {g05} of 5 seeds" in core.CLIP_ADVICE
    # the LSTM 256 advice: the tuned setting and its scores (lm256t and lm256's runs)

    def mean(prefix: str) -> str:
        vals = [r["bpc_best"] for k, r in res["runs"].items() if k.startswith(prefix)]
        assert len(vals) == 3, prefix
        return f"{np.mean(vals):.3f}"

    assert res["tune256_chosen"] == "injected SG clipped to 0.1"
    assert rnn_lm.TUNE256_VARIANTS[res["tune256_chosen"]] == {"inject_clip": 0.1}
    # and the LSTM 128 advice: the clip at 0.1 against the clip at 1 (the stability01 part)
    ref = st["injected SG clipped to norm 1"]
    want = (
        f"At LSTM 128 the clip at 0.1 ends at {c01['mean']:.3f} BPC (at 1: {ref['mean']:.3f}); "
        f"at 256 it took DNI-8 from {mean('lm256/dni/T8/')} to {mean('lm256t/dni/T8/')} BPC, "
        f"below BPTT-16's {mean('lm256/bptt/T16/')}"
    )
    assert want in readme, want
    assert f"0.1: {c01['mean']:.3f} at LSTM 128, {mean('lm256t/dni/T8/')} at LSTM 256" in (
        core.CLIP_ADVICE
    )


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


# ------------------------------------------------------------------ the lm256 part


def _runs256(values: dict[tuple[str, int], list[float]], chars: int = 7_000_000) -> dict:
    """Runs of the lm256 part whose early-stopped score is ``values`` and whose final BPC
    is 0.5 higher (so a verdict read from the wrong field shows)."""
    runs = {}
    for k, r in _runs(values, chars).items():
        key = k.replace("lm/", "lm256/", 1)
        runs[key] = {
            **r,
            "key": key,
            "settings": {**rnn_lm.LM256, "chars": chars},
            "bpc_best": r["bpc"],
            "bpc": r["bpc"] + 0.5,
            "run_date": "2026-12-06T23:00:00+00:00",
        }
    return runs


def _vals256():
    vals = {("bptt", 4): [2.40, 2.41, 2.42], ("bptt", 8): [2.30, 2.31, 2.32]}
    vals[("bptt", 16)] = [2.40, 2.41, 2.42]  # worse than BPTT-8 (as LSTM 128's was)
    vals[("dni", 4)] = [2.35, 2.36, 2.37]  # above BPTT-8 by 0.05, below BPTT-16 by 0.05
    vals[("dni", 8)] = [2.25, 2.26, 2.27]
    vals[("dni_aux", 8)] = [2.20, 2.21, 2.22]
    vals[("cdni", 8)] = [2.30, 2.31, 2.32]
    return vals


def test_the_256_part_is_judged_on_its_early_stopped_score_and_its_own_claims():
    c = rnn_lm_report.lm_claims(_runs256(_vals256()), 3.58, STUDY, "lm256")
    kinds = rnn_lm.PART_CLAIMS["lm256"]
    assert {r["id"] for r in c.values()} == {kinds[k] for k in rnn_lm.CLAIM_KINDS if k in kinds}
    # "some T′ > T": DNI-4 is above BPTT-8 but below BPTT-16 — held through BPTT-16
    h4 = c["DNI-4 at or below BPTT-T′ for some T′ > 4 (horizon beyond T)"]
    assert h4["verdict"] == "held" and "BPTT-16" in h4["value"]
    assert h4["margin"] == pytest.approx(0.05) and len(h4["others"]) == 1
    assert "BPTT-8" in h4["others"][0]
    assert c["DNI-8 at or below BPTT-T′ for some T′ > 8 (horizon beyond T)"]["verdict"] == "held"
    assert c["DNI-4 below BPTT-4"]["margin"] == pytest.approx(0.05)
    assert c["DNI-8 below BPTT-8"]["margin"] == pytest.approx(0.05)
    assert c["DNI+Aux-8 below DNI-8"]["verdict"] == "held"
    assert c["cDNI-8 below DNI-8"]["verdict"] == "contradicted"
    # the collapse count reads the final BPC (+0.5 here): still below the bigram level
    assert c["no DNI run of the LM table collapses"]["verdict"] == "held"
    assert c["no DNI run of the LM table collapses"]["status"] == "confirmatory"
    # the regime is BPTT-8's early-stopped score (its final BPC, 2.81 here, is outside)
    vals = _vals256()
    vals[("bptt", 8)] = [2.40, 2.41, 2.42]
    out = rnn_lm_report.lm_claims(_runs256(vals), 3.58, STUDY, "lm256")
    assert out["cDNI-8 below DNI-8"]["verdict"] == "untested"
    assert "≤ 2.35 at ≥ 7,000,000" in out["cDNI-8 below DNI-8"]["regime_note"]
    short = rnn_lm_report.lm_claims(_runs256(_vals256(), 3_000_000), 3.58, STUDY, "lm256")
    assert short["cDNI-8 below DNI-8"]["verdict"] == "untested"


def test_a_part_without_registered_claims_is_refused_before_any_work(tmp_path, monkeypatch):
    def no_data(d=None):
        raise AssertionError("loaded data before refusing the part")

    monkeypatch.setattr(rnn_lm.tasks, "load_tinyshakespeare", no_data)
    bad = {**rnn_lm.PART_CLAIMS["lm256"], "horizon": "dni-rnn/lm256-made-up"}
    monkeypatch.setitem(rnn_lm.PART_CLAIMS, "lm256", bad)
    with pytest.raises(ValueError, match=r"'dni-rnn/lm256-made-up'\] are not registered"):
        rnn_lm.run("lm256", tmp_path)
    with pytest.raises(SystemExit):
        rnn_lm.main(["run", "lm256", "--out", str(tmp_path)])
    monkeypatch.delitem(rnn_lm.PART_CLAIMS, "lm256")
    with pytest.raises(ValueError, match="no LM claims are registered for 'lm256'"):
        rnn_lm.run("lm256", tmp_path)
    assert not (tmp_path / "runs.jsonl").exists()


def test_the_256_part_runs_whole_comparisons_first():
    jobs = rnn_lm.jobs("lm256")
    keys = [k for k, *_ in jobs]
    assert keys[:3] == ["lm256/bptt/T8/s0", "lm256/dni/T8/s0", "lm256/bptt/T16/s0"]
    assert keys[9:12] == [f"lm256/dni_aux/T8/s{s}" for s in rnn_lm.LM_SEEDS]
    assert len(keys) == len(set(keys)) == 21
    for _, method, _, _, cfg in jobs:
        assert cfg["lm"]["hidden"] == 256 and cfg["lm"]["early_stop"]
        assert ("inject_clip" in cfg["lm"]) == (method != "bptt")


def test_validation_halves_are_alternate_blocks_one_per_stream():
    ids = np.arange(1000)
    sel, rep = rnn.validation_halves(ids, 32)
    n = 1000 // 32
    blocks = [ids[k * n : (k + 1) * n] for k in range(32)]  # the 32 streams' blocks
    assert sel.tolist() == np.concatenate(blocks[0::2]).tolist()
    assert rep.tolist() == np.concatenate(blocks[1::2]).tolist()
    # evaluated in 16 streams each, every stream is exactly one block
    assert tasks.streams(rep, 16)[:, 3].tolist() == blocks[7].tolist()
    with pytest.raises(ValueError, match="`batch` must be an even int"):
        rnn.validation_halves(ids, 3)


def test_early_stopping_scores_the_report_half_where_the_selection_half_is_lowest(
    monkeypatch,
):
    """train_lm on a small text the test makes; the evaluations are scripted so that the
    selection half's minimum, the report half's minimum and the last evaluation differ."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 3000)
    data = tasks.CharData(ids[:2600], ids[2600:], "abcde", Path("."))
    sel_ids, rep_ids = rnn.validation_halves(data.valid, 4)
    # per evaluation (the untrained model first): selection, report
    sel = [0.1, 3.0, 2.0, 2.5, 2.0]  # lowest after training: the 2nd (the first of equals)
    rep = [0.1, 3.1, 2.6, 2.2, 2.4]
    calls = {"sel": 0, "rep": 0}

    def fake(model, params, ids, batch, chunk):
        if len(ids) == len(data.valid):
            return 9.0  # the whole validation text
        half = "sel" if np.array_equal(ids, sel_ids) else "rep"
        assert half == "sel" or np.array_equal(ids, rep_ids)
        assert batch == 2  # half the streams
        calls[half] += 1
        return (sel if half == "sel" else rep)[calls[half] - 1]

    monkeypatch.setattr(rnn, "_evaluate_bpc", fake)
    lm = dict(rnn_lm.LM256, hidden=4, batch=4, chunk=8, chars=4 * 8 * 4, evals=4, cell="vanilla")
    r = rnn.train_lm(data, "bptt", 4, 0, {"lm": lm, "clip": 1.0, "aux_weight": 0.1})
    assert calls == {"sel": 5, "rep": 5}
    assert r["bpc_best"] == 2.6 and r["best_chars"] == r["halves_curve"][2][0] == 4 * 8 * 2
    assert r["bpc"] == 9.0
    # without early_stop: no halves evaluated, no score
    plain = rnn.train_lm(
        data, "bptt", 4, 0, {"lm": {**lm, "early_stop": False}, "clip": 1.0, "aux_weight": 0.1}
    )
    assert "bpc_best" not in plain and calls == {"sel": 5, "rep": 5}


# ------------------------------------------------------------------ the LSTM 256 extension


def _part_runs(part: str, values: dict, date: str = "2026-12-07T05:00:00+00:00") -> dict:
    """Runs of ``part`` (scored like lm256: final BPC 0.5 above the score), dated ``date``."""
    runs = {}
    for k, r in _runs256(values).items():
        key = k.replace("lm256/", f"{part}/", 1)
        runs[key] = {**r, "key": key, "run_date": date}
    return runs


def test_the_tuning_rule_skips_a_collapsed_setting_and_refuses_an_unfinished_part():
    names = list(rnn_lm.TUNE256_VARIANTS)
    runs = {}
    for i, name in enumerate(names):
        for s in rnn_lm.TUNE256_SEEDS:
            runs[f"tune256/{name}/s{s}"] = {"bpc": 2.6, "bpc_best": 2.5 - 0.01 * i}
    # the best score collapsed on one seed (its final BPC above the bigram level)
    runs[f"tune256/{names[-1]}/s1"]["bpc"] = 3.9
    name, opts = rnn_lm.tuned_setting(runs, bigram=3.58)
    assert name == names[-2]
    assert opts == {**rnn_lm.LM_DNI, **rnn_lm.TUNE256_VARIANTS[names[-2]]}
    del runs[f"tune256/{names[0]}/s0"]
    with pytest.raises(ValueError, match=r"1 of its runs are not finished"):
        rnn_lm.tuned_setting(runs, bigram=3.58)
    with pytest.raises(ValueError, match="`tuned`"):
        rnn_lm.jobs("lm256t")
    jobs = rnn_lm.jobs("lm256t", {"inject_clip": 1.0, "sg_lr": 1e-4})
    assert [j[0] for j in jobs] == [f"lm256t/dni/T8/s{s}" for s in rnn_lm.LM_SEEDS]
    assert all(j[4]["lm"]["sg_lr"] == 1e-4 and j[4]["lm"]["hidden"] == 256 for j in jobs)


def test_the_tuned_part_is_refused_before_its_tuning_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(rnn_lm.tasks, "load_tinyshakespeare", lambda d=None: _small_text())
    monkeypatch.setattr(rnn_lm.rnn, "train_lm", lambda *a: pytest.fail("trained"))
    with pytest.raises(ValueError, match="needs the whole tune256 part first"):
        rnn_lm.run("lm256t", tmp_path)


def _small_text():
    ids = np.arange(400) % 5
    return tasks.CharData(ids[:360], ids[360:], "abcde", Path("."))


def test_an_extension_part_is_judged_against_the_baseline_parts_runs():
    base = _runs256(_vals256())  # lm256: BPTT-4 2.41, BPTT-8 2.31, BPTT-16 2.41, DNI-4 2.36
    aux = _part_runs("lm256aux", {("dni_aux", 4): [2.33, 2.34, 2.35]})
    c = rnn_lm_report.lm_claims({**base, **aux}, 3.58, STUDY, "lm256aux")
    spec = rnn_lm.PART_CLAIMS["lm256aux"]
    assert {r["id"] for r in c.values()} == {spec[k] for k in rnn_lm.CLAIM_KINDS if k in spec}
    h = c["DNI+Aux-4 at or below BPTT-T′ for some T′ > 4 (horizon beyond T)"]
    assert h["verdict"] == "held" and "BPTT-16" in h["value"]  # 2.34 vs 2.41; vs 2.31: no
    assert h["margin"] == pytest.approx(0.07) and "BPTT-8" in h["others"][0]
    assert c["DNI+Aux-4 below BPTT-4"]["margin"] == pytest.approx(0.07)
    assert c["DNI+Aux-4 below DNI-4"]["margin"] == pytest.approx(0.02)
    assert all(r["status"] == "confirmatory" for r in c.values())
    # the regime is the baseline's BPTT-8; without the baseline nothing is tested
    alone = rnn_lm_report.lm_claims(aux, 3.58, STUDY, "lm256aux")
    assert {r["verdict"] for n, r in alone.items() if "collapses" not in n} == {"untested"}
    assert alone["no DNI run of the LM table collapses"]["verdict"] == "consistent"
    # runs older than the claims' registration are exploratory, never evidence
    old = _part_runs("lm256aux", {("dni_aux", 4): [2.33, 2.34, 2.35]}, "2026-12-06T00:00:00+00:00")
    early = rnn_lm_report.lm_claims({**base, **old}, 3.58, STUDY, "lm256aux")
    assert {r["verdict"] for r in early.values()} == {"exploratory"}
    # the tuned part: DNI-8 against lm256's BPTT-8 (2.31) and BPTT-16 (2.41)
    t = _part_runs("lm256t", {("dni", 8): [2.35, 2.36, 2.37]})
    ct = rnn_lm_report.lm_claims({**base, **t}, 3.58, STUDY, "lm256t")
    assert ct["DNI-8 below BPTT-8"]["margin"] == pytest.approx(-0.05)
    assert ct["DNI-8 at or below BPTT-T′ for some T′ > 8 (horizon beyond T)"][
        "margin"
    ] == pytest.approx(0.05)


def test_the_mechanism_line_reads_the_last_evaluations_cosines():
    """Per run: the mean over boundaries of the last evaluation's cosines (planted: the
    first evaluation's → 0.500 instead of 0.050), the training BPC beside the baseline's."""
    base = _runs256(_vals256())
    for s in rnn_lm.LM_SEEDS:
        base[f"lm256/bptt/T8/s{s}"]["train_bpc_last"] = 1.95
    t = _part_runs("lm256t", {("dni", 8): [2.35, 2.36, 2.37]})
    for r in t.values():
        r["cos"] = [{"chars": 1, "cos": [0.5, 0.5]}, {"chars": 2, "cos": [0.0, 0.1]}]
        r["train_bpc_last"] = 1.9
    line = rnn_lm_report.mechanism_line({**base, **t}, STUDY, "lm256t")
    assert "per run: 0.050, 0.050, 0.050 " in line
    assert "training BPC at the end: 1.900, 1.900, 1.900 (BPTT-8: 1.950, 1.950, 1.950)" in line


def test_the_noise_probe_is_judged_against_the_sgs_runs_and_bptt():
    """``lm256noise``: its DNI-8 runs (the noise control, labelled "noise") against lm256's
    BPTT-8/16 and against lm256t's DNI-8 (the SG injected). Planted: the SG side read from
    the noise part itself → margin 0 instead of 0.04 → red. Its jobs carry the tuned
    setting and each run's own noise seed."""
    base = _runs256(_vals256())  # BPTT-8 2.31, BPTT-16 2.41
    t = _part_runs("lm256t", {("dni", 8): [2.27, 2.28, 2.29]}, "2026-12-07T06:00:00+00:00")
    n = _part_runs("lm256noise", {("dni", 8): [2.31, 2.32, 2.33]}, "2026-12-07T06:00:00+00:00")
    c = rnn_lm_report.lm_claims({**base, **t, **n}, 3.58, STUDY, "lm256noise")
    spec = rnn_lm.PART_CLAIMS["lm256noise"]
    assert {r["id"] for r in c.values()} == {spec[k] for k in rnn_lm.CLAIM_KINDS if k in spec}
    sg = c["DNI-8 (the SG injected) below DNI-8 with noise of its norm"]
    assert sg["margin"] == pytest.approx(0.04) and "noise-8 2.320" in sg["value"]
    assert c["noise-8 below BPTT-8"]["margin"] == pytest.approx(-0.01)
    h = c["noise-8 at or below BPTT-T′ for some T′ > 8 (horizon beyond T)"]
    assert h["margin"] == pytest.approx(0.09) and h["verdict"] == "held"
    assert all(r["status"] == "confirmatory" for r in c.values())
    jobs = rnn_lm.jobs("lm256noise", {"inject_clip": 0.1})
    assert [j[0] for j in jobs] == [f"lm256noise/dni/T8/s{s}" for s in rnn_lm.LM_SEEDS]
    assert [j[4]["lm"]["inject_noise"] for j in jobs] == list(rnn_lm.LM_SEEDS)
    assert all(j[4]["lm"]["inject_clip"] == 0.1 for j in jobs)
    with pytest.raises(ValueError, match="needs the setting tune256 chose"):
        rnn_lm.jobs("lm256noise")


def test_the_clip01_part_at_128_is_judged_against_the_clip1_row():
    """``stability01``: 5 seeds of DNI-8 at LSTM 128 clipped to 0.1 against the stability
    part's runs clipped to 1 (same seeds); a collapse counted against the bigram level.
    Planted: the reference read from the part itself → margin 0 → red."""
    runs = {}
    for s, (a, b) in enumerate(zip([2.55, 2.56, 2.57, 2.58, 2.54], [2.60] * 5)):
        for key, v in ((f"stability01/{rnn_lm.STABILITY01_NAME}/s{s}", a),
                       (f"stability/{rnn_lm.STABILITY01_REF}/s{s}", b)):  # fmt: skip
            runs[key] = {"key": key, "bpc": v, "cpu_seconds": 50.0, "wall_seconds": 50.0,
                         "run_date": "2026-12-07T06:00:00+00:00"}  # fmt: skip
    rows, out = rnn_lm_report.clip01_section(runs, 3.58, STUDY)
    c = out["claims"]
    assert {r["id"] for r in c.values()} == {
        "dni-rnn/clip01-128-stable",
        "dni-rnn/clip01-128-vs-clip1",
    }
    vs = c["DNI-8 at LSTM 128: clipped to 0.1 at or below clipped to 1"]
    assert vs["margin"] == pytest.approx(0.04) and vs["verdict"] == "held"
    assert c["DNI-8 at LSTM 128 clipped to 0.1: no run collapses"]["verdict"] == "held"
    assert rows[0][0] == rnn_lm.STABILITY01_NAME and rows[0][1] == "0 / 5"
    runs[f"stability01/{rnn_lm.STABILITY01_NAME}/s4"]["bpc"] = 3.9  # a collapse
    c = rnn_lm_report.clip01_section(runs, 3.58, STUDY)[1]["claims"]
    assert c["DNI-8 at LSTM 128 clipped to 0.1: no run collapses"]["verdict"] == "contradicted"
    del runs[f"stability01/{rnn_lm.STABILITY01_NAME}/s4"]
    c = rnn_lm_report.clip01_section(runs, 3.58, STUDY)[1]["claims"]
    assert {r["verdict"] for r in c.values()} == {"untested"}
