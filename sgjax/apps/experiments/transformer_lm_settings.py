"""The decoupled transformer LM's methods and settings per scale, shared by the harness
(:mod:`sgjax.apps.experiments.transformer_lm`) and its report."""

from __future__ import annotations

import math
from typing import Any

METHODS = ("backprop", "dni", "cdni", "sg-prop")
LABELS = {"backprop": "backprop", "dni": "DNI", "cdni": "cDNI", "sg-prop": "cDNI + prop"}
SEEDS = (0, 1, 2)
LN2 = math.log(2.0)

#: settings per scale. ``medium``: sized so a backprop run takes about 4 minutes of one
#: core (measured: ≈ 0.23 s per backprop step at batch 16 × 64 characters, ≈ 0.10–0.15 s
#: per SG step).
SCALES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        context=8,
        width=16,
        blocks=2,
        heads=2,
        batch=8,
        steps=20,
        lr=3e-3,
        clip=1.0,
        prop=0.1,
        eval_every=10,
        eval_windows=8,
        held_windows=4,
        cosine_steps=(10, 20),
        sg_at="all",
    ),
    "medium": dict(
        context=64,
        width=128,
        blocks=4,
        heads=4,
        batch=16,
        steps=1000,
        lr=1e-3,
        clip=1.0,
        prop=0.1,
        eval_every=100,
        eval_windows=256,
        held_windows=32,
        cosine_steps=(100, 250, 500, 1000),
        sg_at="all",
    ),
}


#: ``gpu``: the one-GPU comparison (issue 29, item 5; ``scripts/gpu_check.sh``), sized
#: for one 10-minute device call — estimated, not yet measured on a GPU: ~25M parameters,
#: 8k tokens per step ≈ 1.2 TFLOP per backprop step, tens of ms on an H100 in float32
#: (TF32 matrix products, JAX's default there), so backprop's 2,000 steps take about a
#: minute and each SG run trains to backprop's wall time. Its verdicts are outside the
#: registered (medium) regime: the tables are measurements, not judgements.
SCALES["gpu"] = dict(
    SCALES["medium"],
    context=256,
    width=512,
    blocks=8,
    heads=8,
    batch=32,
    steps=2000,
    eval_every=200,
    eval_windows=512,
    held_windows=64,
    cosine_steps=(200, 1000, 2000),
)


SCALES["paper"] = SCALES["medium"]  # no paper scale: neither paper has a transformer


def json_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as it reads back from JSON (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
