"""A decoder-only transformer language model as a sgjax network, with synthetic gradients
between its blocks.

Every piece is a :class:`~sgjax.nets.Stage`, so every rule of :mod:`sgjax.rules`, the SG
interface and the device pipeline run on it unchanged: :func:`char_lm` is the embedding
(one-hot characters → width, plus learned positions), ``blocks`` pre-LayerNorm blocks
(causal multi-head self-attention and a GELU MLP, each residual) and the readout
(LayerNorm, linear to the vocabulary). Activations between stages are per example
``(context, width)``.

Two things a sequence model needs that a classifier does not:

* :data:`sequence_xent` — the loss, cross-entropy per position averaged over the
  positions (mean over the batch as every sgjax loss); the targets are the next
  characters as one-hot rows, flattened per example to ``(context · vocab,)``
  (:func:`targets`), which is the label form the SG modules read;
* :func:`positionwise` — the SG module: ``SG(h)_t = h_t A + C`` at every position t
  (DNI), or ``+ y_t B`` with y_t the next character, the label of position t's loss
  (cDNI; ``use_y=True``). One D×D matrix shared across positions — a linear SG on the
  flattened ``(context · width)`` activation would hold (context · width)² parameters.
  Zero-initialised, like every sgjax SG.

Example:
    >>> import jax, numpy as np
    >>> from sgjax import rules
    >>> net = char_lm(vocab=5, context=6, width=8, blocks=2, heads=2)
    >>> ids = np.arange(14).reshape(2, 7) % 5
    >>> x, y = inputs(ids[:, :-1], 5), targets(ids[:, 1:], 5)
    >>> params = net.init(jax.random.key(0))
    >>> rule = rules.synthetic_gradients(positionwise())
    >>> grads = jax.jit(rule.gradients, static_argnums=(1, 5))  # one compiled call
    >>> out = grads(rule.init(jax.random.key(1), net), net, params, x, y, sequence_xent)
    >>> net.depth, out.p.shape, round(float(out.loss), 2)  # 4 stages; ln 5 ≈ 1.61 at start
    (4, (2, 6, 5), 1.61)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax.estimators import Estimator
from sgjax.losses import Loss
from sgjax.nets import Network, Stage, _normalise, network

Params = Any


def _layer_norm(h: jax.Array, theta: Params) -> jax.Array:
    return _normalise("layer", h, theta)  # per example over the width: nets' LayerNorm


def _dense(key: jax.Array, a: int, b: int, scale: float = 1.0) -> dict[str, jax.Array]:
    return {
        "W": jax.random.normal(key, (a, b), jnp.float32) * (scale / np.sqrt(a)),
        "b": jnp.zeros((b,), jnp.float32),
    }


def _check(fn: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{fn}: `{name}` must be an int ≥ 1, got {v!r}")


def embedding(vocab: int, context: int, width: int) -> Stage:
    """One-hot characters ``(context, vocab)`` → ``(context, width)``: a token embedding
    plus a learned position embedding."""
    _check("embedding", vocab=vocab, context=context, width=width)

    def init(key: jax.Array) -> Params:
        k1, k2 = jax.random.split(key)
        return {
            "E": jax.random.normal(k1, (vocab, width), jnp.float32) * 0.02,
            "P": jax.random.normal(k2, (context, width), jnp.float32) * 0.02,
        }

    def apply(theta: Params, x: jax.Array) -> jax.Array:
        return x @ theta["E"] + theta["P"]

    return Stage(init, apply, (context, vocab), (context, width), name="embedding")


def block(context: int, width: int, heads: int, *, mlp_ratio: int = 4, layers: int = 1) -> Stage:
    """A pre-LayerNorm transformer block: ``h + attn(LN(h))``, then ``h + mlp(LN(h))``, with
    causal multi-head self-attention (position t attends to positions ≤ t). The residual
    projections are scaled by 1/√(2 · ``layers``) at initialisation (GPT-2's rule)."""
    _check("block", context=context, width=width, heads=heads, mlp_ratio=mlp_ratio)
    if width % heads:
        raise ValueError(f"block: `width` {width} must be a multiple of `heads` {heads}")
    d_head, hidden = width // heads, mlp_ratio * width
    mask = np.tril(np.ones((context, context), bool))
    res = 1.0 / np.sqrt(2 * layers)

    def init(key: jax.Array) -> Params:
        k = jax.random.split(key, 4)
        one, zero = jnp.ones((width,), jnp.float32), jnp.zeros((width,), jnp.float32)
        return {
            "ln1": {"scale": one, "shift": zero},
            "qkv": _dense(k[0], width, 3 * width),
            "proj": _dense(k[1], width, width, res),
            "ln2": {"scale": one, "shift": zero},
            "fc": _dense(k[2], width, hidden),
            "out": _dense(k[3], hidden, width, res),
        }

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        B = h.shape[0]
        z = _layer_norm(h, theta["ln1"])
        qkv = z @ theta["qkv"]["W"] + theta["qkv"]["b"]
        q, k, v = (a.reshape(B, context, heads, d_head) for a in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d_head).astype(np.float32)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        h = h + att.reshape(B, context, width) @ theta["proj"]["W"] + theta["proj"]["b"]
        z = _layer_norm(h, theta["ln2"])
        z = jax.nn.gelu(z @ theta["fc"]["W"] + theta["fc"]["b"])
        return h + z @ theta["out"]["W"] + theta["out"]["b"]

    return Stage(init, apply, (context, width), (context, width), name="block")


def readout(context: int, width: int, vocab: int) -> Stage:
    """LayerNorm, then linear to the vocabulary: ``(context, width)`` → logits
    ``(context, vocab)``."""
    _check("readout", context=context, width=width, vocab=vocab)

    def init(key: jax.Array) -> Params:
        one, zero = jnp.ones((width,), jnp.float32), jnp.zeros((width,), jnp.float32)
        # small logits at the start (std 0.02 per weight): the loss starts near ln(vocab)
        return {
            "ln": {"scale": one, "shift": zero},
            "head": _dense(key, width, vocab, 0.02 * np.sqrt(width)),
        }

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        z = _layer_norm(h, theta["ln"])
        return z @ theta["head"]["W"] + theta["head"]["b"]

    return Stage(init, apply, (context, width), (context, vocab), name="readout")


def char_lm(
    vocab: int, context: int = 128, width: int = 128, blocks: int = 4, heads: int = 4
) -> Network:
    """Embedding, ``blocks`` transformer blocks, readout: ``blocks + 2`` stages, so the
    hidden boundaries (where SG modules go) are the embedding's output and each block's.

    Example:
        >>> net = char_lm(65, context=16, width=32, blocks=2, heads=4)
        >>> [s.name for s in net.stages], net.out_shape
        (['embedding', 'block', 'block', 'readout'], (16, 65))
    """
    _check("char_lm", blocks=blocks)
    return network(
        [
            embedding(vocab, context, width),
            *[block(context, width, heads, layers=blocks) for _ in range(blocks)],
            readout(context, width, vocab),
        ]
    )


def inputs(ids: Any, vocab: int) -> np.ndarray:
    """Character ids ``(batch, context)`` → the network's one-hot input (float32)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() >= vocab)):
        raise ValueError(
            f"inputs: `ids` must be (batch, context) ints in 0..{vocab - 1}, got shape "
            f"{ids.shape}" + (f" with values {ids.min()}..{ids.max()}" if ids.size else "")
        )
    return np.eye(vocab, dtype=np.float32)[ids]


def targets(ids: Any, vocab: int) -> np.ndarray:
    """The next characters ``(batch, context)`` → one-hot rows flattened per example,
    ``(batch, context · vocab)``: the label form of :data:`sequence_xent` and of the SG
    modules."""
    x = inputs(ids, vocab)
    return x.reshape(x.shape[0], -1)


def _seq_target(p: jax.Array, y: jax.Array) -> jax.Array:
    if y.ndim != 2 or y.shape[1] != p.shape[1] * p.shape[2]:
        raise ValueError(
            f"sequence_xent: targets `y` must be (batch, context · vocab) = (batch, "
            f"{p.shape[1] * p.shape[2]}) one-hot rows (transformer.targets), got {tuple(y.shape)}"
        )
    return y.astype(p.dtype).reshape(p.shape)


def _seq_xent(p: jax.Array, y: jax.Array) -> jax.Array:
    t = _seq_target(p, y)
    return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(p, axis=-1), axis=-1))


def _seq_xent_grad(p: jax.Array, y: jax.Array) -> jax.Array:
    # ℓ_b = mean over the T positions of the cross-entropy: ∂ℓ_b/∂p_bt = (softmax − t)/T
    t = _seq_target(p, y)
    return (jax.nn.softmax(p, axis=-1) - t) / p.shape[1]


#: cross-entropy per position, averaged over positions and batch (nats per character)
sequence_xent = Loss("sequence_xent", _seq_xent, _seq_xent_grad)


def positionwise(use_y: bool = False) -> Estimator:
    """The per-position linear SG of ``(context, width)`` activations: ``SG(h)_t = h_t A +
    C`` (DNI), plus ``y_t B`` with ``use_y`` (cDNI: y_t the next character, one-hot, from
    the flattened targets of :func:`targets`). Zero-initialised.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sg = positionwise(use_y=True)
        >>> th = sg.init(jax.random.key(0), (6, 8), 6 * 5)
        >>> [th[k].shape for k in ("A", "B", "C")]
        [(8, 8), (5, 8), (8,)]
    """

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        del key  # zero initialisation
        h_shape = tuple(h_shape)
        if len(h_shape) != 2 or (use_y and y_dim % h_shape[0]):
            raise ValueError(
                "positionwise SG: `h_shape` must be (context, width) and the label width a "
                f"multiple of the context (context · vocab), got {h_shape} and {y_dim}"
            )
        d = h_shape[1]
        theta = {"A": jnp.zeros((d, d), dtype), "C": jnp.zeros((d,), dtype)}
        if use_y:
            theta["B"] = jnp.zeros((y_dim // h_shape[0], d), dtype)
        return theta

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        out = h @ theta["A"] + theta["C"]
        if use_y:
            yt = y.astype(out.dtype).reshape(h.shape[0], h.shape[1], -1)
            out = out + yt @ theta["B"]
        return out

    name = "positionwise_conditioned" if use_y else "positionwise"
    return Estimator(init, apply, name, True, use_y)
