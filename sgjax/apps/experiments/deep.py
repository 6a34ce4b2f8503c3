"""Figs. 3, 5, 7, 8: what deep ReLU MNIST nets learn under each rule (paper §3.3–3.5).

(Three figures share one set of trained networks, each split compute → render; Fig. 8's
probes are in :mod:`sgjax.apps.experiments.fig8`, the claims and the paper's read-off
values in :mod:`sgjax.apps.experiments.deep_claims`.)

One set of networks serves three figures: a deep ReLU MLP (20 hidden layers at the
medium and paper scales, norm after every hidden dense layer) trained on MNIST with

* ``backprop``;
* ``sg`` — a single label-conditioned linear SG in the middle (boundary 11 of 21: between
  layers 11 and 12, as in Fig. 3's caption);
* ``sg_all`` — an SG after every hidden layer (SG*, bootstrapped);
* ``dfa`` — direct feedback alignment (Fig. 7).

During training the cosine between each rule's signal and the true gradient is logged per
boundary. After training: per-layer RDMs on label-sorted points and their within-class
distance to the last hidden layer (Fig. 3, Fig. 7), normalised weight norms (Fig. 5),
linear classifier and regressor probes (Fig. 8). The trained networks are cached in
``ctx.cache_dir`` so that ``reproduce all`` (or a shared cache) trains them once.

Departures, stated in every report: the paper's small L2 penalty value is not given (we
use ``l2`` below, on the weight matrices, for every method); the paper's batch norm is
``norm="batch"`` here (batch statistics, no running averages, see :mod:`sgjax.nets`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax import diagnostics as dg
from sgjax import losses, nets, rules
from sgjax.apps.experiments import common as C
from sgjax.apps.experiments.deep_claims import (
    LABELS,
    METHODS,
    PAPER_NORMS,
    PAPER_RDM,
    TRAINED,
    _ms,
    claims,
)

SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        hidden=4,
        width=32,
        n_train=1000,
        steps=50,
        batch=64,
        lr=1e-3,
        l2=1e-4,
        rdm_points=100,
        probe_points=300,
        heldout_points=200,
        probe_steps=200,
        eval_points=500,
        snapshots=3,
        methods=("backprop", "sg", "sg_all", "dfa"),
    ),
    "medium": dict(
        hidden=20,
        width=256,
        n_train=60000,
        steps=4000,
        batch=128,
        lr=3e-4,
        l2=1e-4,
        rdm_points=400,
        probe_points=5000,
        heldout_points=10000,
        probe_steps=500,
        eval_points=5000,
        snapshots=8,
        methods=("backprop", "sg", "sg_all", "dfa"),
    ),
    "paper": dict(
        hidden=20,
        width=512,
        n_train=60000,
        steps=100000,
        batch=128,
        lr=3e-5,
        l2=1e-4,
        rdm_points=400,
        probe_points=10000,
        heldout_points=10000,
        probe_steps=1000,
        eval_points=10000,
        snapshots=12,
        methods=("backprop", "sg", "sg_all", "dfa"),
    ),
}


# the settings that change the trained networks (the others only change what is measured)
TRAINING_KEYS = ("hidden", "width", "n_train", "steps", "batch", "lr", "l2", "eval_points",
                 "snapshots")  # fmt: skip
#: the claims name layers below, at and above a middle SG and the first/last k layers
MINIMUM = {"hidden": 4, "width": 1, "steps": 1, "batch": 1, "rdm_points": 10, "probe_points": 2}


def settings(ctx: C.Context) -> dict:
    cfg = C.settings_for(ctx, SETTINGS, minimum=MINIMUM)
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad or not cfg["methods"]:
        raise ValueError(f"--set methods=…: each must be one of {METHODS}, got {cfg['methods']}")
    cfg["methods"] = tuple(m for m in METHODS if m in cfg["methods"])
    return cfg


def cache_name(ctx: C.Context, cfg: dict) -> str:
    """The cache name of the four networks; ``--set`` of a training setting changes it."""
    name = f"deep-{ctx.scale}-s{ctx.seed}-n{cfg['steps']}-w{cfg['width']}-d{cfg['hidden']}"
    extra = sorted((k, v) for k, v in ctx.overrides.items() if k in TRAINING_KEYS)
    if extra:
        name += "-" + "-".join(f"{k}{v}" for k, v in extra).replace("/", "_").replace(",", "_")
    return name


def _rule(method: str, depth: int):
    if method == "backprop":
        return rules.backprop()
    if method == "sg":
        return rules.synthetic_gradients("conditioned", at="middle")
    if method == "sg_all":
        return rules.synthetic_gradients("conditioned", at="all")
    return rules.direct_feedback_alignment()


def _net(cfg):
    return nets.mlp([784] + [cfg["width"]] * cfg["hidden"] + [10], "relu", norm="batch")


def trained_networks(ctx: C.Context) -> dict:
    """Train (or load from the cache) the four networks; returns params and logs."""
    cfg = settings(ctx)
    name = cache_name(ctx, cfg)
    every = cfg["methods"] == METHODS  # a subset is never saved or loaded as the whole set
    cached = C.cache_load(ctx, name) if every else None
    if cached is not None:
        # what is measured (probe sizes, RDM points) is today's setting, not the cache's
        measured = {k: v for k, v in cfg.items() if k not in TRAINING_KEYS}
        return {**cached, "settings": {**cached["settings"], **measured}, "name": name}
    ds = C.load_mnist(ctx, cfg["n_train"], n_test=1)
    x, y = ds.x_train, ds.y_train
    net = _net(cfg)
    rng = np.random.default_rng(ctx.seed)
    ev = rng.choice(len(x), min(cfg["eval_points"], len(x)), replace=False)
    cos_idx = rng.choice(len(x), min(256, len(x)), replace=False)
    # step 0 too: the zero-initialised SGs' cosine there is exactly 0
    snaps = [0, *C.log_steps(cfg["steps"], cfg["snapshots"], first=max(1, cfg["steps"] // 100))]
    out: dict = {"settings": cfg, "methods": {}, "name": name}
    for method in cfg["methods"]:
        # each network is cached as soon as it is trained: an interrupted run resumes with
        # the next method instead of retraining the ones already done
        part = C.cache_load(ctx, f"{name}-{method}")
        if part is not None:
            out["methods"][method] = part
            continue
        rule = _rule(method, net.depth)
        cos_fn = jax.jit(
            lambda st, rule=rule: dg.gradient_cosines(
                net, rule, st.rule_state, st.params, x[cos_idx], y[cos_idx], "xent"
            )
        )
        acc_fn = jax.jit(lambda params: losses.accuracy(net.apply(params, x[ev]), y[ev]))

        def on_snapshot(step, state, cos_fn=cos_fn, acc_fn=acc_fn):
            return {
                "train_accuracy": float(acc_fn(state.params)),
                "cosine": np.asarray(cos_fn(state)),
            }

        state, recs = C.train_with_snapshots(
            C.Run(
                net,
                rule,
                "xent",
                C.adam(cfg["lr"], cfg["l2"]),
                steps=cfg["steps"],
                batch_size=cfg["batch"],
                seed=ctx.seed,
                key=jax.random.key(ctx.seed),
            ),
            x,
            y,
            snapshot_at=snaps,
            on_snapshot=on_snapshot,
            progress=ctx.progress,
            desc=f"deep {method}",
            # mid-network too: a 100k-step network takes most of an hour on one core
            checkpoint=C.cache_dir(ctx, f"{name}-{method}.partial"),
            checkpoint_every=2000,
        )
        out["methods"][method] = {"params": C.to_numpy(state.params), "log": recs}
        C.cache_save(ctx, f"{name}-{method}", out["methods"][method])
        C.cache_drop(ctx, f"{name}-{method}.partial")
    if every:
        C.cache_save(ctx, name, out)
    return out


def _hidden(cfg, params, x):
    net = _net(cfg)
    hs = jax.jit(net.hidden)(jax.tree.map(jnp.asarray, params), jnp.asarray(x))
    return [np.asarray(h) for h in hs[1:-1]]  # hidden layers 1..L


def _training_section(tr) -> tuple[list[str], dict]:
    rows, summary = [], {}
    for m, r in tr["methods"].items():
        last = r["log"][-1]
        summary[m] = {"train_accuracy": last["train_accuracy"]}
        rows.append([LABELS[m], last["step"], last["train_accuracy"]])
    return [
        "## The trained networks",
        "",
        C.table(["method", "steps", "train accuracy (eval subset)"], rows),
        "",
    ], summary


def _settings_text(cfg) -> dict:
    return {
        "network": f"784-{cfg['width']}×{cfg['hidden']}-10 ReLU, norm='batch' (batch "
        "statistics) after every hidden dense layer",
        "methods": "backprop; single conditioned linear SG at the middle boundary; SG after "
        "every hidden layer (SG*, bootstrapped); DFA",
        "optimiser": f"Adam {cfg['lr']:g} (net and SGs), L2 {cfg['l2']:g} on W, "
        f"batch {cfg['batch']}",
        "training data": f"first {cfg['n_train']} MNIST training images",
        "steps": cfg["steps"],
    }


def training_summary(tr: dict) -> dict:
    """Final train accuracy (on the evaluation subset) of each network."""
    return {m: {"train_accuracy": r["log"][-1]["train_accuracy"]} for m, r in tr["methods"].items()}


def _claims_section(results: dict, cfg: dict) -> list[str]:
    return [
        "## Claims",
        "",
        f"One seed, after {cfg['steps']} steps (the paper: 100k). "
        "Verdicts as defined in docs/reproduce.md: margin > 0 passes; within the "
        "resolution, inconclusive; a claim about converged networks tested on networks "
        f"below {TRAINED:.0%} train accuracy is at best consistent and a failure there is "
        "untested; 'contradicted' holds at this budget only. Distances and norm ratios "
        "have no per-run resolution: combine seeds (`--aggregate`) for a verdict.",
        "",
        C.claims_table(results["claims"]),
        "",
    ]


# ---------------------------------------------------------------------------------- Fig. 3


def run_fig3(ctx: C.Context) -> dict:
    """Fig. 3 / 7: RDM drift per layer. Compute, then claims, then render."""
    tr = trained_networks(ctx)
    L = tr["settings"]["hidden"]
    del L
    results, rdms = _fig3_compute(ctx, tr)
    results["training"] = training_summary(tr)
    results["claims"] = claims("fig3", results)
    _fig3_render(ctx, tr, results, rdms)
    return results


def _fig3_compute(ctx: C.Context, tr: dict) -> tuple[dict, dict]:
    """RDM distances to the last layer and the logged cosines, per method (no files)."""
    cfg = tr["settings"]
    L = cfg["hidden"]
    ds = C.load_mnist(ctx, cfg["n_train"], n_test=1)
    idx = dg.label_sorted_sample(ds.y_train, cfg["rdm_points"], seed=ctx.seed)
    xs, ys = ds.x_train[idx], ds.y_train[idx]
    sg_boundary = rules.resolve_at("middle", L + 1)[0]
    results: dict = {"settings": cfg, "sg_boundary": sg_boundary, "methods": {}}
    rdms = {}
    for m, r in tr["methods"].items():
        Rs = [dg.rdm(h) for h in _hidden(cfg, r["params"], xs)]
        rdms[m] = Rs
        dist = [dg.rdm_distance(R, Rs[-1], ys) for R in Rs]
        cos = np.stack([np.asarray(rec["cosine"]) for rec in r["log"]])
        results["methods"][m] = {
            "distance_to_last": dist,
            "cosine_steps": [rec["step"] for rec in r["log"]],
            "cosine": cos[:, :L],
            "train_accuracy": [rec["train_accuracy"] for rec in r["log"]],
        }
    return results, rdms


def _fig3_render(ctx: C.Context, tr: dict, results: dict, rdms: dict) -> None:
    """The figures, report.md and results.json of Fig. 3 / 7."""
    cfg = tr["settings"]
    L, sg_boundary = cfg["hidden"], results["sg_boundary"]
    figs = _fig3_plots(ctx, results, rdms, L, sg_boundary)
    train_sec, _ = _training_section(tr)
    dist_rows = []
    for layer in range(1, L + 1):
        row: list[Any] = [layer]
        for m in _ms(results):
            row.append(results["methods"][m]["distance_to_last"][layer - 1])
        for m in ("backprop", "sg", "sg_all"):
            row.append(PAPER_RDM[m].get(layer) if L == 20 else None)
        dist_rows.append(row)
    sections = [
        *train_sec,
        "## RDM distance to the last hidden layer (Fig. 3 right, Fig. 7 bottom)",
        "",
        f"RMS difference of the within-class RDM entries (1 − Pearson over units) of "
        f"{cfg['rdm_points']} label-sorted training points; the single SG sits at boundary "
        f"{sg_boundary} (between layers {sg_boundary} and {sg_boundary + 1}). Paper values are "
        "read off the figure (±0.02, paper.md §3.3; — where not read); the normalisation of "
        "the paper's distance is not stated, so compare shapes.",
        "",
        C.table(
            ["layer", *[LABELS[m] for m in _ms(results)], "paper Bprop", "paper SG", "paper SG*"],
            dist_rows,
        ),
        "",
        *_claims_section(results, cfg),
        "## Signal vs true gradient",
        "",
        "Cosine between the signal each rule sends to boundary i and the true ∂L/∂h_i "
        "(flattened over a fixed batch of 256 training points), logged during training. For "
        "the single SG only its own boundary is shown (below it, layers receive the SG "
        "backpropagated; above it, exact gradients).",
        "",
        _cosine_table(results, sg_boundary),
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
    ]
    C.write_report(ctx, "Fig. 3 / Fig. 7 — representational drift", sections, _settings_text(cfg))
    C.write_json(ctx.out / "results.json", results)


def _cosine_table(results, k) -> str:
    if {"sg", "sg_all", "dfa"} - set(results["methods"]):
        return "(needs the single SG, SG* and DFA networks; not all were trained)"
    sg_all = results["methods"]["sg_all"]
    L = np.asarray(sg_all["cosine"]).shape[1]
    show = sorted({1, max(1, L // 4), max(1, L // 2), max(1, 3 * L // 4), L})
    rows = []
    for j, step in enumerate(sg_all["cosine_steps"]):
        row = [step, results["methods"]["sg"]["cosine"][j][k - 1]]
        row += [sg_all["cosine"][j][b - 1] for b in show]
        row += [results["methods"]["dfa"]["cosine"][j][b - 1] for b in (1, L)]
        rows.append(row)
    header = ["step", f"single SG (b{k})"]
    header += [f"SG* b{b}" for b in show] + ["DFA b1", f"DFA b{L}"]
    return C.table(header, rows)


def _fig3_plots(ctx, results, rdms, L, k) -> list[str]:
    plt = C.pyplot()
    show = sorted({1, max(1, L // 4), k, min(L, k + 1), max(1, 3 * L // 4), L})
    n_m = len(_ms(results))
    fig, axes = plt.subplots(n_m, len(show), figsize=(1.5 * len(show), 1.6 * 4), squeeze=False)
    for r, m in enumerate(_ms(results)):
        for c, layer in enumerate(show):
            ax = axes[r][c]
            ax.imshow(rdms[m][layer - 1], cmap="viridis", vmin=0, vmax=2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}", fontsize=8)
            if c == 0:
                ax.set_ylabel(LABELS[m], fontsize=8)
    fig.suptitle("RDMs (1 − Pearson), label-sorted points", fontsize=9)
    names = [C.save_figure(fig, ctx.out / "fig3_rdms.png")]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    layers = np.arange(1, L + 1)
    for m in _ms(results):
        ax.plot(layers, results["methods"][m]["distance_to_last"], "-o", ms=3, label=LABELS[m])
    if L == 20:
        for m, style in (("backprop", "C0"), ("sg", "C1"), ("sg_all", "C2")):
            pts = sorted(PAPER_RDM[m].items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ":", color=style, alpha=0.6)
    ax.axvline(k + 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("within-class RDM distance to last layer")
    ax.set_title("ours (solid) vs paper, read off Fig. 3 (dotted)", fontsize=8)
    ax.legend(fontsize=7)
    names.append(C.save_figure(fig, ctx.out / "fig3_distance.png"))
    shown = [m for m in ("sg", "sg_all", "dfa") if m in results["methods"]]
    if not shown:
        return names
    fig, axes = plt.subplots(1, len(shown), figsize=(11 * len(shown) / 3, 3), squeeze=False)
    axes = axes[0]
    for ax, m in zip(axes, shown):
        r = results["methods"][m]
        im = ax.imshow(
            np.asarray(r["cosine"]).T,
            aspect="auto",
            origin="lower",
            cmap="coolwarm",
            vmin=-1,
            vmax=1,
        )
        ax.set_xticks(range(len(r["cosine_steps"])))
        ax.set_xticklabels(r["cosine_steps"], rotation=60, fontsize=6)
        ax.set_yticks(range(0, L, max(1, L // 5)))
        ax.set_yticklabels(range(1, L + 1, max(1, L // 5)), fontsize=6)
        ax.set_xlabel("step")
        ax.set_ylabel("boundary")
        ax.set_title(f"cos(δ̂, ∂L/∂h): {LABELS[m]}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8)
    names.append(C.save_figure(fig, ctx.out / "sg_cosine.png"))
    return names


# ---------------------------------------------------------------------------------- Fig. 5


def run_fig5(ctx: C.Context) -> dict:
    """Fig. 5: normalised weight norms per layer. Compute, then claims, then render."""
    tr = trained_networks(ctx)
    results = _fig5_compute(tr)
    results["training"] = training_summary(tr)
    results["claims"] = claims("fig5", results)
    _fig5_render(ctx, tr, results)
    return results


def _fig5_compute(tr: dict) -> dict:
    """Normalised weight norms per method and layer, and the means of the first/last k."""
    cfg = tr["settings"]
    L = cfg["hidden"]
    k = 5 if L >= 10 else max(1, L // 3)
    results: dict = {"settings": cfg, "k": k, "methods": {}}
    for m, r in tr["methods"].items():
        norms = dg.weight_norms(list(r["params"]))
        results["methods"][m] = {
            "norms": norms,
            "first_mean": float(norms[:k].mean()),
            "last_mean": float(norms[-k:].mean()),
        }
    return results


def _fig5_render(ctx: C.Context, tr: dict, results: dict) -> None:
    """The figure, report.md and results.json of Fig. 5."""
    cfg, M, k = tr["settings"], results["methods"], results["k"]
    L = cfg["hidden"]
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for m in _ms(results):
        ax.plot(np.arange(1, L + 1), M[m]["norms"], "-o", ms=3, label=LABELS[m])
    sgb = rules.resolve_at("middle", L + 1)[0]
    ax.axvline(sgb + 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("‖W_l‖² / Σ‖W_j‖²")
    ax.legend(fontsize=7)
    figs = [C.save_figure(fig, ctx.out / "fig5_weight_norms.png")]
    train_sec, _ = _training_section(tr)
    rows = [
        [LABELS[m], M[m]["first_mean"], M[m]["last_mean"], PAPER_NORMS.get(m, "—")]
        for m in _ms(results)
    ]
    sections = [
        *train_sec,
        "## Normalised weight norms (Fig. 5, 20-layer ReLU panel)",
        "",
        "‖W_l‖²_F / Σ_j ‖W_j‖²_F over the hidden layers (normalisation inferred: the "
        "paper's values sum to about 1). Only the 20-layer ReLU panel is reproduced.",
        "",
        C.table(["method", f"first-{k} mean", f"last-{k} mean", "paper (figure)"], rows),
        "",
        "Per layer: "
        + "; ".join(
            f"{LABELS[m]}: " + ", ".join(f"{v:.3f}" for v in M[m]["norms"]) for m in _ms(results)
        ),
        "",
        *_claims_section(results, cfg),
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
    ]
    C.write_report(ctx, "Fig. 5 — normalised weight norms", sections, _settings_text(cfg))
    C.write_json(ctx.out / "results.json", results)
