"""``sgjax reproduce --aggregate`` over directories of different experiments (issue 27,
case 7): one clear line, not "seed 0 appears twice" or a ``KeyError`` traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sgjax.apps import cli

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _run_dir(tmp_path, src: str, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(RESULTS / src, d)
    return d


@pytest.mark.skipif(not (RESULTS / "fig3").exists(), reason="needs docs/results/fig3 and fig5")
def test_aggregate_refuses_runs_of_different_experiments(tmp_path, capsys):
    fig3, fig5 = _run_dir(tmp_path, "fig3", "a"), _run_dir(tmp_path, "fig5", "b")
    out = tmp_path / "out"
    argv = ["reproduce", "fig3", "--aggregate", str(fig3), str(fig5), "--out", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "the directories hold different experiments" in err and "'Fig. 5" in err, err
    # without reports to tell them apart, the missing key of the other experiment is named
    (fig5 / "report.md").unlink()
    res = json.loads((fig5 / "results.json").read_text())
    res["seed"] = 1  # not a repeated seed: the content is what is wrong
    (fig5 / "results.json").write_text(json.dumps(res))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{fig5} is not a run of fig3" in err, err
    assert not out.exists()
