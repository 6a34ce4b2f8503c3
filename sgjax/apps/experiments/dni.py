"""The DNI paper's every-layer MNIST FCN (Jaderberg et al. 2017, §3.3; paper.md §5.2–5.3).

FCNs of 3–6 layers (counting the output layer) of 256 units, each hidden layer
Linear → norm → ReLU, with a synthetic gradient after *every* hidden layer, trained four
ways: backprop; DNI (an unconditioned SG); cDNI (the label-conditioned linear SG
``hA + yB + C``); and "No Bprop" (only the last layer trained: the lower layers receive
an SG that is held at zero: the rule's ``sg_optimizer = optax.set_to_zero()``). Test error is
reported. The DNI paper's numbers are unverified recollections (paper.md §5.3), so they
are soft targets.

Departure: the DNI paper's unconditioned SG model is an MLP with two hidden layers of
1024; on this CPU the medium scale uses a linear unconditioned SG (``hA + C``) and the
paper scale the MLP.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from sgjax import estimators, nets, rules, train
from sgjax.apps.experiments import common as C

SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        layers=(3,),
        width=32,
        n_train=1000,
        n_test=500,
        steps=60,
        batch=64,
        lr=1e-3,
        dni="linear",
        dni_hidden=(1024, 1024),
        methods=("no_bprop", "backprop", "dni", "cdni"),
    ),
    "medium": dict(
        layers=(3, 4, 5, 6),
        width=256,
        n_train=None,
        n_test=None,
        steps=3000,
        batch=256,
        lr=1e-4,
        dni="linear",
        dni_hidden=(1024, 1024),
        methods=("no_bprop", "backprop", "dni", "cdni"),
    ),
    "paper": dict(
        layers=(3, 4, 5, 6),
        width=256,
        n_train=None,
        n_test=None,
        steps=500000,
        batch=256,
        lr=3e-5,
        dni="mlp",
        dni_hidden=(1024, 1024),
        methods=("no_bprop", "backprop", "dni", "cdni"),
    ),
}

METHODS = ("no_bprop", "backprop", "dni", "cdni")
PAPER_STEPS = 500_000
#: an SG needs a boundary between hidden layers
MINIMUM = {"layers": 2, "width": 1, "steps": 1, "batch": 1}
LABELS = {"no_bprop": "No Bprop", "backprop": "Bprop", "dni": "DNI", "cdni": "cDNI"}


def _rule(method: str, cfg: dict):
    if method == "backprop":
        return rules.backprop()
    if method == "cdni":
        return rules.synthetic_gradients("conditioned", at="all")
    if method == "dni":
        est = estimators.mlp(cfg["dni_hidden"], use_y=False) if cfg["dni"] == "mlp" else "linear"
        return rules.synthetic_gradients(est, at="all")
    # No Bprop: held at zero (see the module doc) by the rule's own SG optimiser
    return rules.synthetic_gradients("label_only", at="all", sg_optimizer=optax.set_to_zero())


def run(ctx: C.Context) -> dict:
    cfg = C.settings_for(ctx, SETTINGS, minimum=MINIMUM)
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad or not cfg["methods"]:
        raise ValueError(f"--set methods=…: each must be one of {METHODS}, got {cfg['methods']}")
    if cfg["dni"] not in ("linear", "mlp"):
        raise ValueError(f"--set dni=…: must be 'linear' or 'mlp', got {cfg['dni']!r}")
    ds = C.load_mnist(ctx, cfg["n_train"], cfg["n_test"])
    results: dict = {"settings": cfg, "runs": {}, "n_test": len(ds.x_test)}
    for n_layers in cfg["layers"]:
        net = nets.mlp([784] + [cfg["width"]] * (n_layers - 1) + [10], "relu", norm="batch")
        for method in cfg["methods"]:
            state, _ = C.train_with_snapshots(
                C.Run(
                    net,
                    _rule(method, cfg),
                    "xent",
                    C.adam(cfg["lr"]),
                    steps=cfg["steps"],
                    batch_size=cfg["batch"],
                    seed=ctx.seed,
                    key=jax.random.key(ctx.seed),
                ),
                ds.x_train,
                ds.y_train,
                progress=ctx.progress,
                desc=f"dni {n_layers} {method}",
            )
            test = train.evaluate(net, state.params, "xent", ds.x_test, ds.y_test)
            tr = train.evaluate(net, state.params, "xent", ds.x_train[:10000], ds.y_train[:10000])
            results["runs"][f"{n_layers}/{method}"] = {
                "test_error": 1.0 - test["accuracy"],
                "train_error": 1.0 - tr["accuracy"],
            }
    results["claims"] = claims(results)
    figs = _plot(ctx, results, cfg)
    _report(ctx, results, cfg, figs)
    C.write_json(ctx.out / "results.json", results)
    return results


def _err(results, n, m):
    return results["runs"][f"{n}/{m}"]["test_error"]


def claims(results: dict) -> dict:
    """The DNI paper's soft FCN claims (paper.md §6 item 27) from a run's ``results``.

    Test errors are estimates on ``n_test`` images: margins within two binomial standard
    errors are inconclusive. The paper's numbers are after 500k iterations: a shorter run
    is outside its regime (at best consistent). Claims whose methods were not run are left
    out.
    """
    cfg = results["settings"]
    L = cfg["layers"]
    n = int(results.get("n_test") or 10000)
    ran = {k.split("/")[1] for k in results["runs"]}
    long_enough = cfg["steps"] >= PAPER_STEPS
    regime = {
        "regime": long_enough,
        "regime_note": "" if long_enough else f"{cfg['steps']} of the paper's 500k steps",
    }
    out = {}
    if {"cdni", "backprop"} <= ran:
        gaps = [_err(results, n_, "cdni") - _err(results, n_, "backprop") for n_ in L]
        j = int(np.argmax(gaps))
        e_c, e_b = _err(results, L[j], "cdni"), _err(results, L[j], "backprop")
        out["cDNI test error ≤ Bprop + 0.5 pp (every depth)"] = C.claim(
            ", ".join(f"{g * 100:+.2f} pp" for g in gaps),
            "≤ +0.50 pp",
            0.005 - gaps[j],
            C.accuracy_resolution(e_c, e_b, n),
            cid="dni-mnist/cdni-vs-bp",
            **regime,
        )
    if "dni" in ran and len(L) > 1:
        dni = [_err(results, n_, "dni") for n_ in L]
        # "degrades with depth": the deepest FCN's error above the shallowest's (the
        # sequence is shown; adjacent steps of a few tenths are within the test noise)
        out[f"DNI ({cfg['dni']} SG) error increases with depth"] = C.claim(
            ", ".join(f"{e * 100:.2f}%" for e in dni),
            f"{L[-1]} layers above {L[0]}",
            dni[-1] - dni[0],
            C.accuracy_resolution(dni[-1], dni[0], n),
            cid="dni-mnist/dni-depth",
            **regime,
        )
    if "no_bprop" in ran:
        nob = [_err(results, n_, "no_bprop") for n_ in L]
        out["No Bprop error ≥ 9%"] = C.claim(
            ", ".join(f"{e * 100:.2f}%" for e in nob),
            "≥ 9%",
            min(nob) - 0.09,
            C.accuracy_resolution(min(nob), None, n),
            cid="dni-mnist/no-bprop",
            **regime,
        )
    return out


def _plot(ctx, results, cfg) -> list[str]:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for j, m in enumerate(METHODS):
        if m not in cfg["methods"]:
            continue
        ax.plot(
            cfg["layers"],
            [100 * _err(results, n, m) for n in cfg["layers"]],
            "-o",
            color=f"C{j}",
            label=LABELS[m],
        )
    ax.set_xlabel("layers (incl. output)")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.set_xticks(cfg["layers"])
    ax.legend(fontsize=7)
    return [C.save_figure(fig, ctx.out / "dni_mnist.png")]


def _report(ctx, results, cfg, figs) -> None:
    ms = [m for m in METHODS if m in cfg["methods"]]
    rows = [[n] + [f"{100 * _err(results, n, m):.2f}%" for m in ms] for n in cfg["layers"]]
    sections = [
        "## Test error (%)",
        "",
        C.table(["layers"] + [LABELS[m] for m in ms], rows),
        "",
        "The DNI paper's table (500k iterations) is not reproduced in our digest — its "
        "numbers are unverified recollections (paper.md §5.3): cDNI within a few tenths of a "
        "point of backprop, unconditioned DNI degrading with depth, No Bprop far worse; a "
        "third-party reproduction reports ≈97.0% (cDNI) vs ≈97.6% (backprop) test accuracy "
        "for the 3-layer FCN.",
        "",
        "## Claims (soft targets, paper.md §6 item 27)",
        "",
        C.claims_table(results["claims"]),
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
    ]
    C.write_report(
        ctx,
        "DNI paper — every-layer MNIST FCN",
        sections,
        {
            "network": f"784-{cfg['width']}×(layers−1)-10, Linear → norm='batch' → ReLU",
            "SG modules": "after every hidden layer, bootstrapped; cDNI linear hA+yB+C; DNI "
            + (
                f"MLP {'×'.join(map(str, cfg['dni_hidden']))} on h (ReLU, zero-initialised output)"
                if cfg["dni"] == "mlp"
                else "linear hA+C (the DNI paper used an MLP 2×1024; too slow here)"
            ),
            "optimiser": f"Adam {cfg['lr']:g} (net and SGs), batch {cfg['batch']}",
            "steps": cfg["steps"],
            "test evaluation": "batches of 1024 with batch statistics (no running averages)",
        },
    )
