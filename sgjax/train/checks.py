"""Checks of a run's inputs, before any work: the network's parameters, a batch, a
training set and batch size, a run's arguments. Each raises a ``ValueError`` naming the
argument, what was expected and what was given."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax.nets import Network, check_input


def _count_bad_labels(y: jax.Array, num_classes: int) -> jax.Array:
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        return jnp.zeros((), jnp.int32)
    return jnp.sum((y < 0) | (y >= num_classes), dtype=jnp.int32)


def check_batch(net: Network, x: Any, y: Any) -> None:
    """Raise ``ValueError`` if ``(x, y)`` is not a non-empty batch of matching size.

    Checks shapes only, so it works on traced arrays inside ``jax.jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> from sgjax import nets
        >>> check_batch(nets.mlp([3, 2]), jnp.zeros((5, 3)), jnp.zeros(4, int))
        Traceback (most recent call last):
        ...
        ValueError: batch: `x` holds 5 examples but `y` holds 4; they must match
    """
    check_input(net, x)
    nx = int(np.shape(x)[0])
    ny_shape = np.shape(y)
    if not ny_shape:
        raise ValueError(f"batch: `y` must have a batch axis of size {nx}, got a scalar")
    if int(ny_shape[0]) != nx:
        raise ValueError(
            f"batch: `x` holds {nx} examples but `y` holds {int(ny_shape[0])}; they must match"
        )
    if nx == 0:
        raise ValueError("batch: `x` and `y` are empty (0 examples); a batch needs ≥ 1")


def check_labels(y: Any, num_classes: int, *, name: str = "y") -> None:
    """Raise ``ValueError`` if integer labels fall outside ``[0, num_classes)``.

    Example:
        >>> check_labels(np.array([0, 3]), 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: labels `y`: expected integers in [0, 3) ... got values such as 3 (range 0..3)
    """
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        return
    if y.ndim != 1:
        raise ValueError(f"labels `{name}`: expected shape (batch,), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(
            f"labels `{name}`: expected integers in [0, {num_classes}) (the network has "
            f"{num_classes} outputs), got values such as {int(bad[0])} "
            f"(range {int(y.min())}..{int(y.max())})"
        )


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_params(net: Network, params: Any, *, name: str = "params") -> None:
    """Raise ``ValueError`` unless ``params`` has the structure and shapes ``net.init`` gives.

    Parameters of another network (other depth or widths) would otherwise be used where
    they happen to fit (``zip`` drops extra stages, a dense layer takes any width), and
    parameters of a vmapped ``init`` (one leading axis for the seeds) fail with a bare
    shape error; both are named here.

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> net = nets.mlp([4, 8, 3])
        >>> check_params(net, nets.mlp([4, 8, 8, 3]).init(jax.random.key(0)))
        Traceback (most recent call last):
        ...
        ValueError: `params`: expected one entry per stage of the network (2), got 3
        >>> seeds = jax.vmap(net.init)(jax.random.split(jax.random.key(0), 5))
        >>> check_params(net, seeds)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `params` look vmapped: every array has an extra leading axis of size 5 ...
    """
    if not isinstance(params, tuple | list):
        raise ValueError(
            f"`{name}`: expected a sequence with one entry per stage ({net.depth}), got "
            f"{type(params).__name__}"
        )
    if len(params) != net.depth:
        raise ValueError(
            f"`{name}`: expected one entry per stage of the network ({net.depth}), got "
            f"{len(params)}"
        )
    want = jax.eval_shape(net.init, jax.random.key(0))
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(tuple(params))
    if want_def != got_def:  # type: ignore[operator]
        raise ValueError(
            f"`{name}`: the parameter tree does not match the network's: expected "
            f"{[jax.tree_util.keystr(p) for p, _ in want_leaves]}, got "
            f"{[jax.tree_util.keystr(p) for p, _ in got_leaves]}"
        )
    diffs = [
        (jax.tree_util.keystr(p), tuple(np.shape(g)), tuple(w.shape))
        for (p, g), (_, w) in zip(got_leaves, want_leaves)
        if tuple(np.shape(g)) != tuple(w.shape)
    ]
    if not diffs:
        return
    leading = {g[0] for _, g, w in diffs if len(g) == len(w) + 1 and g[1:] == w}
    if len(leading) == 1 and len(diffs) == len(want_leaves):
        k = leading.pop()
        raise ValueError(
            f"`{name}` look vmapped: every array has an extra leading axis of size {k} "
            f"(e.g. {diffs[0][0]}: {diffs[0][1]}, the network needs {diffs[0][2]}). Pass one "
            f"seed's parameters, `jax.tree.map(lambda a: a[i], {name})`, or vmap the call "
            "over the seeds"
        )
    shown = "; ".join(f"{p}: {g}, the network needs {w}" for p, g, w in diffs[:3])
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    raise ValueError(f"`{name}` do not fit the network (made for another network?): {shown}{more}")


def check_data(net: Network, x: Any, y: Any, batch_size: Any) -> None:
    """Validate a training set and batch size before training (:func:`fit`, the runner).

    Checks the input width, the label range, that ``x`` and ``y`` hold as many examples,
    and that ``batch_size`` is an int in ``1..len(x)``.

    Example:
        >>> import numpy as np
        >>> from sgjax import nets
        >>> check_data(nets.mlp([2, 3]), np.zeros((10, 2)), np.zeros(10, int), 32.0)
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be an int in 1..10 (the dataset size), got 32.0 (float)
    """
    check_input(net, x)
    n = len(x)
    if len(y) != n:
        raise ValueError(
            f"`x` holds {n} examples but `y` holds {len(y)}; they must match one to one"
        )
    check_labels(y, net.out_dim)
    check_batch_size(batch_size, n)


def check_batch_size(batch_size: Any, n: int) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is an int in ``1..n`` (the dataset size)."""
    if not _is_int(batch_size) or not 1 <= batch_size <= n:
        raise ValueError(
            f"`batch_size` must be an int in 1..{n} (the dataset size), got {batch_size!r}"
            + ("" if _is_int(batch_size) else f" ({type(batch_size).__name__})")
        )


def check_run(
    net: Network, x: Any, y: Any, *, steps: int, batch_size: int, log_every: int = 0
) -> None:
    """Validate a run's arguments once, before any work (shared by fit and the runner).

    Example:
        >>> from sgjax import nets
        >>> check_run(nets.mlp([2, 3]), np.zeros((4, 2)), np.zeros(4, int), steps=1,
        ...           batch_size=5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `batch_size` must be an int in 1..4 (the dataset size), got 5
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int ≥ 0, got {steps!r}")
    if not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"`log_every` must be an int ≥ 0, got {log_every!r}")
    check_data(net, x, y, batch_size)  # input width, labels, len(x) == len(y), batch_size
