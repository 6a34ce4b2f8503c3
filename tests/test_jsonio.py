"""Strict JSON (non-finite values as null plus a flag) and output paths checked up front."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sgjax.infra import jsonio


def test_non_finite_values_become_null_and_are_flagged():
    obj = {
        "loss": math.nan,
        "hist": [{"loss": 1.0}, {"loss": -math.inf}],
        "w": np.array([[1.0, np.inf]], np.float32),
        "n": np.int32(4),
        "ok": 0.25,
    }
    text = jsonio.dumps(obj)
    back = jsonio.loads_strict(text)  # a strict reader accepts it
    assert back["loss"] is None and back["hist"][1]["loss"] is None and back["w"] == [[1.0, None]]
    assert back["n"] == 4 and back["ok"] == 0.25 and back["hist"][0]["loss"] == 1.0
    assert back[jsonio.FLAG] == {"loss": "nan", "hist[1].loss": "-inf", "w[0][1]": "inf"}
    # a finite object carries no flag, and json's own output would not have been strict
    assert jsonio.FLAG not in jsonio.loads_strict(jsonio.dumps({"a": [1.0, 2]}))
    with pytest.raises(ValueError, match="NaN"):
        jsonio.loads_strict(json.dumps({"a": math.nan}))


def test_a_list_of_records_flags_each_record():
    back = jsonio.loads_strict(jsonio.dumps([{"m": 1.0}, {"m": math.inf}]))
    assert back == [{"m": 1.0}, {"m": None, jsonio.FLAG: {"m": "inf"}}]
    with pytest.raises(ValueError, match="nowhere to flag"):
        jsonio.dumps([1.0, math.nan])
    with pytest.raises(ValueError, match="reserved"):
        jsonio.dumps({jsonio.FLAG: 1, "x": math.nan})


def test_check_writable_refuses_bad_paths_before_any_work(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(jsonio.OutputPathError, match=r"--json: .* is a directory"):
        jsonio.check_writable(tmp_path, name="--json")
    with pytest.raises(jsonio.OutputPathError, match=r"--json: cannot create .* is a file"):
        jsonio.check_writable(a_file / "sub" / "r.json", name="--json")
    with pytest.raises(jsonio.OutputPathError, match=r"--out: .* is a file; expected a dir"):
        jsonio.check_writable(a_file, name="--out", directory=True)
    ok = jsonio.check_writable(tmp_path / "new" / "r.json", name="--json")
    assert not ok.parent.exists()  # nothing is created by the check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the probe is gone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_check_writable_catches_a_place_that_refuses_writes():
    # /proc refuses new files even to root (a chmod'ed directory would not stop root)
    with pytest.raises(jsonio.OutputPathError, match=r"--json: cannot write /proc/r.json"):
        jsonio.check_writable(Path("/proc/r.json"), name="--json")


def test_write_or_keep_keeps_the_results_and_says_where(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(jsonio.OutputKeptError, match="kept in") as info:
        jsonio.write_or_keep(blocker / "r.json", {"acc": 0.5, "loss": math.nan}, name="--json")
    kept = info.value.kept_at
    assert kept is not None and str(kept) in str(info.value)
    assert jsonio.loads_strict(kept.read_text())["acc"] == 0.5
    kept.unlink()
    out = jsonio.write_or_keep(tmp_path / "d" / "r.json", {"a": 1}, name="--json")
    assert jsonio.loads_strict(out.read_text()) == {"a": 1}
