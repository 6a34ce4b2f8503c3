"""Fig. 8: linear classifier and regressor probes of every layer of the deep ReLU nets
that :func:`sgjax.apps.experiments.deep.trained_networks` trains (paper §3.5)."""

from __future__ import annotations

import numpy as np

from sgjax import diagnostics as dg
from sgjax.apps.experiments import common as C
from sgjax.apps.experiments.deep import (
    _claims_section,
    _hidden,
    _settings_text,
    _training_section,
    trained_networks,
    training_summary,
)
from sgjax.apps.experiments.deep_claims import LABELS, METHODS, PAPER_PROBES, _ms, claims


def run_fig8(ctx: C.Context) -> dict:
    """Fig. 8: linear probes of every layer. Compute, then claims, then render."""
    tr = trained_networks(ctx)
    results, n_probe, n_held = _fig8_compute(ctx, tr)
    results["training"] = training_summary(tr)
    results["claims"] = claims("fig8", results)
    _fig8_render(ctx, tr, results, n_probe, n_held)
    return results


def _fig8_compute(ctx: C.Context, tr: dict) -> tuple[dict, int, int]:
    """Probe accuracies and regressor errors per method and layer (no files written)."""
    cfg = tr["settings"]
    ds = C.load_mnist(ctx, cfg["n_train"], n_test=1)
    # Train-set probes saturate when the probe set is small next to the width (points in
    # 256 dimensions are easily separable), so a held-out accuracy is reported beside the
    # paper's train accuracy: it still tells the layers apart.
    n = len(ds.x_train)
    perm = np.random.default_rng(ctx.seed + 1).permutation(n)
    n_probe = min(cfg["probe_points"], 2 * n // 3)
    n_held = min(max(cfg["heldout_points"], 1), n - n_probe)
    idx, held = perm[:n_probe], perm[n_probe : n_probe + n_held]
    xs, ys = ds.x_train[idx], ds.y_train[idx]
    xh, yh = ds.x_train[held], ds.y_train[held]
    results: dict = {
        "settings": cfg,
        "methods": {},
        "probe_points": len(xs),
        "heldout_points": len(xh),
    }
    for m, r in tr["methods"].items():
        # each network's probes are cached too (they take minutes at the medium scale)
        pname = f"{tr.get('name')}-{m}-fig8-p{len(xs)}-h{len(xh)}-k{cfg['probe_steps']}"
        done = C.cache_load(ctx, pname) if "name" in tr else None
        if done is not None:
            results["methods"][m] = done
            continue
        hs = _hidden(cfg, r["params"], xs)
        hh = _hidden(cfg, r["params"], xh)
        fits = [
            dg.linear_probe_accuracy(
                h, ys, h_eval=he, y_eval=yh, steps=cfg["probe_steps"], num_classes=10
            )
            for h, he in zip(hs, hh)
        ]
        mse = [dg.linear_regressor_mse(h, xs) for h in hs]
        results["methods"][m] = {
            "classifier_train_accuracy": [f["train"] for f in fits],
            "classifier_heldout_accuracy": [f["eval"] for f in fits],
            "regressor_mse": mse,
        }
        if "name" in tr:
            C.cache_save(ctx, pname, results["methods"][m])
    return results, len(xs), len(xh)


def _fig8_render(ctx: C.Context, tr: dict, results: dict, n_probe: int, n_held: int) -> None:
    """The figure, report.md and results.json of Fig. 8."""
    cfg, M, L = tr["settings"], results["methods"], tr["settings"]["hidden"]
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    layers = np.arange(1, L + 1)
    for m in _ms(results):
        axes[0].plot(layers, M[m]["classifier_train_accuracy"], "-o", ms=3, label=LABELS[m])
        axes[0].plot(
            layers, M[m]["classifier_heldout_accuracy"], "--", color=f"C{METHODS.index(m)}"
        )
        axes[1].plot(layers, M[m]["regressor_mse"], "-o", ms=3, label=LABELS[m])
    axes[0].set_ylabel("classifier probe: train (—) / held-out (--) acc.")
    axes[1].set_ylabel("linear regressor probe: ‖x − x̂‖² (mean)")
    for ax in axes:
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    figs = [C.save_figure(fig, ctx.out / "fig8_probes.png")]
    train_sec, _ = _training_section(tr)
    rows = []
    for layer in range(1, L + 1):
        rows.append(
            [layer]
            + [M[m]["classifier_train_accuracy"][layer - 1] for m in _ms(results)]
            + [M[m]["classifier_heldout_accuracy"][layer - 1] for m in _ms(results)]
            + [M[m]["regressor_mse"][layer - 1] for m in _ms(results)]
        )
    sections = [
        *train_sec,
        "## Linear probes per layer (Fig. 8)",
        "",
        f"{n_probe} training points; classifier: softmax regression (full-batch Adam, "
        f"{cfg['probe_steps']} steps, standardised features, no regularisation), train "
        f"accuracy (the paper's quantity) and accuracy on {n_held} other training points "
        "(ours: the train accuracy saturates when the probe set is small); regressor: "
        "least squares from the layer back to the input, residual "
        "‖x − x̂‖² summed over pixels (pixels in [0, 1]) and averaged over points. The "
        "paper's regressor units are not stated (its values are ≈700–4000), so compare "
        "the ordering.",
        "",
        C.table(
            ["layer"]
            + [f"clf {LABELS[m]}" for m in _ms(results)]
            + [f"held-out {LABELS[m]}" for m in _ms(results)]
            + [f"reg {LABELS[m]}" for m in _ms(results)],
            rows,
        ),
        "",
        "Paper (read off Fig. 8): "
        + "; ".join(f"{LABELS[m]}: {v}" for m, v in PAPER_PROBES.items()),
        "",
        *_claims_section(results, cfg),
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
    ]
    C.write_report(ctx, "Fig. 8 — linear probes", sections, _settings_text(cfg))
    C.write_json(ctx.out / "results.json", results)
