"""Checkpoints of an older sgjax (issue 27, case 4): never overwritten, told apart from a
first save stopped before it was hashed, and a way forward (``--adopt-older-checkpoints``
checks and hashes them, then the run resumes bit-identical)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import optax
import pytest
from helpers import small_checkpointed_run

from sgjax import nets, rules
from sgjax.infra import checkpoint
from sgjax.infra.checkpoint import OlderFormatError
from sgjax.infra.run import Checkpoints, Run
from sgjax.infra.runner import StepCache, run_training

NET, RULE, OPT = nets.mlp([8, 16, 4]), rules.synthetic_gradients(), optax.adam(1e-2)
CACHE = StepCache()


def _run(d, steps, **kw):
    return small_checkpointed_run(NET, RULE, OPT, CACHE, d, steps, **kw)


def _make_older(step_dir):
    """What an sgjax older than the hashes wrote: no manifest, no format mark."""
    (step_dir / checkpoint.MANIFEST).unlink()
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta[checkpoint.FORMAT_KEY]
    meta_file.write_text(json.dumps(meta))


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("upgrade")
    _run(root / "one", 4)  # a single checkpoint
    _run(root / "three", 12)  # steps 4, 8, 12
    return root, _run(None, 16)


@pytest.mark.parametrize("which", ["one", "three"])
def test_an_older_sgjax_checkpoint_is_refused_and_left_untouched(made, which, tmp_path):
    root, _ = made
    d = tmp_path / which
    shutil.copytree(root / which, d)
    for step_dir in (p for p in d.iterdir() if p.name.isdigit()):
        _make_older(step_dir)
    before = _snapshot(d)
    with pytest.raises(OlderFormatError) as err:
        _run(d, 16, resume=True)
    msg = str(err.value)
    assert "written by an older sgjax" in msg and "left untouched" in msg
    assert "--adopt-older-checkpoints" in msg and "another --checkpoint-dir" in msg
    assert _snapshot(d) == before  # nothing overwritten, nothing hashed behind the user's back


def test_adopting_them_resumes_bit_identical(made, tmp_path, capsys):
    root, reference = made
    d = tmp_path / "three"
    shutil.copytree(root / "three", d)
    for step in (4, 8, 12):
        _make_older(d / str(step))
    state = _run(d, 16, resume=True, adopt_older=True, log=print)
    assert "checked and hashed the checkpoints of steps [4, 8, 12]" in capsys.readouterr().out
    for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(reference)):
        assert np.array_equal(u, v)
    assert all(checkpoint.verify(d / str(s)) == [] for s in (12, 16))


def test_a_first_save_stopped_before_hashing_is_told_apart(made, tmp_path, capsys):
    root, reference = made
    d = tmp_path / "one"
    shutil.copytree(root / "one", d)
    (d / "4" / checkpoint.MANIFEST).unlink()  # this format's mark is there
    state = _run(d, 16, resume=True)
    err = capsys.readouterr().err
    assert "first save stopped before it was hashed (not an older sgjax's checkpoint)" in err
    for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(reference)):
        assert np.array_equal(u, v)


def test_adopting_needs_resume_and_a_matching_network(made, tmp_path):
    root, _ = made
    with pytest.raises(ValueError, match="needs `resume=True`"):
        _run(tmp_path / "x", 4, adopt_older=True)
    d = tmp_path / "one"
    shutil.copytree(root / "one", d)
    _make_older(d / "4")
    before = _snapshot(d)
    other = nets.mlp([8, 32, 4])  # another width: refused, nothing hashed
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64).astype(np.int32)
    with pytest.raises(ValueError, match="does not match"):
        run_training(Run(other, RULE, "xent", OPT, steps=8, batch_size=8, seed=1), x, y,
                     checkpoints=Checkpoints(d, resume=True, adopt_older=True))  # fmt: skip
    assert _snapshot(d) == before
