"""Checkpoint corruption is detected (issue 12, items 2, 8, 13): every file's SHA-256 is
written after a save and checked on restore. A corrupt or truncated newest checkpoint is
named with the file and the good checkpoints; ``resume`` continues from the newest good
one, bit-identical to an uninterrupted run; when none is good the resume is refused."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import optax
import pytest
from helpers import assert_trees_equal as _leaves_equal
from helpers import runner_args

from sgjax import nets, rules, train
from sgjax.infra import checkpoint
from sgjax.infra.checkpoint import Checkpointer, CorruptCheckpointError
from sgjax.infra.run import Run
from sgjax.infra.runner import run_training

NET, RULE, OPT = nets.mlp([8, 16, 4]), rules.synthetic_gradients(), optax.adam(1e-2)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64).astype(np.int32)


def _run(steps, **kw):
    x, y = _data()
    run = Run(NET, RULE, "xent", OPT, steps=steps, batch_size=8, seed=1)
    return run_training(run, x, y, **runner_args(ckpt_every=4, **kw))[0]


def _target():
    return checkpoint.abstract_state(train.init, jax.random.key(0), NET, RULE, OPT)


def _largest_data_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 4 : len(b) // 4 + 64] = bytes(v ^ 0xFF for v in b[len(b) // 4 : len(b) // 4 + 64])
    p.write_bytes(bytes(b))
    return p


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def _zero(p):
    p.write_bytes(bytes(p.stat().st_size))
    return p


def _delete(p):
    p.unlink()
    return p


CORRUPTIONS = {
    "flipped-bytes": lambda d: _flip(_largest_data_file(d)),
    "truncated-data": lambda d: _truncate(_largest_data_file(d)),
    "zeroed-data": lambda d: _zero(_largest_data_file(d)),
    "deleted-array-metadata": lambda d: _delete(d / "state" / "_METADATA"),
    "truncated-meta-json": lambda d: _truncate(d / "meta" / "metadata"),
    "no-manifest": lambda d: _delete(d / checkpoint.MANIFEST),  # killed before hashing
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    _run(12, ckpt_dir=root / "base")  # checkpoints at 4, 8, 12
    return root, _run(16)  # the uninterrupted reference


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_is_named_and_resume_uses_the_newest_good(kind, runs, tmp_path, capsys):
    root, reference = runs
    d = tmp_path / "ck"
    shutil.copytree(root / "base", d)
    bad = CORRUPTIONS[kind](d / "12")
    with Checkpointer(d) as ckpt, pytest.raises(CorruptCheckpointError) as err:
        ckpt.restore(_target())
    msg = str(err.value)
    assert "checkpoint step 12" in msg and "Checkpoints that verify: steps [4, 8]" in msg
    named = bad.name if kind != "no-manifest" else checkpoint.MANIFEST
    assert named in msg, msg
    assert err.value.good == [4, 8]
    state = _run(16, ckpt_dir=d, resume=True)
    warning = capsys.readouterr().err
    assert named in warning and "Resuming from step 8" in warning, warning
    _leaves_equal(state, reference)  # nothing lost: bit-identical to the uninterrupted run
    with Checkpointer(d) as ckpt:  # the bad step was rewritten, and verifies again
        assert ckpt.steps() == [8, 12, 16] and not checkpoint.verify(d / "12")


def test_resume_is_refused_when_no_checkpoint_verifies(runs, tmp_path):
    root, _ = runs
    d = tmp_path / "ck"
    shutil.copytree(root / "base", d)
    for step in (4, 8, 12):
        _zero(_largest_data_file(d / str(step)))
    with pytest.raises(CorruptCheckpointError, match=r"no checkpoint in .* verifies") as err:
        _run(16, ckpt_dir=d, resume=True)
    assert all(f"checkpoint step {s}" in str(err.value) for s in (4, 8, 12))
    assert err.value.good == []


def test_a_first_save_killed_before_hashing_restarts_from_zero(runs, tmp_path, capsys):
    root, reference = runs
    d = tmp_path / "ck"
    shutil.copytree(root / "base", d)
    shutil.rmtree(d / "8")
    shutil.rmtree(d / "12")
    (d / "4" / checkpoint.MANIFEST).unlink()  # the only checkpoint, never hashed
    state = _run(16, ckpt_dir=d, resume=True)
    warning = capsys.readouterr().err
    assert "checkpoint step 4" in warning and "starts again from step 0" in warning, warning
    _leaves_equal(state, reference)
    # several unhashed checkpoints (an older sgjax's directory) are refused instead
    d2 = tmp_path / "ck2"
    shutil.copytree(root / "base", d2)
    for step in (4, 8, 12):
        (d2 / str(step) / checkpoint.MANIFEST).unlink()
    with pytest.raises(CorruptCheckpointError, match=r"no checkpoint in .* verifies"):
        _run(16, ckpt_dir=d2, resume=True)
