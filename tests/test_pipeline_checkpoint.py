"""Checkpoint and resume of ``--pipeline`` runs (issue 27, case 6): a stopped run resumes
bit-identical to one never stopped — in process (one stage), with several stages on fake
devices (a subprocess), and as several processes (``sgjax launch``, slow) — and the
pipeline's checkpoints keep the guarantees of the others (hashes, lock, a failed save
deletes nothing)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_trees_equal, xla_flags

from sgjax.apps import cli
from sgjax.infra import checkpoint, runner
from sgjax.infra.checkpoint import CheckpointWriteError
from sgjax.infra.pipeline_checkpoint import PipelineCheckpointer

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["train", "--dataset", "digits", "--width", "16", "--no-progress",
        "--checkpoint-every", "100"]  # fmt: skip


def _leaves(d: Path, step: int) -> list[np.ndarray]:
    with np.load(d / str(step) / "state.npz") as z:
        return [z[k] for k in sorted(z.files)]


def test_one_stage_pipeline_stopped_by_sigterm_resumes_bit_identical(tmp_path, monkeypatch, capsys):
    """In process (--pipeline 1): SIGTERM lands inside a call; the run stops at the end
    of that call with a checkpoint, exit 143; --resume ends as the run never stopped."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    argv = [*ARGV, "--pipeline", "1", "--steps", "300"]
    assert cli.main([*argv, "--checkpoint-dir", str(ref)]) == 0
    assert sorted(int(p.name) for p in ref.iterdir() if p.name.isdigit()) == [100, 200, 300]
    orig = runner.PipelineRun.on_call

    def on_call(self, seen, get_state):
        if seen == 150:
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the handler, acted on now
        return orig(self, seen, get_state)

    monkeypatch.setattr(runner.PipelineRun, "on_call", on_call)
    assert cli.main([*argv, "--checkpoint-dir", str(cut)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 150; checkpoint of step 150 saved" in err, err
    monkeypatch.setattr(runner.PipelineRun, "on_call", orig)
    assert cli.main([*argv, "--checkpoint-dir", str(cut), "--resume"]) == 0
    assert "resumed from micro-batch 150" in capsys.readouterr().out
    assert_trees_equal(_leaves(ref, 300), _leaves(cut, 300))
    # finished: a resume with the same --steps says so; without --resume it is refused
    assert cli.main([*argv, "--checkpoint-dir", str(cut), "--resume"]) == 1
    assert "is complete (300 micro-batches); raise --steps" in capsys.readouterr().err
    assert cli.main([*argv, "--checkpoint-dir", str(cut)]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err


def test_pipeline_and_plain_checkpoints_do_not_mix(tmp_path, capsys):
    d = tmp_path / "d"
    assert cli.main([*ARGV, "--pipeline", "1", "--steps", "100", "--checkpoint-dir", str(d)]) == 0
    plain = [*ARGV, "--depth", "0", "--sg-at", "output", "--steps", "100", "--resume"]
    assert cli.main([*plain, "--checkpoint-dir", str(d)]) == 1
    assert "holds checkpoints of a --pipeline run" in capsys.readouterr().err


def test_pipeline_checkpointer_keeps_its_guarantees(tmp_path, monkeypatch):
    tree = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    with PipelineCheckpointer(tmp_path, keep=2) as ck:
        for step in (50, 100, 150):
            ck.save(step, tree, {"seed": 0})
        assert ck.steps() == [100, 150]  # retention
        with pytest.raises(checkpoint.CheckpointDirInUseError):
            PipelineCheckpointer(tmp_path)
        orig = checkpoint.write_manifest

        def full(where):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(checkpoint, "write_manifest", full)
        with pytest.raises(CheckpointWriteError, match=r"errno 28.*steps \[100, 150\] are kept"):
            ck.save(200, tree, {"seed": 0})
        monkeypatch.setattr(checkpoint, "write_manifest", orig)
        assert ck.steps() == [100, 150]
        assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    (tmp_path / "150" / "state.npz").write_bytes(b"garbage")
    notes = []
    with PipelineCheckpointer(tmp_path, writer=False) as ck:
        _, meta = ck.restore_newest_good(tree, report=notes.append)
    assert meta["step"] == 100 and "checkpoint step 150" in notes[0]
    with pytest.raises(ValueError, match="does not match this pipeline"):
        PipelineCheckpointer(tmp_path, writer=False).restore_newest_good({"a": tree["a"]})


CHILD = textwrap.dedent(
    """
    import json, sys
    import dataclasses
    import jax, numpy as np, optax
    from sgjax import nets, rules
    from sgjax.infra import data
    from sgjax.infra.run import Run
    from sgjax.pipeline import Schedule, train_pipelined
    ds = data.load("digits")
    net = nets.mlp([64, 16, 16, 10])
    out = {}
    for method in ("sg-pipeline", "gpipe"):
        rule = rules.synthetic_gradients() if method == "sg-pipeline" else rules.backprop()
        run = Run(net, rule, "xent", optax.adam(1e-3), steps=120, batch_size=16)
        kw = dict(schedule=Schedule(chunk=20, micro_batches=4))
        full = train_pipelined(method, run, ds.x_train, ds.y_train, **kw)
        saved = {}
        def on_call(seen, get):
            if seen == 60:
                saved["s"] = (get(), seen)
        train_pipelined(method, dataclasses.replace(run, steps=80), ds.x_train, ds.y_train,
                        on_call=on_call, **kw)
        res = train_pipelined(method, run, ds.x_train, ds.y_train,
                              start=lambda initial: saved["s"], **kw)
        a, b = jax.tree.leaves(full["params"]), jax.tree.leaves(res["params"])
        out[method] = [bool(all(np.array_equal(u, v) for u, v in zip(a, b))),
                       full["final_loss"] == res["final_loss"], full["updates"] == res["updates"]]
    print(json.dumps(out))
    """
)


@pytest.mark.slow  # a subprocess compiling six pipeline runs: ~20-50 s on 2 shared cores
def test_three_stage_pipelines_resume_bit_identical():
    """sg-pipeline and gpipe on 3 fake devices: a state gathered after 60 micro-batches of
    an 80-micro-batch run, resumed to 120, equals an uninterrupted 120 (every leaf)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(3)}  # fmt: skip
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"sg-pipeline": [True, True, True], "gpipe": [True, True, True]}, got


def _launch(argv, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sgjax", "launch", "-n", "2", "--", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)  # fmt: skip


@pytest.mark.slow  # three launched jobs of two processes: ~60 s on 2 cores
def test_two_processes_stopped_by_sigterm_resume_bit_identical(tmp_path):
    """``sgjax launch -n 2`` stopped with SIGTERM: every process stops at the same call,
    process 0 checkpoints, exit 143; the resumed job equals an uninterrupted one."""
    argv = [*ARGV, "--pipeline", "2", "--steps", "400"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    proc = _launch([*argv, "--checkpoint-dir", str(ref)])
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    proc = _launch([*argv, "--checkpoint-dir", str(cut)])
    deadline = time.monotonic() + 300
    while not (cut / "100" / checkpoint.MANIFEST).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "sgjax launch: rank 0 (exit status 143): sgjax train: stopped by SIGTERM" in err, err
    assert "sgjax launch: rank 1 (exit status 143)" in err, err
    proc = _launch([*argv, "--checkpoint-dir", str(cut), "--resume"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_trees_equal(_leaves(ref, 400), _leaves(cut, 400))


@pytest.mark.slow  # a launched job of two processes: ~20 s
def test_a_dead_rank_is_one_line_from_the_survivor(tmp_path):
    argv = [*ARGV, "--pipeline", "2", "--steps", "100000", "--checkpoint-dir", str(tmp_path)]
    proc = _launch(argv)
    deadline = time.monotonic() + 300
    while not (tmp_path / "100" / checkpoint.MANIFEST).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True, check=False).stdout.split():  # fmt: skip
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if b"SGJAX_PROCESS_ID=1" in environ:
            os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "rank 1 of 2 was killed by signal 9" in err, err
    assert "rank 0: sgjax train: error: process 0 of 2 lost contact" in err, err
    assert "Traceback" not in out + err
    assert checkpoint.verify(tmp_path / "100") == []
