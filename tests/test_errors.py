"""Misuse of the library API gets a message naming the argument, expected and actual
(issue 12, items 3, 5, 10, 11, 12, 14): out-of-range labels inside jit, parameters or
rule state of another network, x/y size mismatches, bad batch sizes, and which part of a
step became non-finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import nets, rules, train

NET = nets.mlp([6, 8, 4])
OPT = optax.adam(1e-2)


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 6)), jnp.float32), jnp.asarray(rng.integers(0, 4, n))


@pytest.fixture(scope="module")
def sg():
    rule = rules.synthetic_gradients()
    state = train.init(jax.random.key(0), NET, rule, OPT)
    return rule, state, jax.jit(train.make_step(NET, rule, "xent", OPT))


@pytest.mark.parametrize("bad", [4, -1])
def test_out_of_range_labels_are_refused_inside_jit(sg, bad):
    _, state, step = sg
    x, y = _batch()
    new, m = step(state, (x, y.at[3].set(bad)))
    assert int(m["bad_labels"]) == 1
    # the update was refused: the state is the one the step started from
    for u, v in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    with pytest.raises(train.BadLabelsError, match=r"step 5: 1 label\(s\) .* outside"):
        train.check_step(m, step=5)
    # a good batch is applied, and check_step lets it through
    new, m = step(state, (x, y))
    assert int(m["bad_labels"]) == 0 and int(new.step) == 1
    train.check_step(m, step=1)


def test_check_step_on_vmapped_metrics_and_non_finite():
    ok = {"finite": np.array([True, True]), "bad_labels": np.array([0, 0]), "loss": np.ones(2)}
    train.check_step(ok)
    with pytest.raises(train.NonFiniteLossError, match=r"^a step: .*non-finite"):
        train.check_step({**ok, "finite": np.array([True, False])})
    with pytest.raises(train.BadLabelsError, match=r"3 label"):
        train.check_step({**ok, "bad_labels": np.array(3)})


def test_check_step_names_the_failing_seed_with_its_own_loss_and_labels():
    """Vmapped metrics (issue 27, case 8): the seed that failed is named with its own
    loss (not seed 0's finite one) and the bad labels are counted per seed."""
    ok = {"finite": np.array([True, True, True]), "bad_labels": np.array([0, 0, 0]),
          "loss": np.array([0.5, 0.7, 0.9])}  # fmt: skip
    train.check_step(ok)
    bad = {**ok, "finite": np.array([True, False, True]),
           "loss": np.array([0.5, np.inf, 0.9])}  # fmt: skip
    with pytest.raises(train.NonFiniteLossError) as err:
        train.check_step(bad, step=4)
    msg = str(err.value)
    assert "seed index 1 (of 3 vmapped seeds; losses: inf)" in msg and "0.5" not in msg
    assert err.value.loss == np.inf and err.value.seeds == [1]
    with pytest.raises(train.BadLabelsError) as err2:
        train.check_step({**ok, "bad_labels": np.array([0, 3, 2])}, step=4)
    assert "seed index 1: 3, seed index 2: 2; of 3 vmapped seeds" in str(err2.value)


def test_evaluate_checks_params_against_the_network():
    x, y = np.zeros((5, 6), np.float32), np.zeros(5, np.int32)
    deeper = nets.mlp([6, 8, 8, 4]).init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"`params`: expected one entry per stage .* \(2\), got 3"):
        train.evaluate(NET, deeper, "xent", x, y)
    wider = nets.mlp([6, 16, 4]).init(jax.random.key(0))  # same depth: used to "work"
    with pytest.raises(ValueError, match=r"\[0\]\['W'\]: \(6, 16\), the network needs \(6, 8\)"):
        train.evaluate(NET, wider, "xent", x, y)
    seeds = jax.vmap(NET.init)(jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match=r"look vmapped: .* leading axis of size 3"):
        train.evaluate(NET, seeds, "xent", x, y)
    with pytest.raises(ValueError, match=r"`batch_size` must be an int ≥ 1, got 0"):
        train.evaluate(NET, NET.init(jax.random.key(0)), "xent", x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"`x` holds 5 examples but `y` holds 4"):
        train.evaluate(NET, NET.init(jax.random.key(0)), "xent", x, y[:4])


def test_x_y_size_mismatch_and_empty_batch_name_both(sg):
    _, state, step = sg
    x, y = _batch()
    with pytest.raises(ValueError, match=r"`x` holds 8 examples but `y` holds 5"):
        step(state, (x, y[:5]))
    with pytest.raises(ValueError, match=r"empty \(0 examples\)"):
        step(state, (x[:0], y[:0]))
    xs, ys = np.zeros((40, 6), np.float32), np.zeros(30, np.int32)
    with pytest.raises(ValueError, match=r"`x` holds 40 examples but `y` holds 30"):
        train.fit(NET, rules.backprop(), "xent", OPT, xs, ys, steps=1, batch_size=8,
                  key=jax.random.key(0))  # fmt: skip


@pytest.mark.parametrize("batch_size", [32.0, 0, True])
def test_fit_batch_size_must_be_a_positive_int(batch_size):
    xs, ys = np.zeros((40, 6), np.float32), np.zeros(40, np.int32)
    with pytest.raises(
        ValueError, match=rf"`batch_size` must be an int in 1\.\.40 .* got {batch_size!r}"
    ):
        train.fit(NET, rules.backprop(), "xent", OPT, xs, ys, steps=1, batch_size=batch_size,
                  key=jax.random.key(0))  # fmt: skip


def test_rule_state_of_another_network_or_rule_is_named_at_the_rule_entry():
    x, y = _batch()
    params = NET.init(jax.random.key(0))
    sg = rules.synthetic_gradients()
    narrow = sg.init(jax.random.key(1), nets.mlp([6, 5, 4]))
    with pytest.raises(
        ValueError,
        match=r"sg: .*`state.params\[0\]\['A'\]` has shape \(5, 5\), this network needs \(8, 8\)",
    ):
        sg.gradients(narrow, NET, params, x, y, "xent")
    dfa = rules.direct_feedback_alignment()
    with pytest.raises(
        ValueError,
        match=r"dfa: the rule state holds 1 SG module and 0 feedback matrices, but dfa "
        r".* needs 0 SG modules and 1 feedback matrix",
    ):
        dfa.gradients(sg.init(jax.random.key(1), NET), NET, params, x, y, "xent")
    with pytest.raises(ValueError, match=r"sg: the rule state holds 0 SG modules and 1 feedback"):
        sg.gradients(dfa.init(jax.random.key(1), NET), NET, params, x, y, "xent")
    fa_state = rules.feedback_alignment().init(jax.random.key(1), nets.mlp([6, 8, 8, 4]))
    with pytest.raises(ValueError, match=r"fa: the rule state holds 0 SG modules and 2 feedback"):
        rules.feedback_alignment().gradients(fa_state, NET, params, x, y, "xent")
    # and inside a jitted step on a whole TrainState
    state = train.init(jax.random.key(0), NET, sg, OPT)
    step = jax.jit(train.make_step(NET, sg, "xent", OPT))
    with pytest.raises(ValueError, match=r"rule state does not fit this network"):
        step(state._replace(rule_state=narrow), (x, y))


def _fit(net, rule, opt, steps=30):
    rng = np.random.default_rng(1)
    dt = jax.tree.leaves(net.init(jax.random.key(0)))[0].dtype
    xs = rng.normal(size=(64, 6)).astype(dt)
    ys = rng.integers(0, 4, 64).astype(np.int32)
    return train.fit(net, rule, "xent", opt, xs, ys, steps=steps, batch_size=16,
                     key=jax.random.key(0))  # fmt: skip


def test_float16_failure_names_the_updated_parameters_and_what_to_do():
    net16 = nets.mlp([6, 8, 4], dtype=jnp.float16)
    with pytest.raises(train.NonFiniteLossError) as err:
        _fit(net16, rules.backprop(), optax.adam(1e-3))
    msg = str(err.value)
    assert err.value.step == 1 and "the parameters of stage 1 after the update" in msg
    assert "the loss," not in msg  # the loss itself was finite
    assert "float16" in msg and "eps" in msg and "float32" in msg
    # the advice works: the same float16 network trains with eps representable in float16
    state, _ = _fit(net16, rules.backprop(), optax.adam(1e-3, eps=1e-4), steps=5)
    assert int(state.step) == 5


def test_a_diverging_sg_optimiser_is_named_not_called_a_non_finite_loss():
    with pytest.raises(train.NonFiniteLossError) as err:
        _fit(NET, rules.synthetic_gradients(sg_optimizer=optax.sgd(1e38)), optax.sgd(1e-3))
    parts = err.value.parts
    assert "the parameters of SG module 1 after the update" in parts, parts
    assert "the loss" not in parts  # the loss was finite: it was the SG optimiser
