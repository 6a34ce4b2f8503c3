"""Networks as sequences of stages, each a pure ``(init, apply)`` pair.

A network is a sequence of stages f_1..f_N (paper §1.1): ``h_0 = x``,
``h_i = f_i(θ_i, h_{i-1})``, ``p = h_N``. Every update rule in :mod:`sgjax.rules`
trains a stage with the chain rule *inside* the stage and replaces the gradient arriving
at its output, ∂L/∂h_i, by an error signal δ̂_i — so the unit of the library is the stage,
not the layer.

Contract of a :class:`Stage`:

* ``init(key) -> params`` — a pytree of arrays (float32 by default);
* ``apply(params, h) -> h_out`` — pure, batched over the leading axis of ``h``;
* ``in_shape`` / ``out_shape`` — per-example shapes (no batch axis);
* ``feedback_apply(params, B, h) -> h_out`` (optional) — same value as ``apply`` but whose
  derivative with respect to ``h`` sends the error back through the fixed matrix ``B``
  instead of the forward weights. Feedback alignment needs it; stages without it cannot be
  trained with FA (a clear error says so).

Normalisation. The paper's MNIST networks use batch norm (Supp. C). Batch norm with
running averages carries mutable state that every rule, the pipeline and vmap would have
to thread, and it couples the examples of a batch, which breaks the per-example reading of
SG(h, y). We therefore offer ``norm="layer"`` (LayerNorm, per example, stateless) as the
recommended choice and ``norm="batch"`` (normalisation by the *current batch's*
statistics, as batch norm does in training mode, no running averages: evaluation on a
large batch uses that batch's statistics) for experiments that want to stay close to the
paper.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from sgjax import nets
    >>> net = nets.mlp([64, 32, 10], activation="relu")
    >>> params = net.init(jax.random.key(0))
    >>> net.apply(params, jnp.ones((5, 64))).shape
    (5, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = Any
Shape = tuple[int, ...]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "identity": lambda a: a,
}
NORMS = (None, "layer", "batch")


class Stage(NamedTuple):
    """One stage f_i of a network: a pure ``(init, apply)`` pair with its shapes."""

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    in_shape: Shape
    out_shape: Shape
    feedback_apply: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None
    name: str = "stage"


class Network(NamedTuple):
    """A sequence of stages; ``p = f_N(...f_1(x))``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = mlp([3, 5, 2])
        >>> [h.shape for h in net.hidden(net.init(jax.random.key(0)), jnp.ones((4, 3)))]
        [(4, 3), (4, 5), (4, 2)]
    """

    stages: tuple[Stage, ...]

    @property
    def in_shape(self) -> Shape:
        return self.stages[0].in_shape

    @property
    def out_shape(self) -> Shape:
        return self.stages[-1].out_shape

    @property
    def out_dim(self) -> int:
        return int(_size(self.out_shape))

    @property
    def depth(self) -> int:
        return len(self.stages)

    def init(self, key: jax.Array) -> tuple[Params, ...]:
        """Initialise every stage from one key (split per stage)."""
        keys = jax.random.split(key, len(self.stages))
        return tuple(s.init(k) for s, k in zip(self.stages, keys))

    def apply(self, params: Sequence[Params], x: jax.Array) -> jax.Array:
        """The plain forward pass p = f_N(...f_1(x))."""
        return self.hidden(params, x)[-1]

    def hidden(self, params: Sequence[Params], x: jax.Array) -> list[jax.Array]:
        """All activations ``[h_0 = x, h_1, ..., h_N = p]``."""
        check_input(self, x)
        hs = [x]
        for stage, theta in zip(self.stages, params):
            hs.append(stage.apply(theta, hs[-1]))
        return hs


def network(stages: Sequence[Stage]) -> Network:
    """Build a :class:`Network`, checking that consecutive shapes agree.

    Example:
        >>> net = network([dense(4, 8, "tanh"), dense(8, 2, "identity")])
        >>> net.depth, net.out_dim
        (2, 2)
    """
    stages = tuple(stages)
    if not stages:
        raise ValueError("network: `stages` is empty; a network needs at least one stage")
    for i, (a, b) in enumerate(zip(stages[:-1], stages[1:])):
        if tuple(a.out_shape) != tuple(b.in_shape):
            raise ValueError(
                f"network: stage {i + 1} outputs shape {a.out_shape} but stage {i + 2} "
                f"expects input shape {b.in_shape}"
            )
    return Network(stages)


def _cuts(fn: str, boundaries: Sequence[int], depth: int) -> list[int]:
    """``[0, *boundaries, depth]`` after checking ``boundaries`` (ints in 1..depth − 1)."""
    raw = tuple(boundaries)
    for b in raw:
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= depth - 1:
            raise ValueError(
                f"{fn}: `boundaries` must be ints in 1..{depth - 1} (boundary i is the output "
                f"of stage i of this {depth}-stage network, between two stages), got {b!r}"
            )
    if list(raw) != sorted(set(raw)):
        raise ValueError(f"{fn}: `boundaries` must be increasing and distinct, got {raw!r}")
    return [0, *raw, depth]


def group(net: Network, boundaries: Sequence[int]) -> Network:
    """The same function with its stages merged between ``boundaries``: one stage per run of
    consecutive stages, cut at each boundary (boundary i is the output of stage i).

    A group of one stage is that stage; a group of several is a stage whose parameters are
    the tuple of its members' (:func:`group_params` maps a network's parameters onto the
    grouped one, :func:`ungroup_params` back). Used to put an SG module at some boundaries
    only on a device pipeline: each group runs on one device, trained by exact backprop
    inside it (as ``rules.synthetic_gradients(at=...)`` trains the stages between modules).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = mlp([4, 8, 8, 8, 3])
        >>> g = group(net, [2])
        >>> g.depth, [s.out_shape for s in g.stages]
        (2, [(8,), (3,)])
        >>> p = net.init(jax.random.key(0)); x = jnp.ones((2, 4))
        >>> bool((g.apply(group_params(p, [2]), x) == net.apply(p, x)).all())
        True
    """
    cuts = _cuts("group", boundaries, net.depth)
    return Network(tuple(_composite(net.stages[a:b]) for a, b in zip(cuts[:-1], cuts[1:])))


def _composite(stages: Sequence[Stage]) -> Stage:
    if len(stages) == 1:
        return stages[0]
    stages = tuple(stages)

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, len(stages))
        return tuple(s.init(k) for s, k in zip(stages, keys))

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        for s, th in zip(stages, theta):
            h = s.apply(th, h)
        return h

    return Stage(
        init, apply, stages[0].in_shape, stages[-1].out_shape,
        name="+".join(s.name for s in stages),
    )  # fmt: skip


def group_params(params: Sequence[Params], boundaries: Sequence[int]) -> tuple[Params, ...]:
    """A network's per-stage parameters in the layout of :func:`group` ``(net, boundaries)``."""
    cuts = _cuts("group_params", boundaries, len(params))
    return tuple(
        params[a] if b - a == 1 else tuple(params[a:b]) for a, b in zip(cuts[:-1], cuts[1:])
    )


def ungroup_params(
    grouped: Sequence[Params], boundaries: Sequence[int], depth: int
) -> tuple[Params, ...]:
    """The inverse of :func:`group_params`: one entry per stage of the ``depth``-stage network.

    Example:
        >>> ungroup_params(group_params(("a", "b", "c"), [1]), [1], 3)
        ('a', 'b', 'c')
    """
    cuts = _cuts("ungroup_params", boundaries, depth)
    if len(grouped) != len(cuts) - 1:
        raise ValueError(
            f"ungroup_params: {len(grouped)} groups, but boundaries {tuple(boundaries)} of a "
            f"{depth}-stage network make {len(cuts) - 1}"
        )
    out: list[Params] = []
    for g, a, b in zip(grouped, cuts[:-1], cuts[1:]):
        out.extend([g] if b - a == 1 else list(g))
    return tuple(out)


def check_input(net: Network, x: Any) -> None:
    """Raise a clear ``ValueError`` if ``x`` is not a batch of the network's inputs.

    Example:
        >>> import jax.numpy as jnp
        >>> check_input(mlp([3, 2]), jnp.zeros((5, 4)))
        Traceback (most recent call last):
        ...
        ValueError: input `x`: expected shape (batch, 3), got (5, 4)
    """
    shape = tuple(getattr(x, "shape", ()))
    want = tuple(net.in_shape)
    if len(shape) != len(want) + 1 or shape[1:] != want:
        raise ValueError(
            f"input `x`: expected shape (batch, {', '.join(map(str, want))}), got {shape}"
        )


def _size(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _normalise(kind: str | None, a: jax.Array, theta: Params, eps: float = 1e-5) -> jax.Array:
    if kind is None:
        return a
    axis = -1 if kind == "layer" else 0  # per example over units / per unit over the batch
    mean = jnp.mean(a, axis=axis, keepdims=True)
    var = jnp.var(a, axis=axis, keepdims=True)
    return (a - mean) * jax.lax.rsqrt(var + eps) * theta["scale"] + theta["shift"]


def dense(
    in_dim: int,
    out_dim: int,
    activation: str = "relu",
    *,
    norm: str | None = None,
    w_init: Callable[..., jax.Array] | None = None,
    dtype: Any = jnp.float32,
) -> Stage:
    """A dense block ``activation(norm(h W + b))``.

    Args:
        in_dim, out_dim: input and output widths.
        activation: one of ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"identity"``.
        norm: ``None``, ``"layer"`` or ``"batch"`` (batch statistics; see module docs).
        w_init: initialiser ``(key, shape, dtype) -> W``; default LeCun-normal for
            identity/tanh/sigmoid and He-normal for ReLU.
        dtype: parameter dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> s = dense(3, 2, "tanh")
        >>> s.apply(s.init(jax.random.key(0)), jnp.ones((4, 3))).shape
        (4, 2)
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"dense: unknown `activation` {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if norm not in NORMS:
        raise ValueError(f"dense: unknown `norm` {norm!r}; expected one of {NORMS}")
    for arg, v in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"dense: `{arg}` must be a positive int, got {v!r}")
    act = ACTIVATIONS[activation]
    if w_init is None:
        w_init = (
            jax.nn.initializers.he_normal()
            if activation == "relu"
            else jax.nn.initializers.lecun_normal()
        )

    def init(key: jax.Array) -> Params:
        theta = {"W": w_init(key, (in_dim, out_dim), dtype), "b": jnp.zeros((out_dim,), dtype)}
        if norm is not None:
            theta["scale"] = jnp.ones((out_dim,), dtype)
            theta["shift"] = jnp.zeros((out_dim,), dtype)
        return theta

    def post(theta: Params, a: jax.Array) -> jax.Array:
        return act(_normalise(norm, a, theta))

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        return post(theta, h @ theta["W"] + theta["b"])

    def feedback_apply(theta: Params, B: jax.Array, h: jax.Array) -> jax.Array:
        # Value: h W + b, exactly as `apply`. Derivative: w.r.t. W it is hᵀ(·) as usual,
        # w.r.t. h it is (·) B — the fixed feedback matrix B (shape (out, in), the shape of
        # Wᵀ) replaces Wᵀ. The h-path through W is cut; the B-path adds zero in value.
        hB = h @ B.T
        a = jax.lax.stop_gradient(h) @ theta["W"] + (hB - jax.lax.stop_gradient(hB))
        return post(theta, a + theta["b"])

    return Stage(init, apply, (in_dim,), (out_dim,), feedback_apply, f"dense[{activation}]")


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    *,
    norm: str | None = None,
    output_activation: str = "identity",
    dtype: Any = jnp.float32,
) -> Network:
    """A multilayer perceptron: one dense stage per consecutive pair of ``sizes``.

    ``sizes = [in, h_1, ..., h_{N-1}, out]`` gives N stages; the hidden stages use
    ``activation`` (and ``norm``), the output stage is linear by default (logits) and is
    never normalised.

    Example:
        >>> net = mlp([784, 256, 256, 10])
        >>> net.depth, net.in_shape, net.out_shape
        (3, (784,), (10,))
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp: `sizes` needs at least an input and an output width, got {sizes!r}")
    stages = [
        dense(a, b, activation, norm=norm, dtype=dtype) for a, b in zip(sizes[:-2], sizes[1:-1])
    ]
    stages.append(dense(sizes[-2], sizes[-1], output_activation, dtype=dtype))
    return network(stages)


# --------------------------------------------------------------------------------------
# Convolutional stages (NHWC activations: per-example shape (height, width, channels)).

POOLS = (None, "max", "avg")


def _check_hwc(fn: str, arg: str, shape: Any) -> Shape:
    shape = tuple(shape) if isinstance(shape, tuple | list) else shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise ValueError(
            f"{fn}: `{arg}` must be a per-example NHWC shape (height, width, channels) of "
            f"positive ints, got {shape!r}"
        )
    return shape


def _pair(fn: str, arg: str, v: Any) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in t):
        raise ValueError(f"{fn}: `{arg}` must be a positive int or a pair of them, got {v!r}")
    return t


def _conv_out(size: int, k: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else (size - k) // stride + 1


def conv2d(
    in_shape: Sequence[int],
    features: int,
    kernel_size: int | Sequence[int] = 3,
    activation: str = "relu",
    *,
    stride: int | Sequence[int] = 1,
    padding: str = "SAME",
    pool: str | None = None,
    pool_size: int | Sequence[int] = 2,
    norm: str | None = None,
    dtype: Any = jnp.float32,
) -> Stage:
    """A convolutional block ``pool(activation(norm(conv(h, K) + b)))`` on NHWC activations.

    Args:
        in_shape: per-example input shape ``(height, width, channels)``.
        features: output channels.
        kernel_size, stride: ints or ``(height, width)`` pairs.
        padding: ``"SAME"`` or ``"VALID"``.
        activation: as for :func:`dense`.
        pool: ``None``, ``"max"`` or ``"avg"`` — non-overlapping ``pool_size`` windows
            (``"VALID"``: a trailing row/column that does not fill a window is dropped).
        norm: ``None``, ``"layer"`` (per example over height, width and channels) or
            ``"batch"`` (per channel over batch, height and width; batch statistics only,
            see the module docstring).
        dtype: parameter dtype. Kernel: He-normal for ReLU, LeCun-normal otherwise.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> s = conv2d((8, 8, 1), 4, 3, "relu", pool="max")
        >>> s.out_shape
        (4, 4, 4)
        >>> s.apply(s.init(jax.random.key(0)), jnp.ones((2, 8, 8, 1))).shape
        (2, 4, 4, 4)
    """
    fn = "conv2d"
    h_in, w_in, c_in = _check_hwc(fn, "in_shape", in_shape)
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(f"{fn}: `features` must be a positive int, got {features!r}")
    kh, kw = _pair(fn, "kernel_size", kernel_size)
    sh, sw = _pair(fn, "stride", stride)
    ph, pw = _pair(fn, "pool_size", pool_size)
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"{fn}: `padding` must be 'SAME' or 'VALID', got {padding!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{fn}: unknown `activation` {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if pool not in POOLS:
        raise ValueError(f"{fn}: unknown `pool` {pool!r}; expected one of {POOLS}")
    if norm not in NORMS:
        raise ValueError(f"{fn}: unknown `norm` {norm!r}; expected one of {NORMS}")
    oh, ow = _conv_out(h_in, kh, sh, padding), _conv_out(w_in, kw, sw, padding)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{fn}: a {kh}x{kw} kernel with 'VALID' padding does not fit the input "
            f"{h_in}x{w_in} (`in_shape` {tuple(in_shape)})"
        )
    if pool is not None:
        if ph > oh or pw > ow:
            raise ValueError(
                f"{fn}: `pool_size` {(ph, pw)} is larger than the convolution's output {oh}x{ow}"
            )
        oh, ow = oh // ph, ow // pw
    out_shape = (oh, ow, features)
    act = ACTIVATIONS[activation]
    w_init = (
        jax.nn.initializers.he_normal()
        if activation == "relu"
        else jax.nn.initializers.lecun_normal()
    )

    def init(key: jax.Array) -> Params:
        theta = {
            "W": w_init(key, (kh, kw, c_in, features), dtype),
            "b": jnp.zeros((features,), dtype),
        }
        if norm is not None:
            theta["scale"] = jnp.ones((features,), dtype)
            theta["shift"] = jnp.zeros((features,), dtype)
        return theta

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        a = jax.lax.conv_general_dilated(
            h, theta["W"], (sh, sw), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        a = a + theta["b"]
        if norm is not None:
            axes = (1, 2, 3) if norm == "layer" else (0, 1, 2)
            mean = jnp.mean(a, axis=axes, keepdims=True)
            var = jnp.var(a, axis=axes, keepdims=True)
            a = (a - mean) * jax.lax.rsqrt(var + 1e-5) * theta["scale"] + theta["shift"]
        a = act(a)
        if pool == "max":
            a = jax.lax.reduce_window(
                a, -jnp.inf, jax.lax.max, (1, ph, pw, 1), (1, ph, pw, 1), "VALID"
            )
        elif pool == "avg":
            a = jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, ph, pw, 1), (1, ph, pw, 1), "VALID")
            a = a / (ph * pw)
        return a

    name = f"conv[{kh}x{kw}x{features},{activation}" + (f",{pool}pool]" if pool else "]")
    return Stage(init, apply, (h_in, w_in, c_in), out_shape, None, name)


def flatten_dense(
    in_shape: Sequence[int],
    out_dim: int,
    activation: str = "identity",
    *,
    norm: str | None = None,
    dtype: Any = jnp.float32,
) -> Stage:
    """Flatten a per-example activation of any shape, then a :func:`dense` block.

    The head of a CNN: ``(batch, h, w, c) -> (batch, out_dim)``. Has ``feedback_apply``
    (the feedback matrix has the shape ``(out_dim, h·w·c)``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> s = flatten_dense((2, 2, 3), 5)
        >>> s.apply(s.init(jax.random.key(0)), jnp.ones((4, 2, 2, 3))).shape
        (4, 5)
    """
    in_shape = tuple(in_shape)
    if not in_shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in in_shape
    ):
        raise ValueError(
            f"flatten_dense: `in_shape` must be a non-empty tuple of positive ints, "
            f"got {in_shape!r}"
        )
    inner = dense(_size(in_shape), out_dim, activation, norm=norm, dtype=dtype)

    def apply(theta: Params, h: jax.Array) -> jax.Array:
        return inner.apply(theta, h.reshape(h.shape[0], -1))

    def feedback_apply(theta: Params, B: jax.Array, h: jax.Array) -> jax.Array:
        assert inner.feedback_apply is not None
        return inner.feedback_apply(theta, B, h.reshape(h.shape[0], -1))

    return Stage(inner.init, apply, in_shape, (out_dim,), feedback_apply, f"flatten+{inner.name}")


def cnn(
    in_shape: Sequence[int],
    channels: Sequence[int],
    out_dim: int,
    *,
    kernel_size: int = 3,
    activation: str = "relu",
    pool: str | None = "max",
    norm: str | None = None,
    hidden: Sequence[int] = (),
    dtype: Any = jnp.float32,
) -> Network:
    """A small CNN: one :func:`conv2d` stage per entry of ``channels`` (SAME padding,
    ``activation``, ``pool`` 2×2 after each), then ``hidden`` dense stages and a linear
    :func:`flatten_dense` (or dense) output of ``out_dim`` logits.

    Every stage is a boundary where a synthetic gradient can sit; the conv boundaries carry
    NHWC activations.

    Example:
        >>> net = cnn((28, 28, 1), (16, 32), 10)
        >>> [s.out_shape for s in net.stages]
        [(14, 14, 16), (7, 7, 32), (10,)]
    """
    channels = list(channels)
    if not channels:
        raise ValueError("cnn: `channels` is empty; give at least one convolution")
    stages: list[Stage] = []
    shape = _check_hwc("cnn", "in_shape", in_shape)
    for c in channels:
        stages.append(conv2d(shape, c, kernel_size, activation, pool=pool, norm=norm, dtype=dtype))
        shape = stages[-1].out_shape
    widths = [*hidden, out_dim]
    stages.append(
        flatten_dense(
            shape,
            widths[0],
            activation if hidden else "identity",
            norm=norm if hidden else None,
            dtype=dtype,
        )
    )
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        stages.append(
            dense(
                a,
                b,
                "identity" if last else activation,
                norm=None if last else norm,
                dtype=dtype,
            )
        )
    return network(stages)
