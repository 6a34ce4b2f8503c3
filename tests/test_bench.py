"""``sgjax bench --quick``: the report's structure, not its timings (benchmarks, not tests)."""

from __future__ import annotations

import json

import pytest

from sgjax.apps import bench, cli


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_quick_bench_reports_every_section(quick_report):
    meta = quick_report["meta"]
    assert meta["quick"] is True
    assert len(meta["load_start"]) == 3 and len(meta["load_end"]) == 3
    for section in bench.SECTIONS:
        assert section in quick_report


def test_step_rows_cover_the_six_rules_with_consistent_ratios(quick_report):
    r = quick_report["step"]
    assert r["peak"]["gflops"] > 0 and r["peak"]["flops"] > 0
    rows = {row["rule"]: row for row in r["rules"]}
    assert list(rows) == list(bench.step_rules())  # every registered rule
    assert rows["backprop"]["time_ratio"] == 1.0 and rows["backprop"]["flop_ratio"] == 1.0
    for row in rows.values():
        assert row["median_s"] > 0 and row["flops"] > 0 and row["first_call_s"] > 0
        assert row["overhead"] == pytest.approx(row["time_ratio"] / row["flop_ratio"])
        assert row["frac_of_peak"] == pytest.approx(
            row["flops"] / row["median_s"] / (r["peak"]["gflops"] * 1e9)
        )
        # One compilation on the first call, none on the steps after it.
        assert row["compiles_first_call"] >= 1
        assert row["steps_after_first"] > 0 and row["recompiles_after_first"] == 0
    # SG adds its modules' arithmetic: more FLOPs than backprop, SG + prop more still.
    assert rows["sg"]["flops"] > rows["backprop"]["flops"]
    assert rows["sg-prop"]["flops"] > rows["sg"]["flops"]


def test_theory_sweep_agrees_with_the_loop(quick_report):
    r = quick_report["theory"]
    assert r["instances"] == bench.QUICK["theory_instances"]
    assert r["vmap_per_s"] > 0 and r["loop_per_s"] > 0
    # Same instances, same answers, up to the summation order of batched kernels (float64).
    assert r["max_rel_diff"] < 1e-6


def test_memory_rows_and_ratios(quick_report):
    r = quick_report["memory"]
    rows = {row["rule"]: row for row in r["rows"]}
    assert list(rows) == ["backprop", "sg", "sg-linear"]
    assert rows["backprop"]["temp_ratio"] == 1.0
    for row in rows.values():
        for part in ("step", "gradients"):
            m = row[part]
            assert m["peak_bytes"] == (
                m["argument_bytes"] + m["output_bytes"] + m["temp_bytes"] - m["alias_bytes"]
            )
    # SG modules are parameters too: the SG step takes more argument memory than backprop.
    assert rows["sg"]["step"]["argument_bytes"] > rows["backprop"]["step"]["argument_bytes"]


def test_pipeline_rows_are_reported(quick_report):
    # A failed pipeline bench is a failed test (and `sgjax bench` exits 1), not a footnote.
    r = quick_report["pipeline"]
    assert r["ok"] is True, r.get("error")
    assert r["devices"] == bench.QUICK["pipeline_devices"]


def test_a_failing_pipeline_bench_fails_the_command(monkeypatch, capsys):
    from sgjax.apps.bench import pipeline_rows

    monkeypatch.setattr(pipeline_rows.sys, "executable", "false")  # the subprocess fails
    assert cli.main(["bench", "--quick", "--only", "pipeline"]) == 1
    out = capsys.readouterr().out
    assert "Pipeline: FAILED" in out and "section(s) failed: pipeline" in out


def test_only_runs_the_sections_asked_for(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert cli.main(["bench", "--quick", "--only", "theory", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert "theory" in report and "step" not in report and "memory" not in report
    assert "load average at start" in capsys.readouterr().out


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--only", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_recurrent_row_compares_dni_with_truncated_and_full_bptt(quick_report):
    r = quick_report["recurrent"]
    per_char = r["seconds_per_char"]
    assert set(per_char) == {"dni", "bptt", "full_bptt"} and min(per_char.values()) > 0
    assert r["dni_over_bptt"] == pytest.approx(per_char["dni"] / per_char["bptt"])
    # A DNI-T window holds T steps of activations, full BPTT all L of them.
    m = r["memory"]
    assert m["length"] == r["length"] > r["window"]
    assert m["full_bptt_bytes"] > m["dni_bytes"] > 0
