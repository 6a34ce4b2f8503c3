"""Helpers shared by several test files (import as ``from helpers import ...``).

Tree assertions, all built on chex: every test that compares two pytrees uses one of
these (structure first, then each leaf), so a tree that lost or gained a leaf fails the
same way everywhere. Each asserting helper refuses an empty tree: comparing two empty
trees would pass whatever the code under test did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import chex
import jax
import numpy as np

from sgjax.infra.run import Checkpoints, Hooks, Run
from sgjax.infra.runner import StepCache, run_training


def load_script(name: str) -> Any:
    """The module ``scripts/<name>.py`` (scripts are not a package), registered in
    ``sys.modules`` under ``name`` (dataclasses look their module up there)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def xla_flags(devices: int | None = None, *, exact: bool = False) -> str:
    """``XLA_FLAGS`` for a subprocess: this process's flags (the test-speed ones that
    conftest.py sets) without any device count, plus ``devices`` CPU devices if given;
    ``exact``: without conftest's ``OLD_EMITTERS`` (for a child whose claim is
    bit-identity between two programs)."""
    from conftest import OLD_EMITTERS  # (pytest imported it: tests/ is on sys.path)

    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f and not (exact and f == OLD_EMITTERS)
    ]
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def _rerun(
    request: Any,
    flags: list[str],
    env_extra: dict[str, str],
    what: str,
    nodes: list[str] | None = None,
) -> str:
    """Run ``request``'s test (or the tests ``nodes``) again in a child pytest under
    ``flags``; for one test, fail with its output unless it passed (not skipped). Returns
    the child's output, with one ``PASSED <node id>`` line per test that passed."""
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), **env_extra}
    root = Path(__file__).resolve().parents[1]
    nodes = nodes or [request.node.nodeid]
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p",
         "no:xdist", *nodes],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if len(nodes) == 1:  # (a group's tests are judged one by one by the caller)
        assert res.returncode == 0, f"{what}:\n{res.stdout[-4000:]}{res.stderr[-2000:]}"
        assert re.search(r"^1 passed", res.stdout, re.M), res.stdout[-2000:]  # not skipped
    return res.stdout + res.stderr[-2000:]


#: node id -> the child's output, for tests already run at XLA's default level by a
#: child started for another test of their group (:func:`at_default_xla_level`)
_DEFAULT_LEVEL_DONE: dict[str, str] = {}


def at_default_xla_level(request: Any, together: tuple[str, ...] = ()) -> bool:
    """For a test whose claim holds at XLA's default optimisation level only (two different
    programs giving the same bits): if this process compiles at the tests' reduced level
    (conftest.py), run the test again in a child pytest at XLA's defaults, fail with
    its output unless it passed, and return True (the caller then returns); else False.

    ``together``: the names of the other tests of the same file that call this (one
    child runs them all, a pytest start and a JAX import fewer each; the first to ask
    starts it, the others read their result). Also used for speed: a test whose time is
    its training steps, not its compiles, runs ~2× faster at the default level.

    Usage: ``if at_default_xla_level(request): return`` first in the test."""
    from conftest import FAST_COMPILE_FLAGS  # (pytest imported it: tests/ is on sys.path)

    if os.environ.get("SGJAX_TEST_XLA_DEFAULT") or "xla_backend_optimization_level=0" not in (
        os.environ.get("XLA_FLAGS", "")
    ):
        return False  # (the child itself, or a run at the default level)
    flags = [
        f
        for f in os.environ["XLA_FLAGS"].split()
        if not any(f.startswith(k.split("=")[0]) for k in FAST_COMPILE_FLAGS)
    ]
    node = request.node.nodeid
    if node not in _DEFAULT_LEVEL_DONE:
        file = node.split("::")[0]
        nodes = [node, *(f"{file}::{t}" for t in together if f"{file}::{t}" != node)]
        out = _rerun(
            request, flags, {"SGJAX_TEST_XLA_DEFAULT": "1"}, "at XLA's default level", nodes
        )
        for n in nodes:
            _DEFAULT_LEVEL_DONE[n] = out
    out = _DEFAULT_LEVEL_DONE[node]
    assert re.search(rf"^PASSED {re.escape(node)}$", out, re.M), (
        f"at XLA's default level, {node} did not pass:\n{out[-4000:]}"
    )
    return True


def with_exact_emitters(request: Any) -> bool:
    """For a test whose claim is bit-identity between two programs that holds at the tests'
    optimisation level with XLA's own fusion emitters but not with the older ones
    (conftest's ``OLD_EMITTERS``, set there for speed): if this process uses the
    older ones, run the test again in a child pytest without that flag and return True
    (the caller then returns); else False.

    Usage: ``if with_exact_emitters(request): return`` first in the test."""
    from conftest import OLD_EMITTERS

    flags = os.environ.get("XLA_FLAGS", "").split()
    if OLD_EMITTERS not in flags:
        return False  # (the child itself, or a run without the flag)
    _rerun(request, [f for f in flags if f != OLD_EMITTERS], {}, "with XLA's fusion emitters")
    return True


def _nonempty(*trees: Any) -> None:
    for i, t in enumerate(trees):
        assert jax.tree.leaves(t), f"tree {i} has no leaves: the comparison would be vacuous"


def assert_trees_close(
    a: Any, b: Any, rtol: float = 1e-6, atol: float = 0.0, *, allow_empty: bool = False
) -> None:
    """Same structure, every leaf close (``|a − b| ≤ atol + rtol·|b|`` elementwise).
    ``allow_empty``: two empty trees pass (a rule state that holds no parameters)."""
    if not allow_empty:
        _nonempty(a, b)
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def assert_trees_equal(a: Any, b: Any) -> None:
    """Same structure, shapes and dtypes, every leaf bit-identical (NaN equals NaN)."""
    _nonempty(a, b)
    chex.assert_trees_all_equal(a, b, strict=True)


def trees_equal(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` have the same structure and bit-identical leaves (NaN
    equals NaN), for ``assert not trees_equal(...)`` (something moved). Two empty trees
    are equal."""
    try:
        chex.assert_trees_all_equal(a, b)
    except AssertionError:
        return False
    return True


def assert_same_shapes_and_dtypes(a: Any, b: Any) -> None:
    """Same structure, and each leaf of ``a`` has the shape and dtype of ``b``'s (two
    empty trees pass: their structure is what is checked)."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)


def runner_args(
    *,
    ckpt_dir: Any = None,
    ckpt_every: int = 1000,
    keep: int = 3,
    resume: bool = False,
    adopt_older: bool = False,
    **hooks: Any,
) -> dict[str, Any]:
    """``checkpoints=`` and ``hooks=`` of :func:`sgjax.infra.runner.run_training` from the
    tests' short keywords (``ckpt_dir=None``: no checkpoints; the rest go to ``Hooks``)."""
    checkpoints = None
    if ckpt_dir is not None:
        checkpoints = Checkpoints(
            ckpt_dir, every=ckpt_every, keep=keep, resume=resume, adopt_older=adopt_older
        )
    elif resume or adopt_older:
        raise AssertionError("a test asked for resume without a checkpoint directory")
    return {"checkpoints": checkpoints, "hooks": Hooks(**hooks)}


def small_checkpointed_run(
    net: Any, rule: Any, opt: Any, cache: StepCache, directory: Any, steps: int, **kw: Any
) -> Any:
    """A few steps of ``net`` (8 inputs, 4 classes) on fixed random data, checkpointing
    every 4 steps into ``directory``; returns the final state. ``kw`` as :func:`runner_args`
    (``keep``, ``resume``, ``adopt_older`` …)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64).astype(np.int32)
    run = Run(net, rule, "xent", opt, steps=steps, batch_size=8, seed=1)
    args = runner_args(ckpt_dir=directory, ckpt_every=4, step_cache=cache, **kw)
    return run_training(run, x, y, **args)[0]


_SCHEDULE = ("chunk", "micro_batches", "mesh", "sg_runner")
_EVALUATION = {"x_test": "x_test", "y_test": "y_test", "eval_every": "every",
               "target_accuracy": "target_accuracy"}  # fmt: skip
_SG = ("estimator", "at", "targets", "prop", "sg_optimizer")


def pipelined(method: str, net: Any, x: Any, y: Any, **kw: Any) -> dict[str, Any]:
    """:func:`sgjax.pipeline.train_pipelined` from the tests' short keywords: ``steps``,
    ``batch_size`` (default 64), ``seed``, ``loss``, ``optimizer`` (default Adam 1e-3)
    make the :class:`~sgjax.infra.run.Run` (its rule: backprop, or for ``"sg"`` /
    ``"sg-pipeline"`` an SG rule with ``estimator``, ``at``, … ``sg_optimizer``);
    ``chunk`` … ``sg_runner`` the Schedule; ``x_test`` … ``target_accuracy`` the
    Evaluation; ``seconds``, ``start`` and ``on_call`` are passed on."""
    import optax

    from sgjax import rules
    from sgjax.pipeline import Evaluation, Schedule, train_pipelined

    sg = {k: kw.pop(k) for k in _SG if k in kw}
    schedule = Schedule(**{k: kw.pop(k) for k in _SCHEDULE if k in kw})
    ev = {v: kw.pop(k) for k, v in _EVALUATION.items() if k in kw}
    evaluation = Evaluation(**ev) if ev.get("x_test") is not None else None
    optimizer = kw.pop("optimizer", None) or optax.adam(1e-3)
    rule = rules.synthetic_gradients(**sg) if method in ("sg", "sg-pipeline") else rules.backprop()
    run = Run(net, rule, kw.pop("loss", "xent"), optimizer, steps=kw.pop("steps", None),
              batch_size=kw.pop("batch_size", 64), seed=kw.pop("seed", 0))  # fmt: skip
    return train_pipelined(method, run, x, y, schedule=schedule, evaluation=evaluation, **kw)
