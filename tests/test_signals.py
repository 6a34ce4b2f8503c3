"""Stop signals (issue 27, case 1): SIGTERM, SIGHUP and a scheduler's warning signals end
``sgjax train`` like Ctrl-C — the last finished step is checkpointed, the message says how
to resume, the exit status is 128 + the signal's number — and a signal arriving during a
save waits until the save is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgjax.apps import cli
from sgjax.infra import checkpoint, runner
from sgjax.infra.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "digits", "--depth", "1", "--width", "16", "--no-progress",
         "--checkpoint-every", "5"]  # fmt: skip


def _send_at(monkeypatch, step: int, signum: int) -> None:
    """Deliver ``signum`` to this process right after training step ``step``."""
    orig = runner._Saver.on_step

    def on_step(self, n, metrics, state):
        orig(self, n, metrics, state)
        if n == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(runner._Saver, "on_step", on_step)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"])
def test_a_stop_signal_checkpoints_and_says_how_to_resume(name, tmp_path, monkeypatch, capsys):
    signum = getattr(signal, name)
    _send_at(monkeypatch, 7, signum)  # between two periodic saves (5 and 10)
    before = signal.getsignal(signum)
    code = cli.main([*TRAIN, "--steps", "1000", "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 128 + signum, err
    assert f"stopped by {name} after step 7" in err
    assert f"checkpoint of step 7 saved in {tmp_path}" in err and "--resume" in err
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [5, 7]
    assert checkpoint.verify(tmp_path / "7") == []
    assert signal.getsignal(signum) == before  # the handlers are put back


def test_a_signal_during_a_save_waits_for_the_save(tmp_path, monkeypatch, capsys):
    """SIGTERM arriving inside the save of step 5 is handled once that save is complete:
    step 5 is checkpointed whole, and nothing is saved twice."""
    orig = Checkpointer.save
    calls = []

    def save(self, state, metadata=None):
        calls.append(int(state.step))
        if int(state.step) == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # inside the save
        return orig(self, state, metadata)

    monkeypatch.setattr(Checkpointer, "save", save)
    code = cli.main([*TRAIN, "--steps", "1000", "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM after step 5; checkpoint of step 5 saved" in err
    assert calls == [5]
    assert checkpoint.verify(tmp_path / "5") == []


@pytest.mark.slow  # a second Python process that imports JAX and compiles: ~8 s
def test_sigterm_from_outside_then_resume(tmp_path):
    """A real ``kill -TERM`` of ``python -m sgjax train``: exit status 143, the resume
    command in the message, and that command finishes the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [*TRAIN, "--steps", "100000", "--checkpoint-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgjax", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "5" / checkpoint.MANIFEST).exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err
    with Checkpointer(tmp_path) as ckpt:
        last = ckpt.latest_step()
    assert last is not None and last >= 5 and checkpoint.verify(tmp_path / str(last)) == []
    assert f"checkpoint of step {last} saved" in err
