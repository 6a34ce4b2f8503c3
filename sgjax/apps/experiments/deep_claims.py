"""The claims of Figs. 3, 5 and 8 on the shared 20-layer networks, recomputed from a
run's results (the numbers :mod:`sgjax.apps.experiments.deep` computes and stores in
results.json), so that seeds run at different times aggregate with today's definitions.
Each claim is registered in :mod:`sgjax.apps.experiments.registry`.
"""

from __future__ import annotations

import numpy as np

from sgjax import rules
from sgjax.apps.experiments import common as C

METHODS = ("backprop", "sg", "sg_all", "dfa")
LABELS = {"backprop": "Bprop", "sg": "single SG", "sg_all": "SG*", "dfa": "DFA"}
#: the regime of the paper's Fig. 3/5/8 statements: networks trained to (almost) 100 %
#: train accuracy (the paper's are at ≈1.000 after 100k steps)
TRAINED = 0.99
#: Per-run resolution of the statistics that are deterministic functions of the trained
#: networks (RDM distances, norm ratios, regressor ratios): none. What decides them is
#: their spread over seeds, which `common.aggregate` measures (see docs/reproduce.md).
DETERMINISTIC = 0.0
#: the distance below which a layer's representation counts as settled (paper.md §3.3)
SETTLED = 0.05

# The paper's values, read off its figures (for the reports and the plots).
PAPER_RDM = {  # paper.md §3.3, read off Fig. 3 right (±0.02), 20 hidden layers
    "backprop": {
        1: 0.42,
        2: 0.41,
        3: 0.38,
        4: 0.32,
        5: 0.25,
        6: 0.16,
        7: 0.085,
        8: 0.045,
        10: 0.025,
        12: 0.02,
        20: 0.0,
    },
    "sg": {
        1: 0.38,
        2: 0.36,
        3: 0.30,
        4: 0.23,
        5: 0.18,
        8: 0.16,
        9: 0.15,
        10: 0.14,
        11: 0.115,
        12: 0.03,
        16: 0.035,
        20: 0.0,
    },
    "sg_all": {
        1: 0.33,
        5: 0.34,
        9: 0.32,
        10: 0.29,
        11: 0.275,
        12: 0.25,
        13: 0.21,
        14: 0.165,
        15: 0.10,
        16: 0.04,
        17: 0.012,
        20: 0.0,
    },
}

PAPER_NORMS = {  # paper.md §3.5, 20-layer ReLU panel
    "backprop": "≈0.051 → 0.054 (flat, slowly rising)",
    "sg": "below SG ≈0.075–0.095 (chaotic); above ≈0.024 → 0.008–0.012",
    "sg_all": "≈0.073 → 0.030 (decreasing)",
}

PAPER_PROBES = {  # paper.md §3.4, read off Fig. 8
    "backprop": "0.992 at layer 1, 1.000 from layer 2; regressor ≈3950–4000 from layer 13",
    "sg": "0.998 at layer 1, 1.000 from layer 2; regressor ≈3900 at layer 20",
    "sg_all": "0.984 at layer 1, 0.980–0.981 in layers 4–12, 1.000 at 20; regressor ≈3600 at 20",
    "dfa": "1.000 from layer 1; regressor ≈3150 at layer 5, ≈4050 at 20",
}


def _regime(results: dict, methods) -> dict:
    """Whether the networks a claim is about are in the paper's regime (trained ≥ 99 %)."""
    acc = {m: results["training"][m]["train_accuracy"] for m in methods}
    ok = all(a >= TRAINED for a in acc.values())
    note = (
        ""
        if ok
        else (
            "outside the paper's regime: "
            + ", ".join(f"{LABELS[m]} {a:.3f}" for m, a in acc.items() if a < TRAINED)
            + f" train accuracy (< {TRAINED})"
        )
    )
    return {"regime": ok, "regime_note": note}


def claims(figure: str, results: dict) -> dict:
    """The claims of ``figure`` ("fig3", "fig5" or "fig8") recomputed from its ``results``.

    ``results`` may be a run's results.json read back: every claim is a function of the
    stored numbers, so seeds run at different times aggregate with today's definitions.
    """
    fns = {"fig3": _fig3_claims, "fig5": _fig5_claims, "fig8": _fig8_claims}
    if figure not in fns:
        raise ValueError(f"claims: `figure` must be one of {sorted(fns)}, got {figure!r}")
    return fns[figure](results)


def _gather(results: dict, specs) -> dict:
    """The claims whose networks were all trained (``--set methods=…`` may leave some out)."""
    present = set(results["methods"])
    out = {}
    for needs, make in specs:
        if set(needs) <= present:
            name, rec = make()
            out[name] = rec
    return out


def _ms(results: dict) -> list[str]:
    return [m for m in METHODS if m in results["methods"]]


def _fig3_claims(results: dict) -> dict:
    """The paper's Fig. 3 / 7 statements (paper.md §6 item 24), checked on the distances.

    The distances are deterministic functions of the networks (no per-run resolution);
    their spread over seeds is the resolution (``common.aggregate``).
    """
    cfg = results["settings"]
    L, k = cfg["hidden"], results["sg_boundary"]
    d = {m: np.asarray(r["distance_to_last"], float) for m, r in results["methods"].items()}
    half = int(np.ceil(L / 2))
    lo = max(1, round(0.4 * L))  # paper: layers 8–20 of 20
    early = round(0.6 * L)  # paper: layers ≤ 12 of 20
    res = DETERMINISTIC

    def plateau():
        bp_max = float(d["backprop"][half - 1 :].max())
        return f"backprop: max distance over layers ≥ {half} ≤ 0.05 (plateau)", C.claim(
            bp_max,
            "≤ 0.05",
            0.05 - bp_max,
            res,
            cid="fig3/bp-plateau",
            **_regime(results, ("backprop",)),
        )

    def brk():
        drops = -np.diff(d["sg"])  # drops[j] = d[layer j+1] − d[layer j+2]
        window = list(range(lo - 1, L - 1))
        j_max = max(window, key=lambda j: drops[j])
        others = max((drops[j] for j in window if j != k - 1), default=-np.inf)
        name = f"single SG: largest adjacent drop in layers {lo}–{L} is at the SG ({k}→{k + 1})"
        return name, C.claim(
            f"{j_max + 1}→{j_max + 2} ({drops[j_max]:.3f}); at SG {drops[k - 1]:.3f}",
            f"{k}→{k + 1}, ≥ 0.05 and above every other drop",
            min(drops[k - 1] - 0.05, drops[k - 1] - others),
            res,
            cid="fig3/sg-break",
            **_regime(results, ("sg",)),
        )

    def no_plateau():
        low = float(d["sg_all"][:early].min())
        bp_low = float(d["backprop"][:early].min())
        name = f"SG*: min distance over layers ≤ {early} ≥ 0.2 (no plateau), above backprop's"
        return name, C.claim(
            low,
            "≥ 0.2 and > backprop's",
            min(low - 0.2, low - bp_low),
            res,
            cid="fig3/sg-star-no-plateau",
            control=round(bp_low, 4),
            **_regime(results, ("sg_all", "backprop")),
        )

    def dfa():
        return "DFA: distance at layer 1 below backprop's", C.claim(
            f"{d['dfa'][0]:.3f} vs {d['backprop'][0]:.3f}",
            "DFA < Bprop",
            float(d["backprop"][0] - d["dfa"][0]),
            res,
            cid="fig3/dfa-layer1-below-bp",
            **_regime(results, ("dfa", "backprop")),
        )

    def settles(dist: np.ndarray) -> int:
        """The first layer (1-based) from which the distance stays ≤ SETTLED."""
        above = np.nonzero(np.asarray(dist) > SETTLED)[0]
        return int(above[-1]) + 2 if len(above) else 1

    def dfa_settles():
        s_dfa, s_bp = settles(d["dfa"]), settles(d["backprop"])
        name = f"DFA: settles (distance ≤ {SETTLED} onwards) at an earlier layer than backprop"
        return name, C.claim(
            f"layer {s_dfa}",
            "DFA's layer < backprop's (paper: DFA barely evolves after layer 1)",
            float(s_bp - s_dfa),
            0.0,
            cid="fig3/dfa-settles-first",
            control=f"layer {s_bp}",
            **_regime(results, ("dfa", "backprop")),
        )

    return _gather(
        results,
        [
            (("backprop",), plateau),
            (("sg",), brk),
            (("sg_all", "backprop"), no_plateau),
            (("dfa", "backprop"), dfa),
            (("dfa", "backprop"), dfa_settles),
        ],
    )


def _fig5_claims(results: dict) -> dict:
    """The paper's Fig. 5 statements (paper.md §6 item 26), checked on the computed norms."""
    M = results["methods"]
    L = len(next(iter(M.values()))["norms"])
    k = results.get("k") or (5 if L >= 10 else max(1, L // 3))
    sgb = results.get("sg_boundary") or rules.resolve_at("middle", L + 1)[0]

    def sg_all():
        ratio = M["sg_all"]["first_mean"] / M["sg_all"]["last_mean"]
        bp = M["backprop"]["first_mean"] / M["backprop"]["last_mean"]
        return f"SG*: mean of first {k} ≥ 1.5 × mean of last {k}, above backprop's ratio", C.claim(
            round(float(ratio), 4),
            "≥ 1.5 and > backprop's (paper ≈ 0.07/0.033 ≈ 2.2; backprop flat)",
            min(ratio - 1.5, ratio - bp),
            DETERMINISTIC,
            cid="fig5/sg-star-decreasing",
            control=round(float(bp), 4),
            **_regime(results, ("sg_all", "backprop")),
        )

    def backprop():
        return f"backprop: mean of last {k} ≥ mean of first {k}", C.claim(
            f"{M['backprop']['last_mean']:.4f} vs {M['backprop']['first_mean']:.4f}",
            "last ≥ first (paper 0.054 vs 0.051)",
            M["backprop"]["last_mean"] - M["backprop"]["first_mean"],
            DETERMINISTIC,
            cid="fig5/bp-flat-or-rising",
            **_regime(results, ("backprop",)),
        )

    def single():
        sg = np.asarray(M["sg"]["norms"], float)
        bp = np.asarray(M["backprop"]["norms"], float)
        below, above = float(sg[:sgb].mean()), float(sg[sgb:].mean())
        bp_ratio = float(bp[:sgb].mean() / bp[sgb:].mean())
        name = (
            f"single SG: layers 1–{sgb} (below the SG) ≥ 1.5 × layers {sgb + 1}–{L}, "
            "above backprop's ratio"
        )
        return name, C.claim(
            f"{below:.4f} vs {above:.4f} (ratio {below / above:.2f})",
            "ratio ≥ 1.5 and > backprop's (paper ≈ 0.085 vs ≈ 0.015)",
            min(below / above - 1.5, below / above - bp_ratio),
            DETERMINISTIC,
            cid="fig5/single-sg-below-above",
            control=f"ratio {bp_ratio:.2f}",
            **_regime(results, ("sg", "backprop")),
        )

    return _gather(
        results,
        [
            (("sg_all", "backprop"), sg_all),
            (("backprop",), backprop),
            (("sg", "backprop"), single),
        ],
    )


def _fig8_claims(results: dict) -> dict:
    """The paper's Fig. 8 statements (paper.md §6 item 25 and §3.4), checked on the probes.

    Train-set probes saturate (1.000 for every method) when the probe set is small next to
    the width; a claim on a layer where every method's probe is 1.000 is untested
    (inconclusive), and the held-out probes (scored on other training points) carry the
    comparison.
    """
    M, cfg = results["methods"], results["settings"]
    L = cfg["hidden"]
    ms = _ms(results)
    # results.json from before the held-out size was a setting: half the probe set
    n_fit = int(results.get("probe_points", cfg["probe_points"]))
    n_held = int(results.get("heldout_points", max(cfg["probe_points"] // 2, 1)))
    tr = {m: np.asarray(M[m]["classifier_train_accuracy"], float) for m in ms}
    he = {m: np.asarray(M[m]["classifier_heldout_accuracy"], float) for m in ms}
    fit_res = 1.0 / n_fit
    l2, l5 = min(2, L) - 1, min(5, L) - 1
    mid = slice(min(4, L) - 1, min(12, L))  # layers 4–12 of 20

    def saturated(layer: int) -> bool:  # every method's probe at 1.000: it cannot tell them apart
        return min(float(tr[m][layer]) for m in ms) >= 1.0 - 0.5 / n_fit

    def sat(layer: int) -> dict:
        return {
            "tested": not saturated(layer),
            "untested_note": f"saturated: every method's probe at layer {layer + 1} is 1.000 "
            f"on its {n_fit} fitted points",
        }

    def bp_sg_layer2():
        v = min(tr["backprop"][l2], tr["sg"][l2])
        name = f"backprop and single SG: classifier probe at layer {l2 + 1} = 1.0 (train)"
        return name, C.claim(
            f"{tr['backprop'][l2]:.4f}, {tr['sg'][l2]:.4f}",
            "≥ 0.999 (paper 1.000)",
            v - 0.999,
            fit_res,
            cid="fig8/bp-sg-layer2",
            **sat(l2),
            **_regime(results, ("backprop", "sg")),
        )

    def dfa_layer1():
        name = "DFA: classifier probe at layer 1 = 1.0 (solves the task at layer 1)"
        return name, C.claim(
            float(tr["dfa"][0]),
            "≥ 0.999 (paper 1.000)",
            tr["dfa"][0] - 0.999,
            fit_res,
            cid="fig8/dfa-layer1",
            **sat(0),
            **_regime(results, ("dfa",)),
        )

    def dfa_highest():
        gap = tr["dfa"][0] - max(tr[m][0] for m in METHODS if m != "dfa")
        return "DFA: probe at layer 1 ≥ every other method's (train)", C.claim(
            ", ".join(f"{LABELS[m]} {tr[m][0]:.4f}" for m in METHODS),
            "DFA highest (paper: DFA 1.000, Bprop 0.992, SG* 0.984)",
            gap,
            fit_res,
            cid="fig8/dfa-highest-train",
            **sat(0),
            **_regime(results, METHODS),
        )

    def dfa_highest_heldout():
        best = max((m for m in METHODS if m != "dfa"), key=lambda m: he[m][0])
        name = f"DFA: held-out probe at layer 1 ≥ every other method's ({n_held} points)"
        return name, C.claim(
            ", ".join(f"{LABELS[m]} {he[m][0]:.4f}" for m in METHODS),
            "DFA highest",
            he["dfa"][0] - he[best][0],
            C.accuracy_resolution(he["dfa"][0], he[best][0], n_held),
            cid="fig8/dfa-highest-heldout",
            **_regime(results, METHODS),
        )

    def sg_all_shape():
        top = float(tr["sg_all"][mid].max())
        name = (
            f"SG*: probe < 0.99 in layers {mid.start + 1}–{mid.stop}, ≥ 0.999 at layer {L} (train)"
        )
        return name, C.claim(
            f"max l{mid.start + 1}–{mid.stop} {top:.4f}; l{L} {tr['sg_all'][-1]:.4f}",
            "< 0.99 and ≥ 0.999 (paper ≈ 0.980 and 1.000)",
            min(0.99 - top, tr["sg_all"][-1] - 0.999),
            fit_res,
            cid="fig8/sg-star-shape",
            tested=not all(saturated(j) for j in range(mid.start, mid.stop)),
            untested_note="saturated: every method's probe at 1.000 in layers 4–12",
            **_regime(results, ("sg_all",)),
        )

    def sg_all_rise_heldout():
        top = float(he["sg_all"][mid].max())
        name = (
            f"SG*: held-out probe rises at the top: layer {L} > max of layers "
            f"{mid.start + 1}–{mid.stop} ({n_held} points)"
        )
        return name, C.claim(
            f"{he['sg_all'][-1]:.4f} vs {top:.4f}",
            "layer 20 above the middle (paper: 1.000 vs ≈ 0.981)",
            he["sg_all"][-1] - top,
            C.accuracy_resolution(he["sg_all"][-1], top, n_held),
            cid="fig8/sg-star-rise-heldout",
            **_regime(results, ("sg_all",)),
        )

    def regressor():
        others = max(M[m]["regressor_mse"][l5] for m in ("backprop", "sg", "sg_all"))
        ratio = M["dfa"]["regressor_mse"][l5] / others
        return f"regressor MSE at layer {l5 + 1}: DFA ≥ 1.3 × max(Bprop, SG, SG*)", C.claim(
            f"{M['dfa']['regressor_mse'][l5]:.2f} vs {others:.2f} (ratio {ratio:.2f})",
            "ratio ≥ 1.3",
            ratio - 1.3,
            DETERMINISTIC,
            cid="fig8/dfa-regressor",
            **_regime(results, METHODS),
        )

    return _gather(
        results,
        [
            (("backprop", "sg"), bp_sg_layer2),
            (("dfa",), dfa_layer1),
            (METHODS, dfa_highest),
            (METHODS, dfa_highest_heldout),
            (("sg_all",), sg_all_shape),
            (("sg_all",), sg_all_rise_heldout),
            (METHODS, regressor),
        ],
    )
