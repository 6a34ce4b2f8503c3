"""Tests of the multi-process launcher (:mod:`sgjax.pipeline.distributed`).

The exactness test launches *this file* as a 2-process ``jax.distributed`` job (gloo CPU
collectives, one CPU device per process): process s holds stage s, and process 0 prints,
as JSON, how far the 2-process runs are from their single-device references — the SG
pipeline against :func:`sgjax.pipeline.sg_reference` (the tolerance of the fake-device
test in test_pipeline.py), GPipe's gradient against ``jax.grad``, data-parallel backprop
against :func:`sgjax.train.make_step`. The failure tests launch tiny Python programs (no
JAX) and check the error names the failed rank and that no process is left behind.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pipelined, xla_flags

from sgjax.pipeline.distributed import LaunchError, cpu_sets, launch

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6  # the tolerance of test_pipeline.py's fake-device comparison


def _env() -> dict[str, str]:
    env = {**os.environ, "XLA_FLAGS": xla_flags()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# The 2-process job (run as `python tests/test_launch.py` by launch()).


def _max_err(a, b) -> float:
    """max |a − b| − (ATOL + RTOL |b|) over all leaves: ≤ 0 means allclose."""
    import jax
    import numpy as np

    def err(u, v) -> float:
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return -1.0 if v.size == 0 else float(np.max(np.abs(u - v) - (ATOL + RTOL * np.abs(v))))

    return max(jax.tree.leaves(jax.tree.map(err, a, b)), default=-1.0)


def _job() -> dict:
    from sgjax.pipeline.distributed import initialize_from_env

    assert initialize_from_env()
    import jax
    import numpy as np
    import optax

    from sgjax import losses, nets, pipeline, rules, train

    assert jax.process_count() == 2 and len(jax.local_devices()) == 1, jax.devices()
    rng = np.random.default_rng(0)
    # Two stages of unequal width and kind; the input (11) is wider than the boundary (9):
    # stage 0 reads x itself, only 9-wide messages travel.
    d_in = 11
    net = nets.network([nets.dense(d_in, 9, "tanh"), nets.dense(9, 3, "identity")])
    batch, ticks = 5, 6
    xs = rng.standard_normal((2, ticks, batch, d_in)).astype(np.float32)
    ys = rng.integers(0, 3, (2, ticks, batch)).astype(np.int32)
    mesh = pipeline.make_mesh(2)
    out: dict = {"devices": [d.process_index for d in mesh.devices.flat]}
    from sgjax.infra import allocator

    out["allocator"] = allocator.settings()
    out["cpus"] = sorted(os.sched_getaffinity(0))

    pipe = pipeline.sg_pipeline(net, "xent", optax.adam(1e-2), optax.sgd(0.1))
    state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=batch)
    # three calls: the stream continues across them; the third has empty slots
    valid = [None, None, np.array([1, 1, 0, 1, 0, 0], bool)]
    xs_nan = xs[0].copy()
    xs_nan[2, 0, 0] = np.nan
    finals, metrics = {}, {}
    for name, bind in (("mesh", pipeline.sg_on_mesh), ("per-process", pipeline.sg_per_process)):
        runner = bind(pipe, mesh, batch_size=batch)
        packed, metrics[name] = runner.pack(state), []
        for c in range(3):
            packed, m = runner.run(packed, xs[c % 2], ys[c % 2], valid[c])
            metrics[name].append(jax.tree.map(np.asarray, m))
        finals[name] = runner.unpack(packed)  # every process takes part (an all-gather)
        # a fourth call with a NaN input at tick 2: that update must be skipped and flagged
        packed, m = runner.run(packed, xs_nan, ys[0])
        metrics[name + "/nan"] = jax.tree.map(np.asarray, m)
        finals[name + "/nan"] = runner.unpack(packed)

    opt = optax.adam(1e-2)
    bp = pipeline.init_bp(net, opt, jax.random.key(1))
    gp = pipeline.gpipe_on_mesh(net, "xent", opt, mesh, batch_size=batch, micro_batches=3)
    grads, _ = gp.gradients(gp.pack(bp), xs[0, :3], ys[0, :3])

    # Data-parallel: batches of 6 split 3 + 3 over the processes, vs backprop on 6 (SGD,
    # which, unlike Adam, sees the scale of the averaged gradient).
    sgd = optax.sgd(0.5)
    dp = pipeline.dp_on_mesh(net, "xent", sgd, mesh, batch_size=6)
    xb = rng.standard_normal((4, 6, d_in)).astype(np.float32)
    yb = rng.integers(0, 3, (4, 6)).astype(np.int32)
    st, _ = dp.run(dp.pack(pipeline.init_bp(net, sgd, jax.random.key(1))), xb, yb)
    dp_final = dp.unpack(st)

    # A stop decided by the clock must be the same in every process: process 1's clock
    # runs 10⁶× fast here, so on its own it would stop after its second call while
    # process 0 goes on to the step cap, and the job would hang in a collective.
    if jax.process_index() == 1:
        import types

        from sgjax.pipeline import loop

        fast = time.perf_counter
        loop.time = types.SimpleNamespace(perf_counter=lambda: 1e6 * fast())
    x_tr, y_tr = xs[0].reshape(-1, d_in), ys[0].reshape(-1)
    r = pipelined(
        "sg-pipeline", net, x_tr, y_tr, steps=10, seconds=5.0, batch_size=batch, chunk=2,
        mesh=mesh,
    )  # fmt: skip
    out["clock_stop_micro_batches"] = r["micro_batches_seen"]
    out["auto_sg_runner"] = r["sg_runner"]
    if jax.process_index() != 0:  # the single-device references: process 0 only
        return out

    ref, m_ref = state, []
    for c in range(3):
        ref, m = pipeline.sg_reference(pipe, ref, xs[c % 2], ys[c % 2], valid[c])
        m_ref.append(m)
    ref_nan, m_nan = pipeline.sg_reference(pipe, ref, xs_nan, ys[0])
    for name in ("mesh", "per-process"):
        out[f"sg_state_err[{name}]"] = _max_err(finals[name], ref)
        out[f"sg_metrics_err[{name}]"] = _max_err(metrics[name], m_ref)
        got = metrics[name + "/nan"]
        out[f"sg_nan_flags_equal[{name}]"] = bool(
            (got["stage_finite"] == np.asarray(m_nan["stage_finite"])).all()
            and (got["finite"] == np.asarray(m_nan["finite"])).all()
        )
        out[f"sg_nan_flagged[{name}]"] = np.argwhere(~got["stage_finite"]).tolist()
        out[f"sg_nan_state_err[{name}]"] = _max_err(finals[name + "/nan"], ref_nan)
    out["sg_moved"] = max(float(np.abs(x).max()) for x in jax.tree.leaves(ref.sg_params))

    x_all, y_all = xs[0, :3].reshape(15, d_in), ys[0, :3].reshape(15)
    true = jax.grad(lambda p: losses.softmax_cross_entropy.fn(net.apply(p, x_all), y_all))(
        bp.params
    )
    out["gpipe_grad_err"] = _max_err(grads, true)
    seq = train.init(jax.random.key(0), net, rules.backprop(), sgd)
    seq = seq._replace(params=bp.params, opt_state=sgd.init(bp.params))
    step = jax.jit(train.make_step(net, rules.backprop(), "xent", sgd))
    for t in range(4):
        seq, _ = step(seq, (xb[t], yb[t]))
    out["dp_params_err"] = _max_err(dp_final.params, seq.params)
    out["dp_moved"] = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(seq.params), jax.tree.leaves(bp.params))
    )
    return out


@pytest.fixture(scope="module")
def job() -> dict:
    r = launch([sys.executable, __file__], 2, env=_env(), timeout=240, echo=False)
    return json.loads(r.outputs[0].strip().splitlines()[-1])


def test_two_processes_hold_one_stage_each(job):
    assert job["devices"] == [0, 1]


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only (a no-op elsewhere)"
)
def test_a_launched_process_keeps_freed_memory(job):
    # one malloc arena exactly when the process is pinned to one core (see allocator)
    settings = job["allocator"]
    assert settings["M_MMAP_THRESHOLD"] == settings["M_TRIM_THRESHOLD"] == 1 << 30, job
    assert settings.get("M_ARENA_MAX") == (1 if len(job["cpus"]) == 1 else None), job


@pytest.mark.parametrize("runner", ["mesh", "per-process"])
def test_two_process_sg_pipeline_equals_single_device_reference(job, runner):
    # sg_on_mesh (one SPMD program) and sg_per_process (each process its own stage's
    # program), three calls, the last with empty slots, against sg_reference.
    assert job["sg_moved"] > 0, "the SG modules never trained: the comparison is vacuous"
    assert job[f"sg_state_err[{runner}]"] <= 0, job
    assert job[f"sg_metrics_err[{runner}]"] <= 0, job
    # A NaN input at tick 2 of a fourth call: stage 0's update of that tick is flagged and
    # skipped; its NaN output reaches stage 1 at tick 3 and SG_0's regression on it runs at
    # the start of tick 3 — both flagged and skipped too. Exactly the reference's flags,
    # and the state stays the reference's.
    assert job[f"sg_nan_flagged[{runner}]"] == [[2, 0], [3, 0], [3, 1]], job
    assert job[f"sg_nan_flags_equal[{runner}]"], job
    assert job[f"sg_nan_state_err[{runner}]"] <= 0, job


def test_train_pipelined_picks_the_per_process_runner_with_one_stage_per_process(job):
    assert job["auto_sg_runner"] == "per-process"


def test_a_clock_based_stop_is_taken_by_every_process_alike(job):
    # Reaching this value at all means the job did not hang (see _job).
    assert 2 <= job["clock_stop_micro_batches"] <= 10


def test_two_process_gpipe_and_data_parallel_equal_backprop(job):
    assert job["gpipe_grad_err"] <= 0, job
    assert job["dp_moved"] > 1e-3
    assert job["dp_params_err"] <= 0, job


# --------------------------------------------------------------------------------------
# Failures: a dead rank, a timeout, a killed launcher. No JAX in the children.

_WAIT_FOR_PEER = (
    "import os, sys, time, pathlib\n"
    "d = pathlib.Path(sys.argv[1]); r = os.environ['SGJAX_PROCESS_ID']\n"
    "(d / f'pid{r}').write_text(str(os.getpid()))\n"
)


def test_a_dead_rank_is_named_and_the_others_are_stopped(tmp_path):
    # Rank 1 waits until rank 0 has written its pid, then fails; rank 0 would sleep.
    code = _WAIT_FOR_PEER + (
        "if r == '1':\n"
        "    while not (d / 'pid0').exists(): time.sleep(0.01)\n"
        "    print('rank 1 is giving up'); sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="rank 1 of 2 exited with status 3") as info:
        launch([sys.executable, "-c", code, str(tmp_path)], 2, timeout=100, echo=False, grace=2)
    assert time.monotonic() - t0 < 60  # not the 120 s of rank 0's sleep
    assert info.value.rank == 1 and info.value.returncode == 3
    assert "rank 1 is giving up" in str(info.value)
    assert not _alive(int((tmp_path / "pid0").read_text()))


def test_a_hung_run_times_out_naming_the_ranks(tmp_path):
    code = _WAIT_FOR_PEER + "time.sleep(120)\n"
    with pytest.raises(LaunchError, match=r"timed out after 3 s; ranks \[0, 1\]"):
        launch([sys.executable, "-c", code, str(tmp_path)], 2, timeout=3, echo=False, grace=1)
    for r in range(2):
        assert not _alive(int((tmp_path / f"pid{r}").read_text()))


def test_a_killed_launcher_leaves_no_orphans(tmp_path):
    code = _WAIT_FOR_PEER + "time.sleep(120)\n"
    driver = (
        "import sys\n"
        "from sgjax.pipeline.distributed import launch\n"
        f"launch([sys.executable, '-c', {code!r}, {str(tmp_path)!r}], 2, echo=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], env=_env())
    pids = [tmp_path / "pid0", tmp_path / "pid1"]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in pids), "the children never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    children = [int(p.read_text()) for p in pids]
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def test_cpu_sets_and_argument_errors():
    assert cpu_sets(2, [0, 1]) == [[0], [1]]
    assert cpu_sets(1, [0]) == [[0]]
    assert cpu_sets(2, [5]) == [None, None]
    with pytest.raises(ValueError, match="`n` must be an int ≥ 1, got 0"):
        launch([sys.executable, "-c", "pass"], 0)
    with pytest.raises(ValueError, match="`timeout` must be > 0"):
        launch([sys.executable, "-c", "pass"], 1, timeout=0)


def test_launch_cli_checks_the_command_before_starting(capsys, monkeypatch, tmp_path):
    from sgjax.apps import cli
    from sgjax.pipeline import distributed

    started = []  # a command that got through would be recorded here, not run
    monkeypatch.setattr(distributed, "launch", lambda cmd, n, **kw: started.append(cmd))
    lonely = tmp_path / "lonely.py"
    lonely.write_text("import jax\nprint(jax.devices())\n")

    for argv, message in [
        (["-n", "2", "--", "train", "--pipeline", "3"], "needs --pipeline 2, got --pipeline 3"),
        (["-n", "2", "--", "train"], "needs --pipeline 2, got no --pipeline"),
        (["-n", "2"], "give the sgjax command to run after `--`"),
        (["-n", "0", "--", "train"], "-n/--processes must be ≥ 1, got 0"),
        # a command that joins no job would run once per process (issue 27)
        (["-n", "2", "--", "verify"], "`verify` does not join such a job, so each of the 2"),
        (["-n", "2", "--", "reproduce", "fig2"], "run `sgjax reproduce` without launch"),
        # a script of the user's: it must exist and join the job
        (["-n", "2", "--", str(tmp_path / "missing.py")], "cannot read the script"),
        (["-n", "2", "--", str(lonely)], "never calls sgjax.pipeline.initialize_from_env()"),
    ]:
        assert cli.main(["launch", *argv]) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert started == []
    joins = tmp_path / "joins.py"
    joins.write_text("from sgjax.pipeline import initialize_from_env\ninitialize_from_env()\n")
    assert cli.main(["launch", "-n", "2", "--", str(joins), "--flag", "3"]) == 0
    assert started == [[sys.executable, str(joins), "--flag", "3"]]


def test_a_script_of_the_users_runs_a_flax_model_as_a_two_process_pipeline(tmp_path):
    """``sgjax launch -n 2 -- examples/nnx_pipeline.py``: an NNX MLP (network_from_nnx)
    trained by train_pipelined with one stage per process equals the same pipeline's
    single-device schedule exactly, and learns (36 micro-batches of the digits)."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "sgjax", "launch", "-n", "2", "--",
           str(ROOT / "examples" / "nnx_pipeline.py"), "36", str(out)]  # fmt: skip
    # bit-identity between the two layouts' programs: with XLA's own fusion emitters
    env = {**_env(), "XLA_FLAGS": xla_flags(exact=True)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["processes"] == 2 and r["max_err_vs_one_device"] == 0.0, r
    assert r["test_accuracy"] > 0.3, r  # 10 classes: chance is 0.1


def test_launch_warns_of_more_processes_than_cores(monkeypatch, capsys):
    from sgjax.apps import cli
    from sgjax.pipeline import distributed

    started = []
    monkeypatch.setattr(distributed, "launch", lambda cmd, n, **kw: started.append(n))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cli.main(["launch", "-n", "3", "--", "train", "--pipeline", "3"]) == 0
    err = capsys.readouterr().err
    assert started == [3]
    assert "warning: 3 processes on 2 usable core(s): they share cores" in err
    assert cli.main(["launch", "-n", "2", "--", "train", "--pipeline", "2"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_sweep_points_default_to_three_hidden_layers_and_refuse_bad_ones():
    from sgjax.apps.bench import pipeline_compare as compare

    assert compare.sweep_point([1024, 128]) == (1024, 128, 3)
    assert compare.sweep_point((1024, 128, 7)) == (1024, 128, 7)
    for bad in ([1024], [1024, 128, 5, 1], [1024, 0], [1024, 128, 0], [1024.5, 128], [1024, True]):
        with pytest.raises(ValueError, match="sweep: each point"):
            compare.sweep_point(bad)


def test_comparison_time_to_target_and_tables():
    """The comparison's arithmetic on made-up rows: the time to the target is the first
    evaluation at or above it plus the charge for the compiling call; tables render
    rows that reached nothing or timed nothing."""
    from sgjax.apps.bench import pipeline_compare as compare

    curve = [
        {"micro_batches": 100, "seconds": 1.0, "test_accuracy": 0.90, "test_loss": 0.3},
        {"micro_batches": 200, "seconds": 2.5, "test_accuracy": 0.951, "test_loss": 0.2},
        {"micro_batches": 300, "seconds": 4.0, "test_accuracy": 0.96, "test_loss": 0.1},
    ]
    assert compare._time_to(curve, 0.95, 0.5) == 3.0
    assert compare._time_to(curve, 0.99, 0.5) is None

    def row(label, eps, reach=None, cpus=(0,), processes=1, **kw):
        return {"label": label, "examples_per_s": eps, "seconds_to_target": reach,
                "cpus": list(cpus), "processes": processes, "test_accuracy": 0.9,
                "curve": curve, "batch_size": 64, **kw}  # fmt: skip

    main = [row(label, 1000.0 * (i + 1), 3.0) for i, (label, *_) in enumerate(compare.CONTENDERS)]
    main[-1] = row("sg-pipeline, one SPMD program", None)
    sweep = [
        row("sg", 1000.0, sizes=[784, 64, 64, 64, 10], stage_s_per_tick=[0.030, 0.031]),
        row("sg-pipeline", 1800.0, sizes=[784, 64, 64, 64, 10], s_per_tick=0.01,
            messaging_s_per_tick=0.001, cpus=(1,), processes=2),
    ]  # fmt: skip
    text = compare.format_tables(
        {"main": main, "sweep": sweep, "load": {"start": [0.1] * 3, "end": [0.2] * 3,
         "cores": [0, 1]}, "config": {"sizes": [784, 64, 10], "processes": 2,
         "batch_size": 64, "micro_batches": 8, "lr": 1e-3, "target": 0.95}}
    )  # fmt: skip
    assert "| backprop, 1 core | 1 × 1 | 1000 | 1.00 | 0.50 | 3.0 | 200 | 0.9000 |" in text
    assert "| sg-pipeline, one SPMD program | | no timed call |" in text
    # a micro-batch of 64 takes 64 ms sequentially; the slowest stage plus the messages
    # 31 + 1 ms: the pipeline can be at most 2.00× faster
    assert (
        "| 64 | 3 | 64 | 1000 | 1800 | 1.80 | 10.00 ms | 1.000 ms | 10.0% | 30.00 + 31.00 ms | "
        "32.00 ms | 2.00 |" in text
    ), text
    assert "bubble bound 1.78×" in text


if __name__ == "__main__":
    print(json.dumps(_job()))
