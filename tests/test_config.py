"""The run configuration and the CLI around it: resume compares it (issue 12.1), options
that would be ignored are refused (12.6), Ctrl-C stops cleanly (12.9), wording (12.15)."""

from __future__ import annotations

import argparse
import json

import pytest

from sgjax import train
from sgjax.apps import cli, train_command
from sgjax.infra import config
from sgjax.infra.checkpoint import Checkpointer

SMALL = ["--dataset", "digits", "--depth", "1", "--width", "16", "--no-progress"]


def _train(*argv):
    return cli.main(["train", *SMALL, *argv])


def test_resume_refuses_changed_options_naming_each_field(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert _train("--steps", "6", "--checkpoint-every", "3", "--checkpoint-dir", str(ck)) == 0
    capsys.readouterr()
    code = _train(
        "--steps",
        "9",
        "--checkpoint-dir",
        str(ck),
        "--resume",
        "--activation",
        "tanh",
        "--lr",
        "0.5",
        "--targets",
        "true",
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "activation: relu → tanh" in err
    assert "optimizer: {name=adam, learning_rate=0.001} → {name=adam, learning_rate=0.5}" in err
    assert "targets=bootstrap" in err and "targets=true" in err
    assert "may change only --steps (upward)" in err
    # Going back is refused too; going up resumes, says so, and ends at the new total.
    assert _train("--steps", "3", "--checkpoint-dir", str(ck), "--resume") == 1
    assert "the checkpoint is at step 6, past the 3 asked for" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert _train("--steps", "9", "--checkpoint-dir", str(ck), "--resume", "--json", str(out)) == 0
    assert "resumed from step 6" in capsys.readouterr().out
    assert json.loads(out.read_text())["steps"] == 9
    with Checkpointer(ck) as c:
        assert c.latest_step() == 9


def test_resume_on_an_empty_directory_says_so(tmp_path, capsys):
    assert _train("--steps", "2", "--checkpoint-dir", str(tmp_path / "e"), "--resume") == 0
    assert "no checkpoint in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--rule", "dfa", "--estimator", "mlp"],
            "--estimator applies to --rule sg, sg-prop; not to --rule dfa",
        ),
        (
            ["--rule", "dfa", "--sg-at", "middle"],
            "--sg-at applies to --rule sg, sg-prop; not to --rule dfa",
        ),
        (
            ["--rule", "fa", "--targets", "true"],
            "--targets applies to --rule sg, sg-prop; not to --rule fa",
        ),
        (
            ["--rule", "dfa", "--sg-lr", "5"],
            "--sg-lr applies to --rule sg, sg-prop; not to --rule dfa",
        ),
        (
            ["--rule", "backprop", "--sg-optimizer", "sgd"],
            "--sg-optimizer applies to --rule sg, sg-prop; not to --rule backprop",
        ),
        (
            ["--train-size", "10"],
            "--train-size applies to --dataset mnist, fashion_mnist; not to --dataset digits",
        ),
        (["--micro-batches", "2"], "--micro-batches applies only with --pipeline N"),
        (
            ["--batch-size", "100000"],
            "--batch-size 100000 is larger than the 1438 training examples of digits",
        ),
    ],
)
def test_options_that_would_be_ignored_are_refused(capsys, argv, message):
    assert _train("--steps", "1", *argv) == 1
    assert message in capsys.readouterr().err


def test_optimizer_is_part_of_the_configuration():
    c = config.from_flags({"rule": "sg", "optimizer": "sgd", "lr": 0.1, "sg_lr": 0.01})
    assert c.optimizer.to_dict() == {"name": "sgd", "learning_rate": 0.1}
    assert c.sg_optimizer is not None and c.sg_optimizer.learning_rate == 0.01
    assert config.from_flags({"rule": "dfa"}).sg_optimizer is None


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real = train.batches

    def interrupted_after_4(*args, **kwargs):
        for i, b in enumerate(real(*args, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(train, "batches", interrupted_after_4)
    ck = tmp_path / "ck"
    code = _train("--steps", "50", "--checkpoint-dir", str(ck))
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted after step 4; checkpoint of step 4 saved in" in err
    assert "--resume" in err and "Traceback" not in err
    with Checkpointer(ck) as c:
        assert c.latest_step() == 4
    # Without a checkpoint directory: said, nothing saved.
    assert _train("--steps", "50") == 130
    assert "nothing was saved (no --checkpoint-dir)" in capsys.readouterr().err


def test_an_unknown_flag_prints_the_sub_commands_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--foo"])
    err = capsys.readouterr().err
    assert "usage: sgjax train" in err and "unrecognized arguments: --foo" in err


def _helps(add_arguments) -> dict[str, str]:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return {
        a.option_strings[-1]: a.help or ""
        for a in p._actions
        if a.option_strings and a.option_strings[0] != "-h"
    }


def test_every_train_flag_shows_its_default_and_dataset_lists_the_datasets():
    helps = _helps(train_command.add_arguments)
    missing = [flag for flag, h in helps.items() if "default" not in h]
    assert not missing, f"flags whose help does not give the default: {missing}"
    assert "digits" in helps["--dataset"] and "mnist" in helps["--dataset"]
    assert "sg-prop" in helps["--rule"]


def test_reproduce_and_bench_flags_show_their_defaults():
    from sgjax.apps import bench, reproduce

    helps = _helps(reproduce.add_arguments)
    assert "default: smoke" in helps["--scale"]
    for add in (reproduce.add_arguments, bench.add_arguments):
        missing = [flag for flag, h in _helps(add).items() if "default" not in h]
        assert not missing, f"flags whose help does not give the default: {missing}"


def test_library_resume_compares_the_stored_configuration(tmp_path):
    import optax

    from sgjax import nets, rules
    from sgjax.infra import data
    from sgjax.infra.run import Checkpoints, Hooks, Run
    from sgjax.infra.runner import StepCache, run_training

    ds = data.load("linear2")
    net, rule, opt = nets.mlp([2, 8, 2]), rules.get("sg"), optax.adam(1e-2)
    cache, said = StepCache(), []

    def run(d, steps, cfg, resume=False):
        return run_training(
            Run(net, rule, "xent", opt, steps=steps, batch_size=10, config=cfg),
            ds.x_train,
            ds.y_train,
            checkpoints=Checkpoints(tmp_path / d, resume=resume),
            hooks=Hooks(log=said.append, step_cache=cache),
        )

    cfg = config.RunConfig(width=8, depth=1, steps=4)
    run("a", 4, cfg)
    with pytest.raises(ValueError, match=r"width: 8 → 9"):
        run("a", 6, config.RunConfig(width=9, depth=1, steps=6), resume=True)
    state, _ = run("a", 6, config.RunConfig(width=8, depth=1, steps=6), resume=True)
    assert int(state.step) == 6 and said[-1].startswith("resumed from step 4")
    # A checkpoint written without a configuration: said, and `steps` still cannot go back.
    run("b", 4, None)
    run("b", 5, cfg, resume=True)
    assert "stores no run configuration" in said[-2]
    with pytest.raises(ValueError, match=r"the checkpoint is at step 5, past the 3 steps"):
        run("b", 3, None, resume=True)


def test_verify_list_describes_every_claim_with_a_rough_cost(capsys):
    from theory.registry import CLAIMS

    assert cli.main(["verify", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in CLAIMS:
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        about = line[len(name) :].split("[")[0].strip()
        assert len(about) > 10, line  # a one-line description
        assert any(f"cost: {c}]" in line for c in ("light", "medium", "heavy")), line


def test_an_interrupted_reproduce_names_the_cache_checkpoints_not_checkpoint_dir(
    tmp_path, capsys, monkeypatch
):
    """`sgjax reproduce` has no --checkpoint-dir: the message says what it does keep."""
    from sgjax.apps import reproduce

    def stopped(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "run", stopped)
    assert cli.main(["reproduce", "fig3", "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert "every 2000 steps in the cache directory" in err
    assert "--checkpoint-dir" not in err and "Traceback" not in err


def test_sg_update_reaches_the_step_and_is_refused_where_it_means_nothing(tmp_path, capsys):
    """--sg-update every-step: the SG modules train while their stages are skipped."""
    import jax
    import numpy as np
    import optax

    from sgjax import nets, rules
    from sgjax.infra import runner

    net = nets.mlp([4, 8, 3])
    rule = rules.synthetic_gradients("conditioned", at="all")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
    opt = train.stagewise(optax.adam(1e-2))
    start = train.init(jax.random.key(0), net, rule, opt).rule_state.params
    ends = {}
    for policy in ("with-stage", "every-step"):  # p = 0.001: no stage updates in 3 steps
        run = runner.Run(net, rule, "xent", opt, steps=3, batch_size=16, p_update=0.001,
                         sg_update=policy)  # fmt: skip
        state, _ = runner.run_training(run, x, y)
        ends[policy] = state

    def same(a, b):
        return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert same(ends["with-stage"].rule_state.params, start)
    assert not same(ends["every-step"].rule_state.params, start)
    assert same(ends["with-stage"].params, ends["every-step"].params)  # no stage moved
    # the CLI records it; where it would mean nothing it is refused naming both flags
    out = tmp_path / "run.json"
    args = ("--p-update", "0.5", "--sg-update", "every-step", "--steps", "4")
    assert _train(*args, "--json", str(out)) == 0
    assert json.loads(out.read_text())["config"]["sg_update"] == "every-step"
    assert _train("--sg-update", "every-step", "--steps", "4") == 1
    assert "--sg-update decides what --p-update < 1 does" in capsys.readouterr().err
    assert _train("--rule", "backprop", "--p-update", "0.5", "--sg-update", "every-step") == 1
    assert "--rule backprop" in capsys.readouterr().err
