"""The Copy study (``sgjax.apps.experiments.rnn_copy``): a finished run is not rerun, and
the verdicts on hand-made solved lengths (held / contradicted / untested)."""

from __future__ import annotations

import json

import jax
import pytest

from sgjax.apps.experiments import rnn_copy

DATE = "2027-01-01T00:00:00+00:00"  # after the registration: confirmatory

TINY = dict(
    hidden=4,
    batch=2,
    bits=2,
    batches=3,
    patience=2,
    cos_every=1000,
    lr=1e-3,
    sg_lr=1e-3,
    decay=1.0,
)


def test_a_finished_run_is_not_rerun(tmp_path, monkeypatch):
    grid = {"bptt": (2,)}
    calls = []
    real = rnn_copy.rnn.train_copy

    def counting(task, method, T, seed, cfg, **kw):
        calls.append((method, T, seed))
        return real(task, method, T, seed, cfg, **kw)

    monkeypatch.setattr(rnn_copy.rnn, "train_copy", counting)
    # optax 0.2.8's Adam (`decay ** count`, float ** int32) needs the standard promotion
    # (tests/conftest.py's STANDARD_PROMOTION)
    promotion = jax.numpy_dtype_promotion("standard")
    promotion.__enter__()
    ran = rnn_copy.run(tmp_path, settings=TINY, grid=grid, seeds=(0, 1))
    assert ran == ["copy/bptt/T2/s0", "copy/bptt/T2/s1"] and len(calls) == 2
    recs = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["key"] for r in recs] == ran
    assert all(r["cpu_seconds"] > 0 and r["settings"]["copy"] == TINY for r in recs)
    # a second call (a restart) runs nothing; other settings are run again
    assert rnn_copy.run(tmp_path, settings=TINY, grid=grid, seeds=(0, 1)) == [] and len(calls) == 2
    assert rnn_copy.run(tmp_path, settings={**TINY, "batches": 2}, grid=grid, seeds=(1,)) == [
        "copy/bptt/T2/s1"
    ]
    promotion.__exit__(None, None, None)


def _solved(full, dni2, bptt2, bptt4, bptt8=(3, 3, 3)):
    return {
        "full": {0: list(full)},
        "dni": {2: list(dni2)},
        "bptt": {2: list(bptt2), 4: list(bptt4), 8: list(bptt8)},
    }


def _verdicts(solved):
    return {r["id"]: r for r in rnn_copy.claims(solved, data_date=DATE).values()}


def test_horizon_held_when_dni_beats_a_longer_window():
    v = _verdicts(_solved([16, 17, 18], [6, 6, 7], [2, 2, 2], [4, 4, 4], [9, 9, 9]))
    h = v["dni-rnn/copy-horizon"]
    assert h["verdict"] == "held" and h["value"].startswith("DNI-2 6.33") and "BPTT-4" in h["value"]
    assert v["dni-rnn/copy-dni-vs-bptt"]["verdict"] == "held"


def test_horizon_contradicted_when_dni_stays_below_every_longer_window():
    # DNI-2 beats BPTT-2 but not BPTT-4 or BPTT-8: the horizon is not extended
    v = _verdicts(_solved([16, 16, 16], [3, 3, 3], [2, 2, 2], [4, 4, 4], [8, 8, 8]))
    assert v["dni-rnn/copy-horizon"]["verdict"] == "contradicted"
    assert v["dni-rnn/copy-dni-vs-bptt"]["verdict"] == "held"


def test_within_the_seed_spread_is_inconclusive():
    v = _verdicts(_solved([16, 16, 16], [3, 6, 9], [2, 2, 2], [4, 5, 6]))
    assert v["dni-rnn/copy-horizon"]["verdict"] == "inconclusive"


def test_outside_the_regime_a_failure_is_untested():
    # full BPTT at a mean of 15 < 16: nothing is decided
    v = _verdicts(_solved([14, 15, 16], [3, 3, 3], [2, 2, 2], [4, 4, 4], [8, 8, 8]))
    assert v["dni-rnn/copy-horizon"]["verdict"] == "untested"
    assert "untested at this budget" in v["dni-rnn/copy-horizon"]["regime_note"]
    assert v["dni-rnn/copy-dni-vs-bptt"]["verdict"] == "consistent"


def test_missing_seeds_leave_the_claim_untested():
    s = _solved([16, 17, 18], [6, 6], [2, 2, 2], [4, 4, 4])
    assert _verdicts(s)["dni-rnn/copy-horizon"]["verdict"] == "untested"
    s = _solved([16, 17], [6, 6, 6], [2, 2, 2], [4, 4, 4])  # regime needs every seed
    assert _verdicts(s)["dni-rnn/copy-dni-vs-bptt"]["verdict"] == "consistent"


def test_a_shorter_window_is_never_the_horizon_reference():
    # only BPTT-2 (T' = T) is below DNI-2: the horizon claim must not use it
    s = {"full": {0: [16, 16, 16]}, "dni": {2: [3, 3, 3]}, "bptt": {2: [2, 2, 2], 4: [5, 5, 5]}}
    assert _verdicts(s)["dni-rnn/copy-horizon"]["verdict"] == "contradicted"
    s["dni"] = {4: [4, 4, 4]}  # DNI-4 has no BPTT-T' with T' > 4: no horizon claim
    assert "dni-rnn/copy-horizon" not in _verdicts(s)


def test_the_job_order_puts_the_regime_and_each_comparison_first():
    ks = [k for k, *_ in rnn_copy.jobs(seeds=(0,))]
    assert ks[:3] == ["copy/full/T0/s0", "copy/dni/T2/s0", "copy/bptt/T4/s0"]
    assert len(rnn_copy.jobs()) == 3 * 6 and len(set(rnn_copy.jobs())) == 18


@pytest.mark.parametrize("cmd", [["report", "--out"]])
def test_report_of_a_partial_grid_lists_the_missing_runs(tmp_path, cmd):
    rec = {
        "key": "copy/full/T0/s0",
        "method": "full",
        "T": 0,
        "seed": 0,
        "settings": rnn_copy.cfg(),
        "solved": 17,
        "final_level": 18,
        "levels": [[n, 100 * n, 1.0] for n in range(1, 18)],
        "cpu_seconds": 5.0,
        "wall_seconds": 5.0,
        "run_date": DATE,
    }
    (tmp_path / "runs.jsonl").write_text(json.dumps(rec) + "\n")
    rnn_copy.main([*cmd, str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert "copy/dni/T2/s0" in text and "1,700" in text  # its N = 17 solved at batch 1,700
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["solved"]["full/T0"] == [17.0] and len(res["missing"]) == 17
    assert {c["verdict"] for c in res["claims"].values()} == {"untested"}


def test_a_diverged_run_stops_with_what_it_solved(monkeypatch):
    from sgjax.apps.experiments import rnn

    real, n = rnn.core.train_sequence, [0]

    def failing(*a, **kw):
        n[0] += 1
        if n[0] == 5:
            raise FloatingPointError("planted")  # (check_step's NonFiniteLossError is one)
        return real(*a, **kw)

    monkeypatch.setattr(rnn.core, "train_sequence", failing)
    c = rnn_copy.cfg({**TINY, "batches": 8})
    with jax.numpy_dtype_promotion("standard"):
        res = rnn.train_copy("copy", "bptt", 2, 0, c, stop_on_nonfinite=True)
        assert res["diverged"].startswith("batch 5: planted") and len(res["curve"]) == 4
        n[0] = 0
        with pytest.raises(FloatingPointError, match="planted"):
            rnn.train_copy("copy", "bptt", 2, 0, c)


def test_each_budget_is_judged_under_its_own_registered_claims(tmp_path, capsys):
    s = _solved([16, 17, 18], [6, 6, 7], [2, 2, 2], [4, 4, 4], [9, 9, 9])
    ids = {r["id"] for r in rnn_copy.claims(s, data_date=DATE, batches=20_000).values()}
    assert ids == {"dni-rnn/copy20k-horizon", "dni-rnn/copy20k-dni-vs-bptt"}
    # the 20,000-batch claims were registered after the 15,000-batch runs: a 20k verdict on
    # data from before that registration is exploratory, never evidence
    early = rnn_copy.claims(s, data_date="2026-12-06T18:00:00+00:00", batches=20_000)
    assert {r["verdict"] for r in early.values()} == {"exploratory"}
    # a budget with no registered claims is refused before any run (the CLI names it)
    with pytest.raises(ValueError, match=r"`batches`: no Copy claims are registered for 12,345"):
        rnn_copy.claim_ids(12_345)
    with pytest.raises(SystemExit):
        rnn_copy.main(["run", "--out", str(tmp_path), "--batches", "12345"])
    assert "12,345 batches" in capsys.readouterr().err and not (tmp_path / "runs.jsonl").exists()


def test_repeat_copy_runs_its_own_task_grid_seeds_and_claims(tmp_path, monkeypatch, capsys):
    """``--task repeat_copy``: the runs train Repeat Copy (planted: the task not passed on,
    Copy trained → red), are keyed and recorded by task, take seeds 1–3 and the Repeat Copy
    grid by default, are judged under the ``rcopy10k`` claims, and a study holds one task."""
    calls = []

    def fake(task, method, T, seed, cfg, **kw):
        calls.append(task)
        return {"solved": 4, "final_level": 6, "levels": [[4, 10, 1.0]], "diverged": None,
                "curve": [], "cos": [], "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(rnn_copy.rnn, "train_copy", fake)
    ran = rnn_copy.run(tmp_path, settings=TINY, grid={"bptt": (4,)}, task="repeat_copy")
    assert ran == [f"repeat_copy/bptt/T4/s{s}" for s in (1, 2, 3)]
    assert calls == ["repeat_copy"] * 3
    recs = rnn_copy.load(tmp_path)
    assert {r["task"] for r in recs.values()} == {"repeat_copy"}
    assert len(rnn_copy.jobs(task="repeat_copy")) == 3 * 6
    s = {"full": {0: [20, 25, 16]}, "dni": {4: [12, 16, 12], 8: [16, 20, 16]}}
    s["bptt"] = {4: [6, 6, 6], 8: [9, 9, 9], 16: [12, 12, 12]}
    c = rnn_copy.claims(s, data_date=DATE, batches=10_000, task="repeat_copy")
    assert {r["id"] for r in c.values()} == {
        "dni-rnn/rcopy10k-horizon",
        "dni-rnn/rcopy10k-dni-vs-bptt",
    }
    assert c["DNI-4 above BPTT-4"]["target"] == "DNI-4's solved N·R > BPTT-4's"
    with pytest.raises(ValueError, match=r"no Repeat Copy claims are registered for 20,000"):
        rnn_copy.claim_ids(20_000, "repeat_copy")
    with pytest.raises(SystemExit):  # a Copy run into a Repeat Copy study
        rnn_copy.main(["run", "--out", str(tmp_path), "--batches", "20000"])
    assert "holds runs of ['repeat_copy']: one task per study" in capsys.readouterr().err
