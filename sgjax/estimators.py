"""Synthetic-gradient modules SG(h, y) ≈ ∂ℓ/∂h (paper §1.2–1.4, Table 1).

An :class:`Estimator` is a pure ``(init, apply)`` pair:

* ``init(key, h_shape, y_dim) -> params`` for activations of per-example shape
  ``h_shape`` and label/target vectors of width ``y_dim``;
* ``apply(params, h, y) -> delta_hat`` with ``h`` of shape ``(batch, *h_shape)``, ``y`` of
  shape ``(batch, y_dim)`` (one-hot labels, see :func:`sgjax.losses.as_target`); the result
  has ``h``'s shape and estimates the **per-example** gradient ∂ℓ_b/∂h_b.

Every estimator's output layer is initialised to zero, weights **and** bias (Jaderberg et
al.; paper §1.6), so a fresh SG outputs exactly 0 and the network below it does not move
on the first step.

The estimators:

==================  =============================  ===================================
name                SG(h, y)                       use
==================  =============================  ===================================
``linear``          hA + C                         unconditioned DNI
``conditioned``     hA + yB + C                    cDNI, the paper's default SG(h, y)
``sigmoid_linear``  σ(hA)·d + yB + C               log loss (paper §2.4, footnote 3)
``label_only``      yB + C                         ablation of Fig. 9 (e–h)
``mlp``             MLP([h, y]) with zero output   DNI paper's SG model
``conv``            conv(h) + conv(tile(y)) + c    cDNI for NHWC conv activations
``conv_unconditioned``  conv(h) + c                DNI for NHWC conv activations
==================  =============================  ===================================

Example:
    >>> import jax, jax.numpy as jnp
    >>> sg = conditioned()
    >>> theta = sg.init(jax.random.key(0), (4,), 3)
    >>> sg.apply(theta, jnp.ones((2, 4)), jnp.ones((2, 3))).tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]

The regression of a module onto its target, :func:`regress` (and :class:`Regression`),
is :func:`sgjax.sgmodule.regress`, re-exported here; :class:`sgjax.sgmodule.SGModule`
bundles an estimator with its optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sgjax.sgmodule import Regression, regress

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "Regression",
    "conditioned",
    "conv",
    "get",
    "label_only",
    "linear",
    "mlp",
    "regress",
    "sigmoid_linear",
]

Params = Any


class Estimator(NamedTuple):
    """A synthetic-gradient module: ``init(key, h_shape, y_dim)``, ``apply(params, h, y)``."""

    init: Callable[..., Params]
    apply: Callable[[Params, jax.Array, jax.Array], jax.Array]
    name: str
    uses_h: bool = True
    uses_y: bool = True


def _flat(h: jax.Array) -> jax.Array:
    return h.reshape(h.shape[0], -1)


def _dim(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _affine(*, use_h: bool, use_y: bool, name: str) -> Estimator:
    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        del key  # zero initialisation: nothing random
        d = _dim(h_shape)
        theta = {"C": jnp.zeros((d,), dtype)}
        if use_h:
            theta["A"] = jnp.zeros((d, d), dtype)
        if use_y:
            theta["B"] = jnp.zeros((y_dim, d), dtype)
        return theta

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        out = jnp.broadcast_to(theta["C"], (h.shape[0], theta["C"].shape[0]))
        if use_h:
            out = out + _flat(h) @ theta["A"]
        if use_y:
            out = out + y.astype(out.dtype) @ theta["B"]
        return out.reshape(h.shape)

    return Estimator(init, apply, name, use_h, use_y)


def linear() -> Estimator:
    """SG(h) = hA + C, not conditioned on the label (plain DNI).

    Example:
        >>> import jax
        >>> sorted(linear().init(jax.random.key(0), (4,), 3))
        ['A', 'C']
    """
    return _affine(use_h=True, use_y=False, name="linear")


def conditioned() -> Estimator:
    """SG(h, y) = hA + yB + C, the label-conditioned linear SG (cDNI; the default).

    Example:
        >>> import jax
        >>> sorted(conditioned().init(jax.random.key(0), (4,), 3))
        ['A', 'B', 'C']
    """
    return _affine(use_h=True, use_y=True, name="conditioned")


def label_only() -> Estimator:
    """SG(y) = yB + C: a per-label stale gradient model (Fig. 9 e–h ablation).

    Example:
        >>> import jax
        >>> sorted(label_only().init(jax.random.key(0), (4,), 3))
        ['B', 'C']
    """
    return _affine(use_h=False, use_y=True, name="label_only")


def sigmoid_linear(*, use_y: bool = True) -> Estimator:
    """SG(h, y) = σ(hA)·d + yB + C — a pointwise sigmoid on a linear map (paper §2.4).

    Matches log-loss gradients σ(p) − y, which a linear SG cannot represent on separable
    data. ``d`` (the output scale) and ``A``, ``B``, ``C`` start at zero, so the module
    outputs 0 at first; ``d`` receives gradient σ(hA) = ½ immediately and ``A`` follows.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sg = sigmoid_linear()
        >>> theta = sg.init(jax.random.key(0), (2,), 2)
        >>> sg.apply(theta, jnp.ones((1, 2)), jnp.ones((1, 2))).tolist()
        [[0.0, 0.0]]
    """

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        del key
        d = _dim(h_shape)
        theta = {
            "A": jnp.zeros((d, d), dtype),
            "d": jnp.zeros((d,), dtype),
            "C": jnp.zeros((d,), dtype),
        }
        if use_y:
            theta["B"] = jnp.zeros((y_dim, d), dtype)
        return theta

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        out = jax.nn.sigmoid(_flat(h) @ theta["A"]) * theta["d"] + theta["C"]
        if use_y:
            out = out + y.astype(out.dtype) @ theta["B"]
        return out.reshape(h.shape)

    return Estimator(init, apply, "sigmoid_linear", True, use_y)


def mlp(
    hidden: Sequence[int] = (1024, 1024),
    *,
    use_y: bool = True,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
) -> Estimator:
    """An MLP on ``[h, y]`` with a zero-initialised linear output (the DNI paper's SG model).

    Hidden layers use He-normal weights; only the output layer (weights and bias) is zero.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sg = mlp((16,))
        >>> theta = sg.init(jax.random.key(0), (4,), 3)
        >>> float(jnp.abs(sg.apply(theta, jnp.ones((2, 4)), jnp.ones((2, 3)))).max())
        0.0
    """
    hidden = tuple(int(w) for w in hidden)

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        d = _dim(h_shape)
        sizes = [d + (y_dim if use_y else 0), *hidden]
        keys = jax.random.split(key, len(hidden))
        layers = [
            {
                "W": jax.nn.initializers.he_normal()(k, (a, b), dtype),
                "b": jnp.zeros((b,), dtype),
            }
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])
        ]
        out = {"W": jnp.zeros((sizes[-1], d), dtype), "b": jnp.zeros((d,), dtype)}
        return {"hidden": layers, "out": out}

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        z = _flat(h)
        if use_y:
            z = jnp.concatenate([z, y.astype(z.dtype)], axis=-1)
        for layer in theta["hidden"]:
            z = activation(z @ layer["W"] + layer["b"])
        out = z @ theta["out"]["W"] + theta["out"]["b"]
        return out.reshape(h.shape)

    return Estimator(init, apply, "mlp", True, use_y)


def _conv_same(h: jax.Array, k: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv(
    kernel_size: int = 3,
    hidden: Sequence[int] = (),
    *,
    use_y: bool = True,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
) -> Estimator:
    """A convolutional SG for NHWC activations: the output has ``h``'s shape ``(H, W, C)``.

    ``SG(h, y) = conv(z, K) + conv(tile(y), K_y) + c`` with ``z = h`` (or, with ``hidden``
    channel counts, ``z`` = ReLU convolutions of ``[h, tile(y)]``), all ``kernel_size`` ×
    ``kernel_size`` with SAME padding and stride 1. The label-conditioned variant
    (``use_y=True``, the default: cDNI) **broadcasts the one-hot label as extra input
    channels** — ``tile(y)`` is ``y`` repeated at every pixel, so the label term is one
    learned map per class, constant away from the border (computed once per class, then
    mixed by ``y``, instead of convolving ``y_dim`` extra channels per example). The
    output convolution ``K``, ``K_y`` and ``c`` are zero-initialised, so a fresh module
    outputs exactly 0; hidden convolutions are He-normal.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sg = conv()
        >>> theta = sg.init(jax.random.key(0), (6, 6, 4), 10)
        >>> sorted(theta["out"])
        ['K', 'K_y', 'c']
        >>> sg.apply(theta, jnp.ones((2, 6, 6, 4)), jnp.ones((2, 10))).shape
        (2, 6, 6, 4)
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(
            f"conv estimator: `kernel_size` must be a positive odd int, got {kernel_size!r}"
        )
    hidden = tuple(int(c) for c in hidden)

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        h_shape = tuple(h_shape)
        if len(h_shape) != 3:
            raise ValueError(
                "conv estimator: `h_shape` must be a per-example NHWC shape (height, width, "
                f"channels), got {h_shape} — put the conv SG after a convolutional stage"
            )
        c = int(h_shape[-1])
        sizes = [c + (y_dim if use_y and hidden else 0), *hidden]
        keys = jax.random.split(key, max(len(hidden), 1))
        layers = [
            {
                "K": jax.nn.initializers.he_normal()(kk, (k, k, a, b), dtype),
                "b": jnp.zeros((b,), dtype),
            }
            for kk, a, b in zip(keys, sizes[:-1], sizes[1:])
        ]
        out = {"K": jnp.zeros((k, k, sizes[-1], c), dtype), "c": jnp.zeros((c,), dtype)}
        if use_y:
            out["K_y"] = jnp.zeros((k, k, y_dim, c), dtype)
        return {"hidden": layers, "out": out}

    def label_maps(K_y: jax.Array, spatial: tuple[int, int], dtype) -> jax.Array:
        # conv(tile(e_j), K_y) for every class j: (y_dim, H, W, C_out). Linear in y, so
        # conv(tile(y), K_y) = y · maps for one-hot and soft labels alike.
        y_dim = K_y.shape[2]
        eye = jnp.broadcast_to(
            jnp.eye(y_dim, dtype=dtype)[:, None, None, :], (y_dim, *spatial, y_dim)
        )
        return _conv_same(eye, K_y)

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        if h.ndim != 4:
            raise ValueError(
                f"conv estimator: `h` must be a batch of NHWC activations (batch, H, W, C), "
                f"got shape {tuple(h.shape)}"
            )
        z = h
        if use_y and theta["hidden"]:
            tiled = jnp.broadcast_to(
                y.astype(h.dtype)[:, None, None, :], (*h.shape[:3], y.shape[-1])
            )
            z = jnp.concatenate([z, tiled], axis=-1)
        for layer in theta["hidden"]:
            z = activation(_conv_same(z, layer["K"]) + layer["b"])
        out = _conv_same(z, theta["out"]["K"]) + theta["out"]["c"]
        if use_y:
            maps = label_maps(theta["out"]["K_y"], (h.shape[1], h.shape[2]), out.dtype)
            out = out + jnp.einsum("by,yhwc->bhwc", y.astype(out.dtype), maps)
        return out

    return Estimator(init, apply, "conv" if use_y else "conv_unconditioned", True, use_y)


#: The registry of SG modules: name -> factory. Registering one is one entry here (the
#: CLI's ``--estimator`` choices derive from it).
ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "linear": linear,
    "conditioned": conditioned,
    "label_only": label_only,
    "sigmoid_linear": sigmoid_linear,
    "mlp": mlp,
    "conv": conv,
    "conv_unconditioned": lambda: conv(use_y=False),
}


def get(name: str | Estimator) -> Estimator:
    """Look an estimator up by name, or pass an :class:`Estimator` through.

    Example:
        >>> get("conditioned").name
        'conditioned'
    """
    if isinstance(name, Estimator):
        return name
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]()
