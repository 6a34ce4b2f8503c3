"""A failed save (issue 27, case 3): a full disk or any write error is one clear line,
the good checkpoints are kept, nothing is deleted before the new checkpoint is verified,
and once there is room ``--resume`` ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import optax
import pytest
from helpers import small_checkpointed_run
from helpers import trees_equal as _equal

from sgjax import nets, rules
from sgjax.apps import cli
from sgjax.infra import checkpoint
from sgjax.infra.checkpoint import CheckpointWriteError
from sgjax.infra.runner import StepCache

NET, RULE, OPT = nets.mlp([8, 16, 4]), rules.synthetic_gradients(), optax.adam(1e-2)
CACHE = StepCache()


def _run(d, steps, **kw):
    return small_checkpointed_run(NET, RULE, OPT, CACHE, d, steps, keep=2, **kw)


def test_a_failed_save_deletes_nothing_and_says_so_in_one_line(tmp_path, monkeypatch):
    """ENOSPC while the checkpoint of step 12 is hashed: 4 and 8 stay (keep=2: the old
    retention had already removed 4), 12 is removed, the message names the errno, the
    steps kept and the room needed."""
    orig = checkpoint.write_manifest

    def full_at_12(where):
        if where.name == "12":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where / "x"))
        orig(where)

    monkeypatch.setattr(checkpoint, "write_manifest", full_at_12)
    with pytest.raises(CheckpointWriteError) as err:
        _run(tmp_path, 20)
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not write the checkpoint of step 12" in msg and "errno 28" in msg
    assert "the checkpoints of steps [4, 8] are kept and verify" in msg
    assert "room for 3 of them (keep=2" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "8"]
    assert all(checkpoint.verify(tmp_path / s) == [] for s in ("4", "8"))
    monkeypatch.setattr(checkpoint, "write_manifest", orig)  # room again
    assert _equal(_run(tmp_path, 20, resume=True), _run(None, 20))


def test_retention_removes_the_oldest_only_after_the_new_one_verifies(tmp_path, monkeypatch):
    seen = []
    orig = checkpoint.verify

    def spy(where):
        seen.append((where.name, sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit())))
        return orig(where)

    _run(tmp_path, 8)  # steps 4, 8
    monkeypatch.setattr(checkpoint, "verify", spy)
    _run(tmp_path, 12, resume=True)
    assert ("12", ["12", "4", "8"]) in seen  # 4 still there while 12 was verified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["12", "8"]


def test_the_cli_reports_a_failed_save_in_one_line(tmp_path, monkeypatch, capsys):
    def full(where):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "write_manifest", full)
    argv = ["train", "--dataset", "digits", "--depth", "1", "--width", "8", "--steps", "3",
            "--no-progress", "--checkpoint-every", "2",
            "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device (errno 28)" in err, err
    assert "no checkpoint had been written yet" in err


def _can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount")


@pytest.mark.skipif(not _can_mount(), reason="needs root on Linux to mount a small tmpfs")
def test_a_real_full_disk(tmp_path, capfd):
    """A tmpfs with room for about two and a half checkpoints (measured, not assumed).
    Nothing but the error reaches stderr (orbax's threads printed dozens of "Event loop
    is closed" tracebacks when a write failed)."""
    _run(tmp_path / "probe", 4)
    size = sum(p.stat().st_size for p in (tmp_path / "probe" / "4").rglob("*"))
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("mount -t tmpfs failed")
    try:
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        filler.write_bytes(bytes(max(free - int(2.5 * size) - 64 * 1024, 0)))
        d = disk / "ck"
        with pytest.raises(CheckpointWriteError) as err:
            _run(d, 40)
        kept = err.value.kept
        assert kept and "errno 28" in str(err.value)
        printed = capfd.readouterr().err
        assert "Traceback" not in printed and "Event loop is closed" not in printed, printed
        # tensorstore's threads recreated the temporary directory after it was removed
        # (1 run in 6): the failed save waits until it stays gone.
        assert not [p.name for p in d.iterdir() if "tmp" in p.name]
        assert sorted(int(p.name) for p in d.iterdir() if p.name[0].isdigit()) == kept
        filler.unlink()  # room again: the run resumes and ends as if never stopped
        assert _equal(_run(d, 40, resume=True), _run(None, 40))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
