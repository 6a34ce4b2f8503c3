"""The decoder-only transformer LM (:mod:`sgjax.transformer`): its loss and gradients
against ``jax.grad``, causality, the position-wise SG against a hand-written formula, and
DNI / cDNI / SG + prop training through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import rules, train
from sgjax import transformer as tf

V, T = 5, 4


def _batch(seed: int = 0, batch: int = 3):
    ids = np.random.default_rng(seed).integers(0, V, (batch, T + 1))
    return tf.inputs(ids[:, :-1], V), tf.targets(ids[:, 1:], V)


def test_backprop_and_the_loss_gradient_equal_jax_grad():
    """Planted: the per-example output gradient without its 1/T → red."""
    net = tf.char_lm(V, context=T, width=8, blocks=1, heads=2)
    params = net.init(jax.random.key(0))
    x, y = _batch()
    out = jax.jit(lambda p: rules.backprop().gradients((), net, p, x, y, tf.sequence_xent))(params)
    want = jax.jit(jax.grad(lambda p: tf.sequence_xent.fn(net.apply(p, x), y)))(params)
    for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    p = jax.jit(net.apply)(params, x)
    per_example = jax.grad(lambda q: x.shape[0] * tf.sequence_xent.fn(q, y))(p)
    np.testing.assert_allclose(tf.sequence_xent.output_grad(p, y), per_example, atol=1e-6)
    with pytest.raises(ValueError, match=r"targets `y` must be \(batch, context · vocab\)"):
        tf.sequence_xent.fn(p, y[:, :-1])


def test_attention_is_causal():
    """Changing the characters after position t leaves the logits at positions ≤ t as
    they were, and changes the later ones (planted: no mask → red)."""
    net = tf.char_lm(V, context=T, width=8, blocks=2, heads=2)
    params = net.init(jax.random.key(1))
    x, _ = _batch(1)
    x2 = x.copy()
    x2[:, 2:] = np.roll(x2[:, 2:], 1, axis=-1)  # other characters at positions 2..3
    apply = jax.jit(net.apply)
    a, b = apply(params, x), apply(params, x2)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    assert float(jnp.abs(a[:, 2:] - b[:, 2:]).max()) > 1e-3


def test_positionwise_sg_is_the_per_position_affine_map():
    """Against the formula written out per position (planted: ignoring y → red)."""
    sg = tf.positionwise(use_y=True)
    rng = np.random.default_rng(2)
    th = {k: rng.standard_normal(v.shape).astype(np.float32)
          for k, v in sg.init(jax.random.key(0), (T, 8), T * V).items()}  # fmt: skip
    h = rng.standard_normal((3, T, 8)).astype(np.float32)
    _, y = _batch(2)
    got = np.asarray(sg.apply(th, h, y))
    yt = y.reshape(3, T, V)
    for b in range(3):
        for t in range(T):
            want = h[b, t] @ th["A"] + yt[b, t] @ th["B"] + th["C"]
            np.testing.assert_allclose(got[b, t], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"`h_shape` must be \(context, width\)"):
        sg.init(jax.random.key(0), (T * 8,), T * V)


def test_cdni_between_the_blocks_trains_the_transformer():
    """A text of period 4 over 5 characters: cDNI (a position-wise SG conditioned on the
    next character) at every boundary takes the loss well below ln 5 in 150 steps, and
    the embedding — trained only by the SG at its output — moves."""
    text = np.tile([0, 1, 2, 3], 200)
    starts = np.arange(0, len(text) - T - 1)
    net = tf.char_lm(V, context=T, width=16, blocks=2, heads=2)
    rule = rules.synthetic_gradients(tf.positionwise(use_y=True), sg_optimizer=optax.adam(1e-3))
    opt = optax.adam(3e-3)
    state = train.init(jax.random.key(0), net, rule, opt)
    before = state.params[0]["E"]
    step = jax.jit(train.make_step(net, rule, tf.sequence_xent, opt))
    rng = np.random.default_rng(0)
    for _ in range(150):
        ids = np.stack([text[s : s + T + 1] for s in rng.choice(starts, 8)])
        state, metrics = step(state, (tf.inputs(ids[:, :-1], V), tf.targets(ids[:, 1:], V)))
    train.check_step(metrics)
    assert float(metrics["loss"]) < 0.5 * np.log(V), float(metrics["loss"])
    assert float(metrics["accuracy"]) == 1.0  # (per position)
    assert float(jnp.abs(state.params[0]["E"] - before).max()) > 1e-3
