"""Stochastic updates (DNI paper §3.3; paper.md §5.1): cDNI vs backprop with skipped updates.

Each stage applies its update with probability ``p`` per step
(``train.make_step(..., p_update=p)``). What happens to the SG module at a skipped
stage's output is not settled by our digest of the DNI paper, so both readings run
(``sg_update``): ``with-stage`` (skipped with the stage) and ``every-step`` (trained every
step). Each at two budgets: **equal steps** (a stage makes p × as many updates as at
p = 1) and **equal updates** (1/p × the steps). Backprop with the same skips runs beside
them, and both methods at p = 1 give the reference.

The claims (registered in :mod:`sgjax.apps.experiments.registry` before any run): cDNI's
test-accuracy drop from p = 1 to p is no larger than backprop's, and cDNI ends within
one point of its p = 1 accuracy — judged at equal updates (at equal steps a stage makes
5× fewer updates, so a failure there is untested).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sgjax import nets, rules, train
from sgjax.apps.experiments import common as C
from sgjax.infra import data

SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        dataset="digits", depth=2, width=32, steps=40, batch=32, lr=1e-3, p=0.5, n_train=None
    ),
    "medium": dict(
        dataset="mnist", depth=3, width=256, steps=2000, batch=128, lr=3e-4, p=0.2, n_train=None
    ),
    "paper": dict(
        dataset="mnist", depth=3, width=256, steps=20000, batch=128, lr=3e-5, p=0.2, n_train=None
    ),
}
MINIMUM = {"depth": 2, "width": 1, "steps": 1, "batch": 1, "p": 1e-3}
POLICIES = train.SG_UPDATE_POLICIES
WITHIN = 0.01  # "keeps training well": within one point of p = 1 (our threshold)


def _runs(cfg: dict) -> list[tuple[str, str, float, int, str]]:
    """(key, method, p, steps, sg_update) of every network the experiment trains."""
    p, n = cfg["p"], cfg["steps"]
    long = round(n / p)
    out = [("sg/p1", "sg", 1.0, n, "with-stage"), ("backprop/p1", "backprop", 1.0, n, "")]
    for budget, steps in (("steps", n), ("updates", long)):
        for pol in POLICIES:
            out.append((f"sg/{pol}/equal-{budget}", "sg", p, steps, pol))
        out.append((f"backprop/equal-{budget}", "backprop", p, steps, ""))
    return out


def run(ctx: C.Context) -> dict:
    cfg = C.settings_for(ctx, SETTINGS, minimum=MINIMUM)
    if not 0 < cfg["p"] < 1:
        raise ValueError(f"--set p=…: must be in (0, 1), got {cfg['p']}")
    if cfg["dataset"] == "digits":
        ds = data.digits(seed=ctx.seed)
    else:
        ds = C.load_mnist(ctx, cfg["n_train"])
    sizes = [ds.x_train.shape[1]] + [cfg["width"]] * cfg["depth"] + [10]
    net = nets.mlp(sizes)
    results: dict = {"settings": cfg, "runs": {}, "n_test": len(ds.x_test), "seed": ctx.seed}
    for key, method, p, steps, pol in _runs(cfg):
        rule = (
            rules.synthetic_gradients("conditioned", at="all")
            if method == "sg"
            else rules.backprop()
        )
        opt = train.stagewise(optax.adam(cfg["lr"]))
        state = train.init(jax.random.key(ctx.seed), net, rule, opt)
        step = jax.jit(
            train.make_step(
                net,
                rule,
                "xent",
                opt,
                p_update=p,
                update_key=jax.random.key(1000 + ctx.seed),
                sg_update=pol or "with-stage",
            )
        )
        t0 = time.perf_counter()
        it = train.batches(ds.x_train, ds.y_train, cfg["batch"], seed=ctx.seed)
        updates = jnp.zeros(net.depth)
        for i, (x, y) in zip(range(steps), it):
            state, m = step(state, (jnp.asarray(x), jnp.asarray(y)))
            train.check_step(m, i)
            updates = updates + m["updated"]
        test = train.evaluate(net, state.params, "xent", ds.x_test, ds.y_test)
        tr = train.evaluate(net, state.params, "xent", ds.x_train, ds.y_train)
        results["runs"][key] = {
            "method": method,
            "p": p,
            "steps": steps,
            "sg_update": pol,
            "updates_per_stage": [int(u) for u in updates],
            "test_accuracy": test["accuracy"],
            "train_accuracy": tr["accuracy"],
            "seconds": time.perf_counter() - t0,
        }
        if ctx.progress:
            print(f"p-update {key}: test {test['accuracy']:.4f}", flush=True)
    results["claims"] = claims(results)
    _report(ctx, results)
    return results


def claims(results: dict) -> dict:
    """The p_update claims for each SG reading and budget, from a run's ``results``."""
    R, n = results["runs"], int(results["n_test"])
    acc = {k: r["test_accuracy"] for k, r in R.items()}
    c1, b1 = acc["sg/p1"], acc["backprop/p1"]
    out = {}
    for budget in ("steps", "updates"):
        cb = acc[f"backprop/equal-{budget}"]
        in_regime = budget == "updates"
        note = "" if in_regime else "equal steps: 1/p fewer updates"
        for pol in POLICIES:
            c = acc[f"sg/{pol}/equal-{budget}"]
            drop_c, drop_b = c1 - c, b1 - cb
            var = sum(a * (1 - a) for a in (c1, c, b1, cb))
            out[f"SG {pol}, equal {budget}: cDNI's drop ≤ backprop's"] = C.claim(
                f"{drop_c * 100:+.2f} pt",
                "≤ backprop's drop",
                drop_b - drop_c,
                2 * (var / n) ** 0.5,
                cid="p-update/cdni-drop-vs-bp",
                control=f"{drop_b * 100:+.2f} pt",
                regime=in_regime,
                regime_note=note,
            )
            out[f"SG {pol}, equal {budget}: cDNI within 1 pt of p = 1"] = C.claim(
                f"{c:.4f} vs {c1:.4f}",
                f"≥ p = 1's − {WITHIN}",
                c - (c1 - WITHIN),
                C.accuracy_resolution(c, c1, n),
                cid="p-update/cdni-within-1pt",
                regime=in_regime,
                regime_note=note,
            )
    return out


def _report(ctx: C.Context, results: dict) -> None:
    cfg = results["settings"]
    rows = [
        [
            k,
            r["p"],
            r["steps"],
            ", ".join(map(str, r["updates_per_stage"])),
            r["train_accuracy"],
            r["test_accuracy"],
            f"{r['seconds']:.0f}",
        ]
        for k, r in results["runs"].items()
    ]
    sections = [
        "## Runs",
        "",
        C.table(["run", "p", "steps", "updates per stage", "train acc", "test acc", "s"], rows),
        "",
        "## Claims",
        "",
        "One seed; combine seeds with `--aggregate`. Definitions in docs/reproduce.md.",
        "",
        C.claims_table(results["claims"]),
    ]
    settings = {
        "network": f"MLP {cfg['depth']}×{cfg['width']} ReLU on {cfg['dataset']}",
        "cDNI": "conditioned linear SG hA + yB + C after every hidden layer, bootstrapped",
        "optimiser": f"Adam {cfg['lr']:g}, one state per stage (train.stagewise)",
        "batch": cfg["batch"],
        "p_update": cfg["p"],
        "steps": f"{cfg['steps']} (equal steps) and {round(cfg['steps'] / cfg['p'])} "
        "(equal updates)",
    }
    C.write_report(ctx, "Stochastic updates (p_update)", sections, settings)
    C.write_json(ctx.out / "results.json", results)
