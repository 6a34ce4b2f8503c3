"""Sizes of the full and the ``--quick`` ``sgjax bench`` run."""

from __future__ import annotations

import os

#: Sizes of the full and the ``--quick`` run.
FULL = {
    "mlp": [784, 256, 256, 256, 10],
    "batch": 256,
    # A second batch size for these rules (the update's fixed cost is amortised there).
    "large_batch": 1024,
    "large_batch_rules": ("backprop", "sg"),
    # The rules whose gradients alone are timed too (the step's ceiling): None = all.
    "grads_rules": None,
    "peak_n": 1024,
    "rounds": 25,
    "inner": 5,
    "theory_instances": 64,
    "theory_steps": 2000,
    "deep_stages": 50,
    "deep_width": 512,
    "deep_batch": 1024,
    # More fake devices than cores cannot run side by side: 2 to 4, as the cores allow.
    "pipeline_devices": max(2, min(4, os.cpu_count() or 2)),
    "recurrent": {"hidden": 128, "batch": 32, "window": 8, "length": 240},
}
QUICK = {
    "mlp": [64, 32, 32, 10],
    "batch": 32,
    "large_batch": 128,
    "large_batch_rules": ("backprop",),
    "grads_rules": ("backprop", "sg"),
    "peak_n": 128,
    "rounds": 3,
    "inner": 2,
    "theory_instances": 8,
    "theory_steps": 50,
    "deep_stages": 6,
    "deep_width": 32,
    "deep_batch": 16,
    "pipeline_devices": 2,
    "recurrent": {"hidden": 8, "batch": 2, "window": 2, "length": 8},
}
