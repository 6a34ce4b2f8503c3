"""examples/: each ≤ 50 lines, runs, and trains the layers *below* its SG modules.

Each example's ``run(dni)`` is called with 150 steps (the full examples take 1000): DNI
and backprop must both reach 0.85 test accuracy on the digits, and under DNI the first
layer — below every interface, so trained only by synthetic gradients — must have moved
from its initial value (with the interfaces cut, ``mode="no-backprop"``, it does not move
at all; the top layer alone also reaches about 0.85, so accuracy cannot tell).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = 150


@pytest.fixture
def load(monkeypatch):
    monkeypatch.setenv("SGJAX_EXAMPLE_STEPS", str(STEPS))
    return lambda name: runpy.run_path(str(EXAMPLES / name))  # not as __main__


def test_the_examples_are_short():
    for path in sorted(EXAMPLES.glob("*.py")):
        assert len(path.read_text().splitlines()) <= 50, f"{path.name}: more than 50 lines"


def _moved(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def test_linen_cnn_residual(load):
    mod = load("linen_cnn_residual.py")
    acc_sg, ms_sg, v = mod["run"](True)
    acc_bp, ms_bp, _ = mod["run"](False)
    print(f"linen CNN, {STEPS} steps: DNI {acc_sg:.3f}, backprop {acc_bp:.3f}; "
          f"step-time ratio {ms_sg / ms_bp:.2f}")  # fmt: skip
    assert acc_sg >= 0.85 and acc_bp >= 0.85
    first = mod["CNN"](True).init(jax.random.key(0), mod["DS"].x_train[:1])
    assert _moved(v["params"]["Conv_0"]["kernel"], first["params"]["Conv_0"]["kernel"]) > 1e-3


def test_nnx_dni(load):
    mod = load("nnx_dni.py")
    acc_sg, ms_sg, model = mod["run"](True)
    acc_bp, ms_bp, _ = mod["run"](False)
    print(f"NNX MLP, {STEPS} steps: DNI {acc_sg:.3f}, backprop {acc_bp:.3f}; "
          f"step-time ratio {ms_sg / ms_bp:.2f}")  # fmt: skip
    assert acc_sg >= 0.85 and acc_bp >= 0.85
    fresh = mod["MLP"](mod["nnx"].Rngs(0), True)
    assert _moved(model.layers[0].kernel[...], fresh.layers[0].kernel[...]) > 1e-3
