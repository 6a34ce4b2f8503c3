"""The decoupled transformer LM experiment (:mod:`sgjax.apps.experiments.transformer_lm`):
the per-boundary cosines against an independent computation, the equal-wall-time
extension of a run, the claims' margins and verdicts from planted runs, and
``sgjax reproduce dni-transformer --scale smoke`` on a small text the test writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import rules, train
from sgjax import transformer as tf
from sgjax.apps import reproduce
from sgjax.apps.experiments import transformer_lm as L
from sgjax.apps.experiments import transformer_lm_report as R
from sgjax.recurrent import tasks

V, T = 5, 4


def _text(tmp_path, n: int = 6000):
    """A small text with structure (words of a few letters): Tiny Shakespeare's stand-in."""
    rng = np.random.default_rng(0)
    words = ["the ", "king ", "and ", "queen ", "said ", "no.\n"]
    text = "".join(words[i] for i in rng.integers(0, len(words), n // 4))[:n]
    (tmp_path / "input.txt").write_text(text)
    return tmp_path


def test_boundary_cosines_equal_an_independent_computation():
    """Each boundary's cosine is that of SG_b(h_b, y) with ∂ℓ/∂h_b from jax.grad of the
    network above b; backprop's are 1. Planted: the signals paired with the true
    gradients one boundary off → red."""
    net = tf.char_lm(V, context=T, width=8, blocks=1, heads=2)
    sg = tf.positionwise(use_y=True)
    rule = rules.synthetic_gradients(sg)
    state = train.init(jax.random.key(0), net, rule, optax.adam(1e-3))
    rng = np.random.default_rng(1)
    modules = tuple(
        jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), m)
        for m in state.rule_state.params
    )
    state = state._replace(rule_state=state.rule_state._replace(params=modules))
    ids = rng.integers(0, V, (3, T + 1))
    x, y = tf.inputs(ids[:, :-1], V), tf.targets(ids[:, 1:], V)
    got = L.boundary_cosines(net, rule, state, x, y)

    @jax.jit  # the reference in one program (not ~150 eager ones)
    def grads_and_signals(params, modules, x, y):
        out = []
        for b in range(1, net.depth):
            h = x
            for stage, p in zip(net.stages[:b], params[:b]):
                h = stage.apply(p, h)

            def above(h, b=b):
                for stage, p in zip(net.stages[b:], params[b:]):
                    h = stage.apply(p, h)
                return tf.sequence_xent.fn(h, y)

            out.append((jax.grad(above)(h), sg.apply(modules[b - 1], h, y)))
        return out

    want = []
    for g, s in grads_and_signals(state.params, modules, x, y):
        g, s = np.asarray(g).ravel(), np.asarray(s).ravel()
        want.append(s @ g / np.linalg.norm(s) / np.linalg.norm(g))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    bp = L.boundary_cosines(net, rules.backprop(), train.init(
        jax.random.key(0), net, rules.backprop(), optax.adam(1e-3)), x, y)  # fmt: skip
    np.testing.assert_allclose(bp, np.ones(net.depth - 1), rtol=1e-5)


def _tiny(**kw):
    cfg = dict(L.SCALES["smoke"], context=T, width=8, blocks=1, heads=2, batch=4, steps=10,
               eval_every=5, eval_windows=4, held_windows=2, cosine_steps=(10,))  # fmt: skip
    return {**cfg, **kw}


def test_a_run_goes_on_to_the_wall_budget_and_is_judged_there(tmp_path):
    """With a wall budget an SG run trains its steps (the equal-steps point), then on in
    10-step segments until its training wall time passes the budget; at_wall reads that
    last evaluation. Planted: no extension → red."""
    data = tasks.load_tinyshakespeare(_text(tmp_path))
    cfg = _tiny()
    res = L.train_run(data, "dni", 0, cfg, wall_budget=1.5)
    assert res["at_steps"]["step"] == cfg["steps"]
    final = res["final"]
    assert final["step"] > cfg["steps"] and final["step"] % 10 == 0
    assert final["wall"] >= 1.5
    before = [c for c in res["curve"] if c["step"] < final["step"]]
    assert before[-1]["wall"] < 1.5  # it stopped at the first check past the budget
    run = {"method": "dni", "settings": cfg, **res}
    assert R.at_wall(run, {"steps_wall": 1.5}) == final["val_bpc"]
    assert len(res["cosines"]) == 1 and len(res["cosines"][0]["cosine"]) == 2
    with pytest.raises(ValueError, match=r"`cosine_steps` must lie in 1\.\.steps=10"):
        L.train_run(data, "dni", 0, _tiny(cosine_steps=(11,)))


def _record(method, seed, bpc, wall_bpc=None, cos=(0.5, 0.5, 0.5, 0.5, 0.5), date="2030-01-01"):
    cfg = L.json_cfg(L.SCALES["medium"])
    end = {"step": cfg["steps"], "wall": 100.0, "val_bpc": bpc}
    curve = [{"step": 0, "wall": 0.0, "val_bpc": 6.0}, end]
    if wall_bpc is not None:
        curve.append({"step": cfg["steps"] + 500, "wall": 200.0, "val_bpc": wall_bpc})
    return {
        "key": f"{method}/s{seed}",
        "method": method,
        "settings": cfg,
        "at_steps": end,
        "final": curve[-1],
        "curve": curve,
        "steps_wall": 200.0 if method == "backprop" else 100.0,
        "cosines": [{"step": cfg["steps"], "cosine": list(cos)}],
        "run_date": f"{date}T00:00:00+00:00",
    }


def _runs(bp, cdni, dni, prop, cdni_wall, **kw):
    runs = {}
    for m, vals in (("backprop", bp), ("dni", dni), ("cdni", cdni), ("sg-prop", prop)):
        for s, v in enumerate(vals):
            w = cdni_wall[s] if m == "cdni" else (v - 0.1 if m != "backprop" else None)
            runs[f"{m}/s{s}"] = _record(m, s, v, w, **kw)
    return runs


def test_claims_margins_and_verdicts_from_planted_runs():
    """Margins against hand values (BPC; the tolerance 0.10 added where the claim says
    "within"), the resolution t₀.₉₅(2) · √(sd²/3 + sd²/3) (one-sided t), the regime, and
    data older than the registration → exploratory. Planted: the tolerance subtracted →
    red."""
    runs = _runs(bp=[2.40, 2.41, 2.42], cdni=[2.44, 2.45, 2.46], dni=[2.70, 2.71, 2.72],
                 prop=[2.50, 2.51, 2.52], cdni_wall=[2.30, 2.31, 2.32])  # fmt: skip
    c = {v["id"].split("/")[1]: v for v in R.claims(runs).values()}
    res = 2.920 * np.sqrt(2 * 0.01**2 / 3)  # one-sided t₀.₉₅ with 2 degrees of freedom
    assert c["cdni-near-bp"]["margin"] == pytest.approx(2.41 + 0.10 - 2.45)
    assert c["cdni-near-bp"]["resolution"] == pytest.approx(res, rel=1e-3)
    assert c["cdni-near-bp"]["verdict"] == "held"
    assert c["dni-near-bp"]["margin"] == pytest.approx(2.41 + 0.10 - 2.71)
    assert c["dni-near-bp"]["verdict"] == "contradicted"
    assert c["cdni-vs-dni"]["margin"] == pytest.approx(2.71 - 2.45)
    assert c["prop-near-cdni"]["margin"] == pytest.approx(2.45 + 0.10 - 2.51)
    assert c["cdni-vs-bp-wall"]["margin"] == pytest.approx(2.41 - 2.31)
    assert c["cdni-vs-bp-wall"]["verdict"] == "held"
    assert c["cdni-cosine-positive"]["margin"] == pytest.approx(0.5)
    # backprop above the regime's 2.90: a failure says nothing
    out = _runs(bp=[2.95, 2.96, 2.97], cdni=[3.20, 3.21, 3.22], dni=[3.2, 3.21, 3.22],
                prop=[3.2, 3.21, 3.22], cdni_wall=[3.1, 3.11, 3.12])  # fmt: skip
    c = {v["id"].split("/")[1]: v for v in R.claims(out).values()}
    assert c["cdni-near-bp"]["verdict"] == "untested"
    assert "outside the regime" in c["cdni-near-bp"]["regime_note"]
    # a missing run: untested, never filled in
    del runs["cdni/s2"]
    assert all(v["verdict"] == "untested" for v in R.claims(runs).values()
               if "cDNI" in v["value"] and "prop" not in v["value"])  # fmt: skip
    old = _runs(bp=[2.40, 2.41, 2.42], cdni=[2.44, 2.45, 2.46], dni=[2.70, 2.71, 2.72],
                prop=[2.50, 2.51, 2.52], cdni_wall=[2.30, 2.31, 2.32],
                date="2026-01-01")  # fmt: skip
    assert {v["verdict"] for v in R.claims(old).values()} == {"exploratory"}


def _args(*argv):
    p = argparse.ArgumentParser()
    reproduce.add_arguments(p)
    return p.parse_args(list(argv))


def test_reproduce_dni_transformer_smoke(tmp_path):
    """``sgjax reproduce dni-transformer --scale smoke`` on a small text: 4 runs, one line
    each in runs.jsonl, with curves, cosines per boundary, tokens/s and CPU time, a report
    and the 6 claims (outside the regime: not the registered settings); run again, it resumes (no
    run repeated — planted: the finished-run check removed → red); without the text it
    says how to provide it before training."""
    (tmp_path / "data").mkdir()
    data, out = _text(tmp_path / "data"), tmp_path / "o"
    args = _args("dni-transformer", "--scale", "smoke", "--out", str(out), "--data-dir",
                 str(data), "--no-progress")  # fmt: skip
    assert reproduce.run(args) == 0
    lines = (out / "runs.jsonl").read_text().splitlines()
    recs = [json.loads(s) for s in lines]
    assert [r["key"] for r in recs] == [f"{m}/s0" for m in L.METHODS]
    cfg = L.SCALES["smoke"]
    for r in recs:
        assert r["cpu_seconds"] > 0 and r["tokens_per_s"] > 0
        assert [c["step"] for c in r["curve"]][: 1 + cfg["steps"] // cfg["eval_every"]] == list(
            range(0, cfg["steps"] + 1, cfg["eval_every"])
        )
        want = [] if r["method"] == "backprop" else [cfg["blocks"] + 1] * len(cfg["cosine_steps"])
        assert [len(c["cosine"]) for c in r["cosines"]] == want
    res = json.loads((out / "results.json").read_text())
    assert len(res["claims"]) == 6
    # outside the registered regime (not the medium settings): never held or contradicted
    assert not any(c["regime"] for c in res["claims"].values())
    assert not {c["verdict"] for c in res["claims"].values()} & {"held", "contradicted"}
    assert (out / "bpc_by_steps.png").exists() and "## Verdicts" in (out / "report.md").read_text()
    assert reproduce.run(args) == 0
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"input\.txt"):
        reproduce.run(_args("dni-transformer", "--out", str(tmp_path / "o2"), "--data-dir",
                            str(empty), "--no-progress"))  # fmt: skip


def test_the_gpu_scale_is_valid_and_as_large_as_its_comment_says():
    """scripts/gpu_check.sh's scale: accepted by the settings check (so the device call
    does not fail on it) and ~25M parameters, 8k tokens a step, as sized for the call."""
    cfg = L.SCALES["gpu"]
    L.check_settings(cfg)
    net = tf.char_lm(65, context=cfg["context"], width=cfg["width"], blocks=cfg["blocks"],
                     heads=cfg["heads"])  # fmt: skip
    shapes = jax.eval_shape(net.init, jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert 20e6 < n < 30e6, n
    assert cfg["batch"] * cfg["context"] == 8192
    assert max(cfg["cosine_steps"]) <= cfg["steps"]
    script = (Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh").read_text()
    assert "SCALE=${SCALE:-gpu}" in script and "--methods backprop,cdni,dni" in script
