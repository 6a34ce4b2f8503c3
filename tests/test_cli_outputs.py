"""Output paths are checked before any work, results survive a failed write, a corrupt
checkpoint under ``--resume`` is one clear line, and ``verify --instances 0`` is refused
(issue 12, items 7, 8, 12)."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from sgjax.apps import cli, reproduce
from sgjax.infra import jsonio, runner

TINY = ["--steps", "4", "--depth", "1", "--width", "8", "--no-progress"]


@pytest.fixture
def no_work(monkeypatch):
    """Any training or experiment would fail the test: the paths must be refused first."""

    def boom(*a, **k):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(runner, "run_training", boom)
    for name, e in list(reproduce.EXPERIMENTS.items()):
        monkeypatch.setitem(reproduce.EXPERIMENTS, name, e._replace(run=boom))


@pytest.mark.parametrize(
    ("flag", "make", "message"),
    [
        ("--json", lambda t: t, r"--json: .* is a directory; expected a file path"),
        ("--json", lambda t: t / "f" / "r.json", r"--json: cannot create .*: .*/f is a file"),
        ("--checkpoint-dir", lambda t: t / "f", r"--checkpoint-dir: .*/f is a file; expected"),
        ("--json", lambda t: "/proc/r.json", r"--json: cannot write /proc/r.json"),
    ],
)
def test_train_refuses_bad_output_paths_before_training(
    tmp_path, capsys, no_work, flag, make, message
):
    (tmp_path / "f").write_text("")
    assert cli.main(["train", *TINY, flag, str(make(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err), err


def test_reproduce_refuses_a_file_as_out_before_any_experiment(tmp_path, capsys, no_work):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert cli.main(["reproduce", "fig2", "--out", str(a_file)]) == 1
    assert f"--out: {a_file} is a file; expected a directory" in capsys.readouterr().err


def test_a_failed_final_write_keeps_the_results_and_says_where(tmp_path, capsys, monkeypatch):
    def full_disk(path, obj, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonio, "write", full_disk)
    out = tmp_path / "r.json"
    assert cli.main(["train", *TINY, "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the results were kept in" in err
    kept = err.split("the results were kept in ")[1].strip()
    result = json.loads(Path(kept).read_text())
    assert result["steps"] == 4 and 0 <= result["test_accuracy"] <= 1
    Path(kept).unlink()


def test_resume_from_corrupt_checkpoints_is_one_line_naming_the_file(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert cli.main(["train", *TINY, "--checkpoint-dir", str(ck), "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    zeroed = []
    for step in ("2", "4"):
        data = max((ck / step / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
        data.write_bytes(bytes(data.stat().st_size))
        zeroed.append(data)
    argv = ["train", *TINY, "--steps", "6", "--checkpoint-dir", str(ck), "--resume"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "verifies" in err and all(str(p) in err for p in zeroed), err


def test_verify_instances_zero_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["verify", "--instances", "0"])
    assert info.value.code == 2
    assert "--instances must be an integer ≥ 1, got 0" in capsys.readouterr().err


def test_a_diverging_run_is_worded_for_the_command_line(tmp_path, capsys):
    """Issue 12.15: the CLI names what became non-finite and where the checkpoints are,
    without the Python-only hint ``err.state`` that library users get."""
    ck = tmp_path / "ck"
    argv = ["train", *TINY, "--rule", "backprop", "--lr", "1e38", "--checkpoint-dir", str(ck)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("sgjax train: error: step ") and "became non-finite" in err, err
    assert "Checkpoints: " in err and str(ck) in err, err
    assert "err.state" not in err and "Traceback" not in err, err
