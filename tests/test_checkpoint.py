"""Checkpoints and long runs: save/restore round trips, bit-identical resume (simulated
crash and a real SIGKILL of a subprocess), a clean stop on NaN that keeps only good
checkpoints, and the guards against mixing runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_equal as _assert_trees_equal
from helpers import runner_args

from sgjax import nets, rules, train
from sgjax.infra import data
from sgjax.infra.checkpoint import Checkpointer, NonFiniteStateError, abstract_state
from sgjax.infra.run import Run
from sgjax.infra.runner import StepCache, run_training
from sgjax.train import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds():
    d = data.load("digits")
    return d.x_train[:400], d.y_train[:400]


NET = nets.mlp([64, 32, 32, 10])
# Rule instances shared by all tests: with the same net and optimiser objects CACHE
# reuses the jitted step, so each rule compiles once per session.
# Every registered rule (the contract: crash + resume is bit-identical for each).
# One optimiser object for all runs: CACHE reuses the jitted step of an identical
# (net, rule, loss, optimiser) set, so each test compiles once. The SG rules own theirs.
OPT, SG_OPT = optax.adam(3e-3), optax.adam(1e-3)
RULES = {
    name: rules.get(name, **({"sg_optimizer": SG_OPT} if spec.trains_modules else {}))
    for name, spec in rules.RULES.items()
}
BP, SG = RULES["backprop"], RULES["sg"]
CACHE = StepCache()  # this file's compiled steps (the runner holds no global cache)


def _opt():
    return OPT


def _run(rule, ds, steps, **kw):
    x, y = ds
    run = Run(NET, rule, "xent", _opt(), steps=steps, batch_size=32, seed=3)
    return run_training(run, x, y, **runner_args(step_cache=CACHE, **kw))


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", sorted(RULES))
def test_crash_and_resume_is_bit_identical(name, ds, tmp_path):
    rule = RULES[name]
    full, full_hist = _run(rule, ds, 24, log_every=1)

    def crash_at_17(step, metrics, state):
        if step == 17:
            raise Crash

    with pytest.raises(Crash):
        _run(rule, ds, 24, log_every=1, callback=crash_at_17, ckpt_dir=tmp_path, ckpt_every=5)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 15  # steps 16 and 17 were lost with the crash
    resumed, hist = _run(rule, ds, 24, log_every=1, ckpt_dir=tmp_path, ckpt_every=5, resume=True)
    assert int(resumed.step) == 24
    _assert_trees_equal(full, resumed)
    # The resumed part replays steps 16..24 with the same batches: same metrics, bitwise.
    assert [h["step"] for h in hist] == list(range(16, 25))
    for h in hist:
        ref = full_hist[h["step"] - 1]
        for k in ("loss", "accuracy", "sg_loss"):
            assert np.array_equal(h[k], ref[k]), (h["step"], k)


def test_runner_without_checkpoints_equals_fit(ds):
    rule = SG
    x, y = ds
    a, _ = _run(rule, ds, 10)
    b, _ = train.fit(
        NET, rule, "xent", _opt(), x, y, steps=10, batch_size=32, key=jax.random.key(3),
        seed=3,
    )  # fmt: skip
    _assert_trees_equal(a, b)


def test_periodic_final_and_keep(ds, tmp_path):
    _run(BP, ds, 23, ckpt_dir=tmp_path, ckpt_every=5, keep=2)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [20, 23]  # 5, 10, 15 rotated out; 23 is the final save
        state, meta = ckpt.restore(abstract_state(train.init, jax.random.key(0), NET,
                                                  BP, _opt()))  # fmt: skip
    assert int(state.step) == 23 and meta["step"] == 23
    assert meta["seed"] == 3 and meta["batch_size"] == 32 and meta["num_examples"] == 400
    assert meta["rule"] == "backprop" and np.isfinite(meta["last_metrics"]["loss"])


def test_resume_when_already_done_trains_nothing(ds, tmp_path):
    a, hist = _run(BP, ds, 6, ckpt_dir=tmp_path, ckpt_every=4, log_every=6)
    b, again = _run(BP, ds, 6, ckpt_dir=tmp_path, resume=True)
    _assert_trees_equal(a, b)
    assert again[0]["step"] == 6
    for k in ("loss", "accuracy", "sg_loss"):
        assert again[0][k].shape == hist[-1][k].shape
        assert np.array_equal(again[0][k], hist[-1][k])


def test_resume_without_checkpoint_starts_fresh(ds, tmp_path):
    a, _ = _run(BP, ds, 4)
    b, _ = _run(BP, ds, 4, ckpt_dir=tmp_path / "new", resume=True)
    _assert_trees_equal(a, b)


def test_guards_against_mixing_runs(ds, tmp_path):
    x, y = ds
    _run(BP, ds, 4, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match=r"already holds checkpoints.*resume=True"):
        _run(BP, ds, 8, ckpt_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size=32, this one has batch_size=16"):
        run_training(
            Run(NET, BP, "xent", _opt(), steps=8, batch_size=16, seed=3),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, resume=True),
        )
    with pytest.raises(ValueError, match="seed"):
        run_training(
            Run(NET, BP, "xent", _opt(), steps=8, batch_size=32, seed=4),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, resume=True),
        )
    wide = nets.mlp([64, 48, 32, 10])
    with pytest.raises(
        ValueError, match=r"params\.0\.W: stored float32\[64, 32\], expected float32\[64, 48\]"
    ):
        run_training(
            Run(wide, BP, "xent", _opt(), steps=8, batch_size=32, seed=3),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, resume=True),
        )
    with pytest.raises(ValueError, match=r"opt_state\.0\.mu\.0\.W: in the checkpoint, not in"):
        run_training(
            Run(NET, BP, "xent", optax.sgd(0.1), steps=8, batch_size=32, seed=3),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, resume=True),
        )
    with pytest.raises(ValueError, match=r"Checkpoints: `every` must be an int ≥ 1, got 0"):
        _run(BP, ds, 4, ckpt_dir=tmp_path / "b", ckpt_every=0)
    with pytest.raises(TypeError, match=r"`checkpoints` must be an sgjax.infra.run.Checkpoints"):
        run_training(Run(NET, BP, "xent", _opt(), steps=4, batch_size=32), x, y,
                     checkpoints=str(tmp_path))  # fmt: skip


def _first_batch_with_nan(x, y, bs, seed):
    for i, (xb, _) in enumerate(train.batches(x, y, bs, seed=seed)):
        if np.isnan(xb).any():
            return i + 1  # 1-based step


def test_nan_input_stops_and_keeps_last_good_checkpoint(ds, tmp_path):
    x, y = ds
    x = x.copy()
    x[123, 5] = np.nan
    bad = _first_batch_with_nan(x, y, 32, 3)
    assert bad > 6  # the fixed seed puts the NaN example after a few good steps
    rule = SG
    with pytest.raises(NonFiniteLossError) as e:
        run_training(
            Run(NET, rule, "xent", _opt(), steps=100, batch_size=32, seed=3),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, ckpt_every=4, keep=5),
        )
    err = e.value
    assert err.step == bad and int(err.state.step) == bad - 1
    assert err.checkpoint_step == bad - 1
    assert str(tmp_path) in str(err) and f"step {bad - 1}" in str(err)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == bad - 1
        target = abstract_state(train.init, jax.random.key(3), NET, rule, _opt())
        for s in ckpt.steps():
            state, meta = ckpt.restore(target, step=s)
            assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state))
            assert np.isfinite(meta["last_metrics"]["loss"])
        last, _ = ckpt.restore(target)
    _assert_trees_equal(last, err.state)


def _bomb(at: int, lr: float = 1e-2) -> optax.GradientTransformation:
    """SGD whose update at count == ``at`` is infinite although the gradient is finite."""

    def init(params):
        del params
        return jnp.zeros((), jnp.int32)

    def update(g, count, params=None):
        del params
        scale = jnp.where(count == at, jnp.inf, -lr)
        return jax.tree.map(lambda v: v * scale, g), count + 1

    return optax.GradientTransformation(init, update)


def test_an_overflowing_update_is_caught_before_it_reaches_the_state(ds, tmp_path):
    """Finite gradients, infinite update (at step 6): the step reports it as non-finite
    (it checks the updated parameters too), so the state is never NaN and the last good
    state (step 5) is checkpointed beside the regular step-4 checkpoint."""
    x, y = ds
    with pytest.raises(NonFiniteLossError) as e:
        run_training(
            Run(NET, BP, "xent", _bomb(at=5), steps=50, batch_size=32, seed=3),
            x,
            y,
            **runner_args(ckpt_dir=tmp_path, ckpt_every=4),
        )
    assert e.value.step == 6 and e.value.checkpoint_step == 5
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [4, 5]
        state, _ = ckpt.restore(abstract_state(train.init, jax.random.key(3), NET, BP, _bomb(5)))
        assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state))
        # And directly: saving a NaN state is refused and changes nothing.
        bad = jax.tree.map(lambda v: v * np.nan if v.dtype.kind == "f" else v, e.value.state)
        with pytest.raises(NonFiniteStateError, match="refusing to checkpoint step 5"):
            ckpt.save(bad)
        assert ckpt.steps() == [4, 5]


def test_leftover_temporary_directory_is_ignored(ds, tmp_path):
    """A save killed midway leaves a temporary directory; it is not taken for a checkpoint."""
    _run(BP, ds, 4, ckpt_dir=tmp_path, ckpt_every=4)
    tmp = tmp_path / "8.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"half a file")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.steps() == [4]
    assert not tmp.exists()  # cleaned up when the directory is opened


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, optax
    from sgjax import nets, rules
    from sgjax.infra import data
    from sgjax.infra.runner import Checkpoints, Run, run_training
    d = data.load("digits")
    run = Run(nets.mlp([64, 32, 32, 10]),
              rules.synthetic_gradients(sg_optimizer=optax.adam(1e-3)), "xent",
              optax.adam(3e-3), steps=10**7, batch_size=32, seed=3)
    run_training(run, d.x_train[:400], d.y_train[:400],
                 checkpoints=Checkpoints(sys.argv[1], every=3, keep=2))
    """
)


def _finished_steps(d: Path) -> list[int]:
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.slow  # a second Python process that imports JAX and compiles: ~10 s
def test_sigkill_mid_run_then_resume_is_bit_identical(ds, tmp_path):
    script = tmp_path / "long_run.py"
    script.write_text(KILL_SCRIPT)
    ckpt_dir = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpt_dir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not [s for s in _finished_steps(ckpt_dir) if s >= 12]:
            if proc.poll() is not None:
                pytest.fail(f"the training subprocess died: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint ≥ 12 within 120 s")
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no cleanup, possibly in the middle of a save
        proc.wait()
    rule = SG
    with Checkpointer(ckpt_dir) as ckpt:
        latest = ckpt.latest_step()
    assert latest is not None and latest >= 12
    target = latest + 7  # a few steps past the newest checkpoint, not on a save boundary
    resumed, _ = _run(rule, ds, target, ckpt_dir=ckpt_dir, ckpt_every=3, keep=2, resume=True)
    full, _ = _run(rule, ds, target)
    _assert_trees_equal(full, resumed)


def test_a_checkpoint_of_the_older_layout_is_refused_naming_the_sg_optimiser_state(ds, tmp_path):
    """Before the SG rule owned its optimiser, ``TrainState`` held ``sg_opt_state`` beside
    the rule state. Such a checkpoint is refused with an error that says so (restore and
    ``--resume`` alike), not with orbax's tree mismatch. (Planted: without the layout
    check the generic "does not match the requested state" error comes → red.)"""
    from typing import Any, NamedTuple

    from sgjax.infra.checkpoint import OlderLayoutError

    class OldRuleState(NamedTuple):
        params: Any
        fixed: Any

    class OldTrainState(NamedTuple):
        step: Any
        params: Any
        opt_state: Any
        rule_state: Any
        sg_opt_state: Any

    new = train.init(jax.random.key(3), NET, SG, OPT)
    modules = new.rule_state.params
    old = OldTrainState(new.step, new.params, new.opt_state, OldRuleState(modules, ()),
                        SG_OPT.init(modules))  # fmt: skip
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(old, {"seed": 3})
        with pytest.raises(OlderLayoutError, match=r"`sg_opt_state`.*rule_state.opt_state"):
            ckpt.restore(new)
    with pytest.raises(OlderLayoutError, match="older sgjax"):
        _run(SG, ds, 4, ckpt_dir=tmp_path, resume=True)
