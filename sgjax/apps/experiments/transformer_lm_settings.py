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


SCALES["paper"] = SCALES["medium"]  # no paper scale: neither paper has a transformer


def json_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as it reads back from JSON (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
