"""One writer per checkpoint directory (issue 27, case 2): a second run on a directory in
use is refused, naming the first (pid, host, command), before it touches anything; a lock
left by a killed run is recognised, explained and taken over."""

from __future__ import annotations

import json
import os
import socket

import optax
import pytest
from helpers import small_checkpointed_run

from sgjax import nets, rules
from sgjax.apps import cli
from sgjax.infra import checkpoint
from sgjax.infra.checkpoint import CheckpointDirInUseError, Checkpointer
from sgjax.infra.runner import StepCache

NET, RULE, OPT = nets.mlp([8, 16, 4]), rules.backprop(), optax.adam(1e-2)
CACHE = StepCache()


def _run(d, steps, **kw):
    return small_checkpointed_run(NET, RULE, OPT, CACHE, d, steps, **kw)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    _run(tmp_path, 8)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with Checkpointer(tmp_path):  # the first run, still going
        with pytest.raises(CheckpointDirInUseError) as err:
            _run(tmp_path, 16, resume=True)
        msg = str(err.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
        assert "in use by another run" in msg and "use another directory" in msg
        # nothing was touched: the same files (the lock file included) are there
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted(
            [*files, type(files[0])(checkpoint.LOCK)]
        )
    assert not (tmp_path / checkpoint.LOCK).exists()  # removed on a clean close
    assert int(_run(tmp_path, 16, resume=True).step) == 16  # free again


def test_the_cli_refuses_a_directory_in_use_in_one_line(tmp_path, capsys):
    with Checkpointer(tmp_path):
        argv = ["train", "--dataset", "digits", "--depth", "1", "--width", "8", "--steps", "2",
                "--no-progress", "--checkpoint-dir", str(tmp_path)]  # fmt: skip
        code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "is in use by another run: pid" in err, err


def test_a_lock_left_by_a_killed_run_is_explained_and_taken_over(tmp_path, capsys):
    _run(tmp_path, 8)
    # what a run killed with SIGKILL leaves: the file, with no process holding its lock
    owner = {"pid": 4242424, "host": "node17", "started": "2026-01-02 03:04:05 UTC",
             "command": "sgjax train --checkpoint-dir x"}  # fmt: skip
    (tmp_path / checkpoint.LOCK).write_text(json.dumps(owner))
    state = _run(tmp_path, 12, resume=True)
    err = capsys.readouterr().err
    assert int(state.step) == 12
    assert "was locked by pid 4242424 on host node17, started 2026-01-02 03:04:05 UTC" in err
    assert "ended without releasing it" in err
    assert not (tmp_path / checkpoint.LOCK).exists()
