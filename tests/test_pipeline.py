"""Tests of the update-unlocked pipeline (:mod:`sgjax.pipeline`).

The multi-device checks need fake CPU devices, which must be configured before JAX
starts, while the rest of the suite runs in one process with one device. So this file
runs *itself* as a script in a child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the child computes every
multi-device comparison once and prints them as JSON, and the tests below assert on
them. Single-device checks (the schedule's semantics, errors, N = 1) run in-process.
``sgjax train --pipeline 2`` runs in a fresh process of its own, which makes its own
devices; it is also the test that the SG pipeline learns (digits).
"""

from __future__ import annotations

import dataclasses
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
from helpers import pipelined, with_exact_emitters, xla_flags
from jax import lax

from sgjax import losses, nets, pipeline, rules, train, transformer
from sgjax.apps import cli
from sgjax.infra.run import Run

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


def _sequences(seed: int, ticks: int, batch: int, context: int, vocab: int):
    """A stream of next-character micro-batches: one-hot inputs (ticks, batch, context,
    vocab) and flattened one-hot targets (ticks, batch, context · vocab)."""
    ids = np.random.default_rng(seed).integers(0, vocab, (ticks, batch, context + 1))
    xs = np.stack([transformer.inputs(i[:, :-1], vocab) for i in ids])
    ys = np.stack([transformer.targets(i[:, 1:], vocab) for i in ids])
    return xs, ys


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
    n, batch, ticks = net4.depth, 5, 6
    pipe = pipeline.sg_pipeline(net4, "xent", optax.adam(1e-2), optax.sgd(0.1))
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=batch)
    ref_run = jax.jit(lambda s, x, y: pipeline.sg_reference(pipe, s, x, y))
    runner = pipeline.sg_on_mesh(pipe, pipeline.make_mesh(n), batch_size=batch)
    ref, packed, m_ref, m_mesh = state, runner.pack(state), [], []
    # Two calls of equal length (one compilation each): the second continues the stream,
    # since the pipeline does not drain between calls.
    for seed in (1, 2):
        xs, ys = _stream(seed, ticks, batch, 6, 3)
        ref, m = ref_run(ref, xs, ys)
        m_ref.append(m)
        packed, m = runner.run(packed, xs, ys)
        m_mesh.append(m)
    out["sg4"] = {
        "state_err": _max_err(runner.unpack(packed), ref),
        "metrics_err": _max_err(m_mesh, m_ref),
        "sg_moved": max(float(np.abs(x).max()) for x in jax.tree.leaves(ref.sg_params)),
        "done": sum(int(np.sum(m["done"])) for m in m_ref),
        "ticks": 2 * ticks,
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

    @jax.jit
    def expected(st):  # one compilation for all the single-device figures
        value, grads = jax.value_and_grad(
            lambda p: losses.softmax_cross_entropy.fn(net4.apply(p, x_all), y_all)
        )(st.params)
        rule_out = rules.backprop().gradients(
            rules.RuleState(), net4, st.params, x_all, y_all, losses.softmax_cross_entropy
        )
        stepped = tuple(
            optax.apply_updates(th, opt.update(g, o, th)[0])
            for th, g, o in zip(st.params, grads, st.opt_state)
        )
        return value, grads, rule_out.grads, stepped

    true_value, true_grads, rule_grads, expected_params = expected(state)
    packed, metrics = gp.run(packed, xs, ys)
    stepped = gp.unpack(packed)
    out["gpipe"] = {
        "grad_err": _max_err(grads, true_grads),
        "rule_grad_err": _max_err(grads, rule_grads),
        "loss_err": _max_err(value, true_value),
        "step_loss_err": _max_err(metrics["loss"], true_value),
        "update_err": _max_err(stepped.params, expected_params),
        "grad_norm": sum(float(np.abs(g).sum()) for g in jax.tree.leaves(true_grads)),
    }

    # The drain counts: 2 micro-batches in calls of 2 ticks on 4 stages, so no micro-batch
    # reaches the last stage during training; flush finishes both (final loss of 2).
    x_tr, y_tr = _stream(8, 1, 16, 6, 3)
    r = pipelined("sg-pipeline", net4, x_tr[0], y_tr[0], steps=2, batch_size=4, chunk=2)
    out["drain"] = {k: r[k] for k in ("final_loss", "final_loss_micro_batches")}
    # The non-finite guard on 4 stages: a huge learning rate.
    for method in ("sg-pipeline", "gpipe"):
        try:
            pipelined(
                method, net4, x_tr[0], y_tr[0], steps=8, batch_size=4, chunk=4,
                micro_batches=2, optimizer=optax.adam(1e30),
            )  # fmt: skip
            out[f"guard_{method}"] = {"error": None}
        except pipeline.PipelineNonFiniteError as e:
            out[f"guard_{method}"] = {
                "error": str(e),
                "stage": e.stage,
                "params_finite": all(bool(np.isfinite(a).all()) for a in jax.tree.leaves(e.params)),
            }

    # SG modules at some boundaries: 5 stages cut at boundary 2 into 2 devices' groups.
    net5 = _net([6, 8, 7, 5, 4, 3], ["tanh", "relu", "tanh", "relu", "identity"])
    gpipe_ = pipeline.sg_pipeline(nets.group(net5, [2]), "xent", optax.adam(1e-2), optax.sgd(0.1))
    gstate = pipeline.init_sg(gpipe_, jax.random.key(4), batch_size=4)
    grun = pipeline.sg_on_mesh(gpipe_, pipeline.make_mesh(2), batch_size=4)
    xs, ys = _stream(11, 5, 4, 6, 3)
    gref, _ = jax.jit(lambda s, x, y: pipeline.sg_reference(gpipe_, s, x, y))(gstate, xs, ys)
    gpacked, _ = grun.run(grun.pack(gstate), xs, ys)
    x5, y5 = _stream(12, 1, 24, 6, 3)
    r = pipelined(
        "sg-pipeline", net5, x5[0], y5[0], steps=6, batch_size=4, chunk=3, at=(2,),
        mesh=pipeline.make_mesh(2),
    )  # fmt: skip
    out["grouped"] = {
        "state_err": _max_err(grun.unpack(gpacked), gref),
        "sg_moved": max(float(np.abs(x).max()) for x in jax.tree.leaves(gref.sg_params)),
        "stages": r["stages"],
        "sg_at": r["sg_at"],
        "param_shapes": [[list(np.shape(a)) for a in jax.tree.leaves(p)] for p in r["params"]],
        "net_shapes": [
            [list(np.shape(a)) for a in jax.tree.leaves(p)] for p in net5.init(jax.random.key(0))
        ],
    }

    # A transformer LM (sgjax.transformer) cut into 2 groups at boundary 2: the mesh equals
    # its single-device schedule, and the driver trains it from token sequences.
    lm = transformer.char_lm(vocab=5, context=6, width=8, blocks=2, heads=2)
    est = transformer.positionwise(use_y=True)
    # SGD, not Adam: Adam's first step is ≈ lr · g/|g| per component, so a gradient
    # component near zero turns float-level differences of the two programs into
    # lr-sized ones (3e-4 here with Adam 1e-2; ≤ 2e-7 with SGD).
    tpipe = pipeline.sg_pipeline(nets.group(lm, [2]), transformer.sequence_xent,
                                 optax.sgd(0.5), optax.sgd(0.1), estimator=est)  # fmt: skip
    tstate = pipeline.init_sg(tpipe, jax.random.key(5), batch_size=4)
    txs, tys = _sequences(13, 5, 4, 6, 5)
    tref, _ = jax.jit(lambda s, x, y: pipeline.sg_reference(tpipe, s, x, y))(tstate, txs, tys)
    trun = pipeline.sg_on_mesh(tpipe, pipeline.make_mesh(2), batch_size=4)
    tpacked, _ = trun.run(trun.pack(tstate), txs, tys)
    what = Run(lm, rules.synthetic_gradients(est, at=(2,)), transformer.sequence_xent,
               optax.adam(1e-2), steps=6, batch_size=4)  # fmt: skip
    r = pipeline.train_pipelined(
        "sg-pipeline", what, txs.reshape(-1, 6, 5), tys.reshape(-1, 30),
        schedule=pipeline.Schedule(chunk=3, mesh=pipeline.make_mesh(2)),
    )  # fmt: skip
    out["transformer"] = {
        "state_err": _max_err(trun.unpack(tpacked), tref),
        "sg_moved": max(float(np.abs(x).max()) for x in jax.tree.leaves(tref.sg_params)),
        "stages": r["stages"],
        "final_loss": r["final_loss"],
        "param_shapes": [[list(np.shape(a)) for a in jax.tree.leaves(p)] for p in r["params"]],
        "net_shapes": [
            [list(np.shape(a)) for a in jax.tree.leaves(p)] for p in lm.init(jax.random.key(0))
        ],
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
    # One process holding two stages' devices: the per-process runner refuses.
    try:
        pipeline.sg_per_process(
            pipeline.sg_pipeline(_net([6, 5, 3], ["relu", "identity"])),
            pipeline.make_mesh(2),
            batch_size=2,
        )
        out["per_process_in_one_process"] = "no error"
    except ValueError as e:
        out["per_process_in_one_process"] = str(e)

    return out


@pytest.fixture(scope="module")
def multi() -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(4),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sg_pipeline_on_mesh_equals_single_device_reference(multi):
    """Four stages of unequal width and kind on four devices, two calls in a row."""
    r = multi["sg4"]
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


def test_train_pipelined_reports_the_drained_micro_batches(multi):
    """Issue 12 item 4: with more stages than ticks per call, no micro-batch finished
    during training and the final loss was NaN; the drain (flush) finishes them."""
    r = multi["drain"]
    assert r["final_loss_micro_batches"] == 2, r
    assert r["final_loss"] is not None and np.isfinite(r["final_loss"]), r


@pytest.mark.parametrize("method", ["sg-pipeline", "gpipe"])
def test_non_finite_updates_stop_the_pipelines_on_four_devices(multi, method):
    r = multi[f"guard_{method}"]
    assert r["error"] is not None, "lr = 1e30 trained on without an error"
    assert "became non-finite" in r["error"] and "stage" in r["error"], r
    assert r["params_finite"], "a non-finite update was applied"


def test_sg_modules_at_some_boundaries_group_the_stages_between_them(multi):
    """``at=(2,)`` on 5 stages: two devices, each running its group of stages; the mesh
    equals the single-device schedule, and the driver's parameters are per stage."""
    r = multi["grouped"]
    assert r["state_err"] <= 0 and r["sg_moved"] > 0, r
    assert r["stages"] == 2 and r["sg_at"] == [2], r
    assert r["param_shapes"] == r["net_shapes"]  # ungrouped: one entry per stage of net


def test_stage_device_mismatch_is_a_clear_error(multi):
    assert "3 stages but the mesh has 4 devices" in multi["mismatch"]
    assert "process 0 holds 2 of the mesh's 2 devices" in multi["per_process_in_one_process"]


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
    run = jax.jit(lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v))
    # Calls of N − 1 ticks, the length flush uses, so that one compilation serves all.
    k, ms = n - 1, []
    for t in range(0, ticks, k):
        state, m = run(state, xs[t : t + k], ys[t : t + k], np.ones(k, bool))
        ms.append(m)
    state, m_flush = pipeline.flush(run, state, n, xs[0], ys[0])
    ms.append(m_flush)

    rule = rules.synthetic_gradients(sg_optimizer=frozen)
    # The same θ as init_sg (jitted: one compilation instead of dozens of eager ops).
    seq = jax.jit(train.init, static_argnums=(1, 2, 3))(jax.random.key(0), net, rule, opt)
    initial = seq.params
    seq = seq._replace(rule_state=seq.rule_state._replace(params=phi))
    step = jax.jit(train.make_step(net, rule, "xent", opt))
    seq_losses = []
    for t in range(ticks):
        seq, metrics = step(seq, (xs[t], ys[t]))
        seq_losses.append(metrics["loss"])
    pipe_losses = np.concatenate([m["loss"][m["done"]] for m in ms])
    assert len(pipe_losses) == ticks
    assert _max_err(pipe_losses, np.asarray(seq_losses)) <= 0
    assert _max_err(state.params, seq.params) <= 0
    # Not vacuous: every stage, the first included, moved away from its initial value.
    for now, before in zip(state.params, initial):
        assert float(np.abs(np.asarray(now["W"]) - np.asarray(before["W"])).max()) > 1e-4


def test_a_transformer_runs_on_the_pipeline_mesh_as_on_one_device(multi):
    """The decoupled transformer on 2 (fake) devices: embedding + block 1 on one, block 2
    + readout on the other, a positionwise cDNI SG between them. The mesh's state equals
    the single-device schedule's after 5 ticks, the SG modules moved, and the driver trains
    it from token sequences (per-stage parameters of the user's 4-stage network)."""
    r = multi["transformer"]
    assert r["state_err"] <= 0 and r["sg_moved"] > 1e-3, r
    assert r["stages"] == 2 and np.isfinite(r["final_loss"]), r
    assert r["param_shapes"] == r["net_shapes"]


def test_frozen_grouped_transformer_pipeline_equals_the_rule_with_the_same_at(request):
    """Issue 29's exactness check for a transformer stage: a 4-stage char LM cut at
    boundary 2 (embedding + block 1 | block 2 + readout), a positionwise cDNI SG between
    the groups, frozen at non-zero values: the pipeline's schedule makes exactly the
    updates of ``synthetic_gradients(positionwise(use_y=True), at=(2,))`` on one device
    (losses and every parameter; the SG's lag is the only difference, and it is frozen).
    Planted: the pipeline's stages conditioning the SG on zeros instead of the next
    characters (cDNI's context) → red. Bit-identical with XLA's fusion emitters only (with
    the older ones the two programs round differently and Adam amplifies it)."""
    if with_exact_emitters(request):
        return
    lm = transformer.char_lm(vocab=5, context=6, width=8, blocks=2, heads=2)
    at, ticks, batch = (2,), 5, 4
    frozen, opt = optax.sgd(0.0), optax.adam(1e-2)
    est = transformer.positionwise(use_y=True)
    rule = rules.synthetic_gradients(est, at=at, sg_optimizer=frozen)
    seq = jax.jit(train.init, static_argnums=(1, 2, 3))(jax.random.key(0), lm, rule, opt)
    rng = np.random.default_rng(3)
    phi = tuple(  # a non-zero SG module, so that the lower group trains
        jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32), p)
        for p in seq.rule_state.params
    )
    seq = seq._replace(rule_state=seq.rule_state._replace(params=phi))
    initial = seq.params
    pipe = pipeline.sg_pipeline(
        nets.group(lm, at), transformer.sequence_xent, opt, frozen, estimator=est
    )
    state = pipeline.init_sg(pipe, jax.random.key(1), batch_size=batch)
    grouped = nets.group_params(initial, at)
    state = state._replace(
        params=grouped, opt_state=tuple(opt.init(p) for p in grouped), sg_params=phi
    )
    xs, ys = _sequences(3, ticks, batch, 6, 5)
    run = jax.jit(lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v))
    state, m = run(state, xs, ys, np.ones(ticks, bool))
    state, m_flush = pipeline.flush(run, state, 2, xs[0], ys[0], ticks=ticks)
    step = jax.jit(train.make_step(lm, rule, transformer.sequence_xent, opt))
    seq_losses = []
    for t in range(ticks):
        seq, metrics = step(seq, (xs[t], ys[t]))
        seq_losses.append(metrics["loss"])
    pipe_losses = np.concatenate([m["loss"][m["done"]], m_flush["loss"][m_flush["done"]]])
    assert _max_err(pipe_losses, np.asarray(seq_losses)) <= 0
    assert _max_err(nets.ungroup_params(state.params, at, lm.depth), seq.params) <= 0
    for now, before in zip(seq.params, initial):  # every stage moved: not vacuous
        assert _max_err(now, before) > 1e-3


def test_the_pipeline_leads_its_sg_by_the_last_regression_step():
    """``sg_pipeline(lead=True)`` (the default): stage 0 trains with φ + (φ − φ_prev).
    Against a tick written here from the pipeline's parts with ``lead=False`` that carries
    φ_prev itself (independent of the optimiser state the library reads): equal over 6
    ticks, and not vacuous (without the lead the parameters differ). Planted: the lead
    ignored in the stage update → red."""
    from sgjax.pipeline.stages import Message, SGState, _check_stream, _sg_update, _stage_update

    net = _net([6, 8, 3], ["tanh", "identity"])
    opt, sgo, batch, ticks = optax.adam(1e-2), optax.sgd(0.2), 4, 6
    xs, ys = _stream(21, ticks, batch, 6, 3)
    led = pipeline.sg_pipeline(net, "xent", opt, sgo)
    plain = pipeline.sg_pipeline(net, "xent", opt, sgo, lead=False)
    init = pipeline.init_sg(plain, jax.random.key(2), batch_size=batch)
    got, _ = jax.jit(lambda s: pipeline.sg_reference(led, s, xs, ys))(
        pipeline.init_sg(led, jax.random.key(2), batch_size=batch)
    )
    lagged, _ = jax.jit(lambda s: pipeline.sg_reference(plain, s, xs, ys))(init)

    def by_hand(st):
        xv, y_vec, valid = _check_stream(net, batch, xs, ys, None)

        def tick(carry, inp):
            st, prev = carry
            inbox = [Message(*inp), *st.outbox]
            ahead = jax.tree.map(lambda a, b: 2 * a - b, st.sg_params[0], prev)
            p0, o0, h0, *_ = _stage_update(plain, 0, st.params[0], st.opt_state[0], ahead, inbox[0])
            p1, o1, _, g1, *_ = _stage_update(plain, 1, st.params[1], st.opt_state[1], (), inbox[1])
            phi, so, _, _ = _sg_update(plain, st.sg_params[0], st.sg_opt_state[0], st.outbox[0], g1)
            out = (Message(h0, inbox[0].y, inbox[0].valid),)
            return (
                SGState((p0, p1), (o0, o1), (phi,), (so,), out, st.tick + 1),
                st.sg_params[0],
            ), None

        return lax.scan(tick, (st, st.sg_params[0]), (xv, y_vec, valid))[0][0]

    want = jax.jit(by_hand)(init)
    assert _max_err(got.params, want.params) <= 0
    assert _max_err(got.sg_params, want.sg_params) <= 0
    assert _max_err(lagged.params, want.params) > 1e-4  # the lead changed the training


def test_frozen_grouped_sg_pipeline_equals_the_rule_with_the_same_at():
    """SG modules at boundary 2 of 5 stages: the 2-group pipeline (stages 1–2 and 3–5,
    exact backprop inside each group) makes exactly the updates of
    ``synthetic_gradients(at=(2,))`` on one device, with the SG frozen (its lag is the only
    difference). Planted: a composite stage that skips or reorders a member, or
    ``group_params`` cutting at the wrong boundary → red."""
    net = _net([6, 8, 7, 5, 4, 3], ["tanh", "relu", "tanh", "relu", "identity"])
    at, ticks, batch = (2,), 5, 4
    frozen, opt = optax.sgd(0.0), optax.adam(1e-2)
    rule = rules.synthetic_gradients(at=at, sg_optimizer=frozen)
    seq = jax.jit(train.init, static_argnums=(1, 2, 3))(jax.random.key(0), net, rule, opt)
    rng = np.random.default_rng(3)
    phi = tuple(  # a non-zero SG module, so that stages 1–2 train
        jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32), p)
        for p in seq.rule_state.params
    )
    seq = seq._replace(rule_state=seq.rule_state._replace(params=phi))
    initial = seq.params
    pipe = pipeline.sg_pipeline(nets.group(net, at), "xent", opt, frozen)
    state = pipeline.init_sg(pipe, jax.random.key(1), batch_size=batch)
    grouped = nets.group_params(initial, at)
    state = state._replace(
        params=grouped, opt_state=tuple(opt.init(p) for p in grouped), sg_params=phi
    )
    xs, ys = _stream(7, ticks, batch, 6, 3)
    run = jax.jit(lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v))
    state, m = run(state, xs, ys, np.ones(ticks, bool))
    state, m_flush = pipeline.flush(run, state, 2, xs[0], ys[0], ticks=ticks)
    step = jax.jit(train.make_step(net, rule, "xent", opt))
    seq_losses = []
    for t in range(ticks):
        seq, metrics = step(seq, (xs[t], ys[t]))
        seq_losses.append(metrics["loss"])
    pipe_losses = np.concatenate([m["loss"][m["done"]], m_flush["loss"][m_flush["done"]]])
    assert _max_err(pipe_losses, np.asarray(seq_losses)) <= 0
    assert _max_err(nets.ungroup_params(state.params, at, net.depth), seq.params) <= 0
    for now, before in zip(seq.params, initial):  # every stage moved: not vacuous
        assert float(np.abs(np.asarray(now["W"]) - np.asarray(before["W"])).max()) > 1e-4


def test_the_single_device_sg_baseline_places_its_modules_at_at():
    """``train_pipelined("sg", at=(1,))`` on 3 stages: no module at boundary 2, so stage 3
    trains from the loss and stage 2 by backprop through it; with ``at`` left at every
    boundary the zero-initialised module at boundary 2 sends stage 2 nothing, and it
    stays where it started for the first step (planted: the baseline ignoring ``at`` →
    red)."""
    net = nets.mlp([4, 6, 5, 3])
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    start = train.init(jax.random.key(0), net, rules.backprop(), optax.sgd(0.1)).params[1]["W"]
    moved = {}
    for at in ((1,), None):
        sgd = optax.sgd(0.1)
        r = pipelined(
            "sg", net, x, y, steps=1, batch_size=8, chunk=1, at=at, optimizer=sgd, sg_optimizer=sgd
        )
        moved[at] = float(np.abs(np.asarray(r["params"][1]["W"]) - start).max())
        assert r["sg_at"] == ([1] if at else None)
    assert moved[(1,)] > 1e-4 and moved[None] == 0.0, moved


def test_group_refuses_boundaries_that_do_not_cut_between_stages():
    net = nets.mlp([4, 5, 5, 3])
    for bad, message in (([3], r"ints in 1\.\.2"), ([2, 1], "increasing"), ([0], "ints in")):
        with pytest.raises(ValueError, match=message):
            nets.group(net, bad)
    x, y, sgd = np.ones((8, 4)), np.zeros(8, int), optax.sgd(0.1)
    sg_out = Run(net, rules.synthetic_gradients(at="output"), "xent", sgd, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"method 'gpipe' trains with backprop; `run.rule` is"):
        pipeline.train_pipelined("gpipe", sg_out, x, y)
    with pytest.raises(ValueError, match="SG module at the network's output"):
        pipeline.train_pipelined("sg-pipeline", sg_out, x, y)
    for rule, what in ((rules.synthetic_gradients(targets="true"), "targets='true'"),
                       (rules.synthetic_gradients(prop=0.1), "prop=0.1")):  # fmt: skip
        with pytest.raises(ValueError, match=f"no prop \\(got .*{what}.*a tick later"):
            pipeline.train_pipelined("sg-pipeline", Run(net, rule, "xent", sgd, 1, 4), x, y)
    bp = Run(net, rules.backprop(), "xent", sgd, steps=1, batch_size=4)
    with pytest.raises(ValueError, match="method 'sg' trains with synthetic gradients"):
        pipeline.train_pipelined("sg", bp, x, y)
    with pytest.raises(ValueError, match=r"`run.p_update`, `run.sg_update` and `run.cosine`"):
        pipeline.train_pipelined("backprop", dataclasses.replace(bp, cosine=True), x, y)
    with pytest.raises(ValueError, match=r"give `run.steps`, `seconds` or both"):
        pipeline.train_pipelined("backprop", dataclasses.replace(bp, steps=None), x, y)
    with pytest.raises(TypeError, match="`schedule` must be a Schedule or None, got int"):
        pipeline.train_pipelined("backprop", bp, x, y, schedule=10)
    with pytest.raises(ValueError, match="Schedule: `sg_runner` must be one of"):
        pipeline.Schedule(sg_runner="spmd")
    with pytest.raises(ValueError, match="`target_accuracy` needs `every`"):
        pipeline.Evaluation(x, y, target_accuracy=0.9)


def test_non_finite_stage_update_is_not_applied():
    """A NaN micro-batch at tick 1: stage 0's update from it is skipped, so the state equals
    that of an empty slot at tick 1 (stage 1 and SG_0 work on micro-batch 0 in both)."""
    net = _net([5, 6, 3], ["tanh", "identity"])
    pipe = pipeline.sg_pipeline(net, "xent", optax.adam(1e-2), optax.sgd(0.1))
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=4)
    xs, ys = _stream(9, 2, 4, 5, 3)
    run = jax.jit(lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v))
    bad = xs.copy()
    bad[1, 0, 0] = np.nan
    guarded, m = run(state, bad, ys, np.ones(2, bool))
    empty, _ = run(state, xs, ys, np.array([True, False]))
    assert m["stage_finite"].tolist() == [[True, True], [False, True]]
    assert m["finite"].tolist() == [True, False]
    for field in ("params", "opt_state", "sg_params", "sg_opt_state"):
        assert _max_err(getattr(guarded, field), getattr(empty, field)) <= 0, field
    assert _max_err(guarded.params, state.params) > 0  # tick 0 did train


def test_train_cli_pipeline_non_finite_and_strict_json(tmp_path, capsys):
    """Issue 12 item 4 in process (--pipeline 1 needs no extra devices): a diverging run
    stops with the error `sgjax train` gives, and the JSON is strict (a run of one jitted
    call has no timed call: examples_per_s is null, not NaN)."""
    from sgjax.infra import jsonio

    out = tmp_path / "p.json"
    argv = ["train", "--pipeline", "1", "--steps", "20", "--no-progress", "--json", str(out)]
    assert cli.main([*argv, "--lr", "1e38"]) == 1  # Adam: |Δθ| ≈ lr, so θ overflows
    err = capsys.readouterr().err
    assert "sgjax train: error: sg-pipeline: micro-batch" in err and "non-finite" in err, err
    assert not out.exists()
    assert cli.main(argv) == 0
    r = jsonio.loads_strict(out.read_text())
    assert r["pipeline"]["examples_per_s"] is None
    assert np.isfinite(r["final_loss"]) and r["pipeline"]["final_loss_micro_batches"] == 20


def test_one_stage_mesh_runs_in_process():
    # A 1-stage network on a 1-device mesh: the mesh code path without fake devices.
    net = _net([5, 3], ["identity"])
    pipe = pipeline.sg_pipeline(net, "mse", optax.sgd(0.1))
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=4)
    xs, ys = _stream(1, 3, 4, 5, 3)
    ref, m_ref = pipeline.sg_reference(pipe, state, xs, ys)
    for bind in (pipeline.sg_on_mesh, pipeline.sg_per_process):
        runner = bind(pipe, pipeline.make_mesh(1), batch_size=4)
        packed, m_mesh = runner.run(runner.pack(state), xs, ys)
        assert _max_err(runner.unpack(packed), ref) <= 0, bind
        assert _max_err(m_mesh, m_ref) <= 0, bind
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
        pipelined("pipedream", net, np.ones((4, 5)), np.zeros(4, int), steps=1)


def test_train_pipelined_trains_exactly_the_steps_asked():
    """15 steps in chunks of 10: the unused half of the last chunk changes nothing, so the
    result equals the ordinary training loop's, step for step."""
    net = _net([5, 4, 3], ["tanh", "identity"])
    x, y = _stream(7, 1, 40, 5, 3)
    x, y = x[0], y[0]
    r = pipelined("backprop", net, x, y, steps=15, batch_size=8, chunk=10)
    state, _ = train.fit(
        net, rules.backprop(), "xent", optax.adam(1e-3), x, y, steps=15, batch_size=8,
        key=jax.random.key(0),
    )  # fmt: skip
    assert r["micro_batches_seen"] == r["updates"] == 15
    assert _max_err(r["params"], state.params) <= 0
    # two calls (10 + 5): the first compiles, so one timed call, and the timing adds up
    assert len(r["call_seconds"]) == 1 and r["call_seconds"][0] == r["seconds"] > 0


# --------------------------------------------------------------------------------------
# The command line: sgjax train --pipeline N.


def test_train_cli_pipeline_in_a_fresh_process(tmp_path):
    """``sgjax train --pipeline 2`` makes its own two CPU devices (JAX has not started),
    runs the groups that ``--sg-at`` cuts (layer 1 | layers 2–3), trains exactly
    ``--steps`` micro-batches (not a multiple of the jitted chunk) and writes the usual
    JSON keys plus the pipeline's. (The depth that follows from N without ``--sg-at``:
    the in-process ``--pipeline 1`` test.)"""
    out = tmp_path / "pipe.json"
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    argv = ["--pipeline", "2", "--depth", "2", "--sg-at", "1", "--dataset", "digits"]
    argv += ["--steps", "130", "--width", "64"]
    argv += ["--batch-size", "32", "--lr", "3e-3", "--sg-lr", "3e-3", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "sgjax", "train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test acc" in proc.stdout
    r = json.loads(out.read_text())
    for key in ("rule", "steps", "final_loss", "train_accuracy", "test_accuracy"):
        assert key in r
    assert r["rule"] == "sg" and r["steps"] == 130
    assert r["config"]["depth"] == 2 and r["sizes"] == [64, 64, 64, 10]
    info = r["pipeline"]
    assert info["method"] == "sg" and info["stages"] == 2 and len(info["devices"]) == 2
    # --sg-at 1 cuts the 3 layers into one group per device: layer 1 | layers 2–3
    assert (info["layers"], info["sg_at"]) == (3, [1]), info
    assert info["updates_per_stage"] == 130
    # The SG pipeline learns: test accuracy after 130 micro-batches was 0.91 when written
    # (2 layers in 2 stages, before --sg-at was used here).
    assert r["test_accuracy"] > 0.8, r  # chance is 0.1


def test_train_cli_pipeline_errors(capsys):
    # JAX already runs in this process, so the CLI cannot add devices: a clear error.
    n = len(jax.devices()) + 1
    assert cli.main(["train", "--pipeline", str(n), "--steps", "4"]) == 1
    assert f"device_count={n}" in capsys.readouterr().err
    for argv, message in [
        (["--depth", "3"], "--pipeline 2 puts one stage on each of 2 devices"),
        (["--pipeline-method", "gpipe", "--steps", "10"], "multiple of --micro-batches 4"),
        (["--rule", "fa"], "got --rule fa"),
        (["--micro-batches", "2"], "only with --pipeline-method gpipe"),
        (["--cosine"], "--cosine not supported with --pipeline"),
        (["--depth", "4", "--sg-at", "1,3"], "makes 3 groups, not 2"),
        (["--depth", "4", "--sg-at", "output"], "an SG module at the output"),
        (["--depth", "4", "--sg-at", "7"], "--sg-at: `at` entries must be ints in 1..5"),
        (["--pipeline-method", "gpipe", "--sg-at", "1"], "--sg-at not supported"),
    ]:
        assert cli.main(["train", "--pipeline", "2", *argv]) == 1
        assert message in capsys.readouterr().err, argv
    assert cli.main(["train", "--micro-batches", "2"]) == 1
    assert "only with --pipeline N" in capsys.readouterr().err
    # SG modules at some boundaries cut a deeper network into one group per device
    from sgjax.infra.config import from_flags

    c = from_flags({"pipeline": 2, "depth": 4, "sg_at": (2,)})
    assert (c.depth, c.pipeline.devices, c.rule.options_dict()["at"]) == (4, 2, (2,))


if __name__ == "__main__":
    print(json.dumps(_child()))


def test_train_pipelined_takes_any_optax_optimiser():
    """``optimizer=optax.sgd(η)`` reaches the training: the single-device backprop
    baseline's parameters equal plain SGD written here with ``jax.grad`` on the same batch
    sequence. (Planted: train_pipelined ignoring `optimizer` for its Adam default → red.)"""
    net = nets.mlp([5, 6, 3])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    eta = 0.3
    r = pipelined("backprop", net, x, y, steps=4, batch_size=8, chunk=4,
                                 optimizer=optax.sgd(eta), seed=2)  # fmt: skip
    params = train.init(jax.random.key(2), net, rules.backprop(), optax.sgd(eta)).params
    data = train.batches(x, y, 8, seed=2)
    for _ in range(4):
        xb, yb = next(data)
        g = jax.grad(lambda p, xb=xb, yb=yb: losses.softmax_cross_entropy.fn(net.apply(p, xb), yb))(
            params
        )
        params = jax.tree.map(lambda p, d: p - eta * d, params, g)
    for a, b in zip(jax.tree.leaves(r["params"]), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="`optimizer` must be an optax GradientTransformation"):
        Run(net, rules.backprop(), "xent", 1e-3, steps=1, batch_size=8)


def test_balanced_boundaries_equal_brute_force_over_every_cut():
    """The dynamic programme against the independent reference: every combination of cuts
    (itertools), the first optimum in lexicographic order — on random costs with ties
    (small integers) and with SG costs. Planted: a DP that drops the SG cost of a group,
    or takes the last optimal cut instead of the first → red."""
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(200):
        N = int(rng.integers(1, 9))
        n = int(rng.integers(1, N + 1))
        costs = rng.integers(0, 5, N).tolist()
        sg = rng.integers(0, 4, N - 1).tolist()

        def worst(cuts, costs=costs, sg=sg, N=N):
            b = [0, *cuts, N]
            return max(sum(costs[lo:hi]) + (sg[hi - 1] if hi < N else 0)
                       for lo, hi in zip(b[:-1], b[1:]))  # fmt: skip

        want = min(itertools.combinations(range(1, N), n - 1), key=worst)
        assert pipeline.balanced_boundaries(costs, n, sg) == want, (costs, sg, n)
    for bad, message in (((4,), "`n` must be an int in 1..3"), ((2, [1]), "one cost per")):
        with pytest.raises(ValueError, match=message):
            pipeline.balanced_boundaries([1, 2, 3], *bad)


def test_stage_costs_measures_every_stage():
    costs = pipeline.stage_costs(nets.mlp([8, 64, 4]), 16, repeats=2)
    assert len(costs) == 2 and all(c > 0 for c in costs)
