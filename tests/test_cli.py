"""The ``sgjax`` command line: ``sgjax train`` for each rule, JSON output, argument errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sgjax import rules
from sgjax.apps import cli
from sgjax.infra.config import RuleConfig, RunConfig

RULES = tuple(rules.RULES)  # every registered rule


@pytest.mark.parametrize("rule", RULES)
def test_train_each_rule_writes_json(tmp_path, capsys, rule):
    out = tmp_path / f"{rule}.json"
    code = cli.main(
        [
            "train",
            "--rule",
            rule,
            "--dataset",
            "digits",
            "--steps",
            "40",
            "--depth",
            "2",
            "--width",
            "32",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("rule", "steps", "final_loss", "train_accuracy", "test_accuracy"):
        assert key in result
    assert result["rule"] == rule and result["steps"] == 40
    # The JSON records the options the rule ran with (sg-prop: its α, not null).
    assert result["config"]["rule"] == RuleConfig.of(rule).to_dict()
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert "test acc" in capsys.readouterr().out


def test_train_backprop_learns_the_digits(tmp_path):
    out = tmp_path / "bp.json"
    assert (
        cli.main(
            [
                "train",
                "--rule",
                "backprop",
                "--steps",
                "150",
                "--depth",
                "1",
                "--width",
                "64",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["test_accuracy"] > 0.9


def test_cosine_flag_reports_one_value_per_hidden_boundary(tmp_path):
    out = tmp_path / "c.json"
    assert (
        cli.main(
            [
                "train",
                "--rule",
                "sg",
                "--steps",
                "20",
                "--depth",
                "3",
                "--width",
                "16",
                "--cosine",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert len(json.loads(out.read_text())["cosine"]) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "0"], "--lr must be a finite number > 0, got 0"),
        (["--sg-lr=-1e-3"], "--sg-lr must be a finite number > 0, got -1e-3"),
        (["--rule", "rprop"], "invalid choice: 'rprop'"),
        (["--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["--sg-at", "top"], "--sg-at must be 'all', 'middle', 'output'"),
        # seeds past JAX's 32-bit keys would repeat another seed's network (issue 27)
        (
            ["--seed", str(2**32)],
            f"--seed must be an integer in 0..{2**32 - 1}, got {2**32} "
            "(JAX keys hold 32 bits: seed 4294967296 would build the same network as seed 0)",
        ),
        (["--seed", str(2**40 + 3)], "would build the same network as seed 3"),
        (["--seed", str(2**64)], f"--seed must be an integer in 0..{2**32 - 1}, got {2**64}"),
        (["--seed", "-1"], f"--seed must be an integer in 0..{2**32 - 1}, got -1"),
        (["--seed", "1.5"], "--seed must be an integer, got '1.5'"),
    ],
)
def test_bad_arguments_name_the_argument(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sg_at_middle_with_no_hidden_layer_is_refused_like_all(capsys):
    """With --depth 0 there is no hidden boundary: `middle` used to mean `output` quietly
    while `all` was refused (issue 27); both are refused now, `output` still runs."""
    for at in ("all", "middle"):
        argv = ["train", "--depth", "0", "--sg-at", at, "--steps", "1", "--no-progress"]
        assert cli.main(argv) == 1
        assert f"--sg-at {at} needs a hidden layer" in capsys.readouterr().err
    assert RunConfig(depth=0, rule=RuleConfig.of("sg", at="output")).depth == 0


def test_every_accepted_seed_gives_its_own_network():
    """The ends of the accepted range build distinct networks; past them, a refusal (from
    code too, naming the argument)."""
    import jax

    from sgjax.infra.config import MAX_SEED, RunConfig, check_seed

    inits = [RunConfig(seed=s).net(4, 3).init(jax.random.key(s)) for s in (0, 1, MAX_SEED)]
    firsts = [np.asarray(jax.tree.leaves(p)[0]) for p in inits]
    assert not np.array_equal(firsts[0], firsts[2]) and not np.array_equal(firsts[0], firsts[1])
    for bad in (-1, MAX_SEED + 1, 2**64, True, 1.0):
        with pytest.raises(ValueError, match="seed"):
            check_seed(bad)
        with pytest.raises(ValueError, match=r"`seed` \(--seed\) must be an integer"):
            RunConfig(seed=bad)


def test_library_errors_become_one_line_messages(capsys):
    assert cli.main(["train", "--dataset", "imagenet", "--steps", "1", "--no-progress"]) == 1
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    assert cli.main(["train", "--rule", "backprop", "--prop", "0.3", "--no-progress"]) == 1
    assert "--prop applies to --rule sg, sg-prop; not to --rule backprop" in capsys.readouterr().err


def test_module_entry_point_lists_the_commands():
    res = subprocess.run(
        [sys.executable, "-m", "sgjax", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0
    for name in ("train", "verify", "reproduce", "bench"):
        assert name in res.stdout
