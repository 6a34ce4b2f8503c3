"""Tests of the update-unlocked pipeline (:mod:`sgjax.pipeline`).

The multi-device checks need fake CPU devices, which must be configured before JAX
starts, while the rest of the suite runs in one process with one device. So this file
runs *itself* as a script in a child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the child computes every
multi-device comparison once and prints them as JSON, and the tests below assert on
them. Single-device checks (the schedule's semantics, errors, N = 1) run in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import data, losses, nets, pipeline, rules, train

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6  # float32, a few dozen ops deep


def _net(widths, activations):
    return nets.network(
        [nets.dense(a, b, act) for a, b, act in zip(widths[:-1], widths[1:], activations)]
    )


def _max_err(a, b) -> float:
    """max |a − b| − (ATOL + RTOL |b|) over all leaves: ≤ 0 means allclose."""
    errs = jax.tree.map(
        lambda u, v: (
            -1.0
            if np.size(v) == 0
            else float(
                np.max(
                    np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))
                    - (ATOL + RTOL * np.abs(np.asarray(v, np.float64)))
                )
            )
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(errs), default=-1.0)


def _stream(seed, ticks, batch, d_in, classes):
    rng = np.random.default_rng(seed)  # host data: no device dispatch per draw
    return (
        rng.standard_normal((ticks, batch, d_in)).astype(np.float32),
        rng.integers(0, classes, (ticks, batch)).astype(np.int32),
    )


# --------------------------------------------------------------------------------------
# The child process: every comparison that needs several devices.


def _child() -> dict:
    assert len(jax.devices()) == 4, jax.devices()
    out: dict = {}
    # Stages of unequal width and kind (tanh / relu + LayerNorm / tanh / linear).
    net4 = nets.network(
        [
            nets.dense(6, 10, "tanh"),
            nets.dense(10, 7, "relu", norm="layer"),
            nets.dense(7, 12, "tanh"),
            nets.dense(12, 3, "identity"),
        ]
    )
    net2 = _net([6, 9, 3], ["relu", "identity"])
    for name, net in (("sg4", net4), ("sg2", net2)):
        n, batch, ticks = net.depth, 5, 9
        pipe = pipeline.sg_pipeline(net, "xent", optax.adam(1e-2), optax.sgd(0.1))
        state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=batch)
        xs, ys = _stream(1, ticks, batch, 6, 3)
        ref, m_ref = jax.jit(lambda s, x, y, p=pipe: pipeline.sg_reference(p, s, x, y))(
            state, xs, ys
        )
        runner = pipeline.sg_on_mesh(pipe, pipeline.make_mesh(n), batch_size=batch)
        packed, m_mesh = runner.run(runner.pack(state), xs, ys)
        # A second call continues the stream: the pipeline does not drain between calls.
        xs2, ys2 = _stream(2, 4, batch, 6, 3)
        ref, m_ref2 = pipeline.sg_reference(pipe, ref, xs2, ys2)
        packed, m_mesh2 = runner.run(packed, xs2, ys2)
        mesh_state = runner.unpack(packed)
        out[name] = {
            "state_err": _max_err(mesh_state, ref),
            "metrics_err": _max_err((m_mesh, m_mesh2), (m_ref, m_ref2)),
            "sg_moved": max(float(np.abs(x).max()) for x in jax.tree.leaves(ref.sg_params)),
            "done": int(np.sum(m_ref["done"])) + int(np.sum(m_ref2["done"])),
            "ticks": ticks + 4,
            "n": n,
        }

    # The backprop pipeline against ordinary backprop on the M·B examples.
    M, batch = 3, 5
    opt = optax.adam(1e-2)
    state = pipeline.init_bp(net4, opt, jax.random.key(3))
    xs, ys = _stream(4, M, batch, 6, 3)
    gp = pipeline.gpipe_on_mesh(
        net4, "xent", opt, pipeline.make_mesh(4), batch_size=batch, micro_batches=M
    )
    packed = gp.pack(state)
    grads, value = gp.gradients(packed, xs, ys)
    x_all, y_all = xs.reshape(M * batch, 6), ys.reshape(-1)
    true_value, true_grads = jax.value_and_grad(
        lambda p: losses.softmax_cross_entropy.fn(net4.apply(p, x_all), y_all)
    )(state.params)
    rule_out = jax.jit(
        lambda p: rules.backprop().gradients(
            rules.RuleState(), net4, p, x_all, y_all, losses.softmax_cross_entropy
        )
    )(state.params)
    packed, metrics = gp.run(packed, xs, ys)
    stepped = gp.unpack(packed)
    expected = tuple(
        optax.apply_updates(th, opt.update(g, o, th)[0])
        for th, g, o in zip(state.params, true_grads, state.opt_state)
    )
    out["gpipe"] = {
        "grad_err": _max_err(grads, true_grads),
        "rule_grad_err": _max_err(grads, rule_out.grads),
        "loss_err": _max_err(value, true_value),
        "step_loss_err": _max_err(metrics["loss"], true_value),
        "update_err": _max_err(stepped.params, expected),
        "grad_norm": sum(float(np.abs(g).sum()) for g in jax.tree.leaves(true_grads)),
    }

    # Mismatch between stages and devices.
    try:
        pipeline.sg_on_mesh(
            pipeline.sg_pipeline(_net([6, 5, 4, 3], ["relu", "relu", "identity"])),
            pipeline.make_mesh(4),
            batch_size=2,
        )
        out["mismatch"] = "no error"
    except ValueError as e:
        out["mismatch"] = str(e)

    # The SG pipeline learns: digits, 4 stages on 4 devices, a short run.
    ds = data.load("digits")
    r = pipeline.train_pipelined(
        "sg-pipeline",
        nets.mlp([64, 128, 128, 128, 10]),
        ds.x_train,
        ds.y_train,
        steps=300,
        batch_size=32,
        chunk=50,
        lr=3e-3,
        sg_lr=3e-3,
        x_test=ds.x_test,
        y_test=ds.y_test,
    )
    out["learns"] = {k: r[k] for k in ("test_accuracy", "updates", "micro_batches_seen")}
    return out


@pytest.fixture(scope="module")
def multi() -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["sg4", "sg2"])
def test_sg_pipeline_on_mesh_equals_single_device_reference(multi, name):
    r = multi[name]
    assert r["state_err"] <= 0, r  # params, optimiser states, SG modules, buffers
    assert r["metrics_err"] <= 0, r
    assert r["sg_moved"] > 0, "the SG modules never trained: the comparison is vacuous"
    # Micro-batch m finishes at tick m + N − 1.
    assert r["done"] == r["ticks"] - (r["n"] - 1)


def test_gpipe_equals_ordinary_backprop(multi):
    r = multi["gpipe"]
    assert r["grad_norm"] > 0
    assert r["grad_err"] <= 0, r
    assert r["rule_grad_err"] <= 0, r
    assert r["loss_err"] <= 0 and r["step_loss_err"] <= 0, r
    assert r["update_err"] <= 0, r


def test_stage_device_mismatch_is_a_clear_error(multi):
    assert "3 stages but the mesh has 4 devices" in multi["mismatch"]


def test_sg_pipeline_learns_digits(multi):
    r = multi["learns"]
    assert r["updates"] == r["micro_batches_seen"] == 300
    assert r["test_accuracy"] > 0.8, r  # chance is 0.1


# --------------------------------------------------------------------------------------
# Single-device checks.


def test_frozen_sg_pipeline_equals_sequential_dni():
    """The staleness is only in the SG modules: freeze them and the pipeline's updates
    are exactly those of sequential DNI, micro-batch by micro-batch."""
    net = _net([6, 8, 7, 3], ["tanh", "relu", "identity"])
    n, batch, ticks = net.depth, 4, 6
    frozen = optax.sgd(0.0)
    opt = optax.adam(1e-2)
    pipe = pipeline.sg_pipeline(net, "xent", opt, frozen)
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=batch)
    rng = np.random.default_rng(5)
    phi = tuple(  # non-zero SG modules, so that the hidden stages do train
        jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32), p)
        for p in state.sg_params
    )
    state = state._replace(sg_params=phi)
    xs, ys = _stream(6, ticks, batch, 6, 3)
    state, m = pipeline.sg_reference(pipe, state, xs, ys)
    run = lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v)  # noqa: E731
    state, m_flush = pipeline.flush(run, state, n, xs[0], ys[0])

    rule = rules.synthetic_gradients()
    seq = train.init(jax.random.key(0), net, rule, opt, frozen)  # the same θ as init_sg
    initial = seq.params
    seq = seq._replace(rule_state=seq.rule_state._replace(params=phi))
    step = jax.jit(train.make_step(net, rule, "xent", opt, frozen))
    seq_losses = []
    for t in range(ticks):
        seq, metrics = step(seq, (xs[t], ys[t]))
        seq_losses.append(metrics["loss"])
    pipe_losses = np.concatenate([m["loss"][m["done"]], m_flush["loss"][m_flush["done"]]])
    assert len(pipe_losses) == ticks
    assert _max_err(pipe_losses, np.asarray(seq_losses)) <= 0
    assert _max_err(state.params, seq.params) <= 0
    # Not vacuous: every stage, the first included, moved away from its initial value.
    for now, before in zip(state.params, initial):
        assert float(np.abs(np.asarray(now["W"]) - np.asarray(before["W"])).max()) > 1e-4


def test_one_stage_mesh_runs_in_process():
    # A 1-stage network on a 1-device mesh: the mesh code path without fake devices.
    net = _net([5, 3], ["identity"])
    pipe = pipeline.sg_pipeline(net, "mse", optax.sgd(0.1))
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=4)
    xs, ys = _stream(1, 3, 4, 5, 3)
    ref, m_ref = pipeline.sg_reference(pipe, state, xs, ys)
    runner = pipeline.sg_on_mesh(pipe, pipeline.make_mesh(1), batch_size=4)
    packed, m_mesh = runner.run(runner.pack(state), xs, ys)
    assert _max_err(runner.unpack(packed), ref) <= 0
    assert _max_err(m_mesh, m_ref) <= 0
    assert bool(m_ref["done"].all())


def test_one_stage_gpipe_equals_backprop():
    net = _net([5, 3], ["identity"])
    opt = optax.sgd(0.1)
    state = pipeline.init_bp(net, opt, jax.random.key(0))
    xs, ys = _stream(1, 2, 4, 5, 3)
    gp = pipeline.gpipe_on_mesh(
        net, "xent", opt, pipeline.make_mesh(1), batch_size=4, micro_batches=2
    )
    grads, _ = gp.gradients(gp.pack(state), xs, ys)
    true = jax.grad(
        lambda p: losses.softmax_cross_entropy.fn(net.apply(p, xs.reshape(8, 5)), ys.reshape(-1))
    )(state.params)
    assert _max_err(grads, true) <= 0


def test_errors_name_the_argument():
    net = _net([5, 4, 3], ["relu", "identity"])
    pipe = pipeline.sg_pipeline(net)
    with pytest.raises(ValueError, match="2 stages but the mesh has 1 devices"):
        pipeline.sg_on_mesh(pipe, pipeline.make_mesh(1), batch_size=2)
    with pytest.raises(ValueError, match="device_count=64"):
        pipeline.make_mesh(64)
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=2)
    with pytest.raises(ValueError, match="`xs`"):
        pipeline.sg_reference(pipe, state, jnp.ones((3, 2, 6)), jnp.zeros((3, 2), int))
    with pytest.raises(ValueError, match="`ys`"):
        pipeline.sg_reference(pipe, state, jnp.ones((3, 2, 5)), jnp.zeros((2, 2), int))
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.init_sg(pipe, jax.random.key(0), batch_size=0)
    with pytest.raises(ValueError, match="method"):
        pipeline.train_pipelined("pipedream", net, np.ones((4, 5)), np.zeros(4, int), steps=1)


if __name__ == "__main__":
    print(json.dumps(_child()))
