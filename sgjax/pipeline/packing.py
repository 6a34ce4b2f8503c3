"""Packing a per-stage pytree into one padded flat vector per dtype.

``shard_map`` needs one shape per argument, but stages differ: each device keeps its
stage's whole state as one vector per dtype, padded to the longest stage (a
:class:`_Layout` says where each leaf lives), and activations travel padded to the widest
boundary (:func:`_pad_h` / :func:`_crop_h`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sgjax.nets import Network
from sgjax.pipeline.mesh import AXIS, _put, _to_host

#: a flat stage state: dtype name -> vector (a jax.Array on devices, numpy on the host)
Flat = Mapping[str, Any]


class _Layout(NamedTuple):
    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]  # dtype name of each leaf
    offsets: tuple[int, ...]  # offset of each leaf inside its dtype's vector
    totals: dict[str, int]  # dtype name -> length used


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _layout(tree: Any) -> _Layout:
    leaves, treedef = jax.tree.flatten(tree)
    shapes, dtypes, offsets = [], [], []
    totals: dict[str, int] = {}
    for leaf in leaves:
        dt = jnp.dtype(leaf.dtype).name
        shapes.append(tuple(leaf.shape))
        dtypes.append(dt)
        offsets.append(totals.get(dt, 0))
        totals[dt] = totals.get(dt, 0) + _size(leaf.shape)
    return _Layout(treedef, tuple(shapes), tuple(dtypes), tuple(offsets), totals)


def _sizes(layouts: Sequence[_Layout]) -> dict[str, int]:
    """Length of each dtype's vector: the longest stage's (at least 1)."""
    keys = sorted({k for lay in layouts for k in lay.totals})
    return {k: max(1, *(lay.totals.get(k, 0) for lay in layouts)) for k in keys}


def _pack(tree: Any, lay: _Layout, sizes: Mapping[str, int], xp: Any = jnp) -> dict[str, Any]:
    # xp = numpy packs on the host (no per-leaf device dispatch), jnp inside jitted code.
    parts: dict[str, list] = {k: [] for k in sizes}
    for leaf, dt in zip(jax.tree.leaves(tree), lay.dtypes):
        parts[dt].append(xp.ravel(xp.asarray(leaf)).astype(dt))
    out = {}
    for k, n in sizes.items():
        vec = xp.concatenate(parts[k]) if parts[k] else xp.zeros((0,), k)
        out[k] = xp.pad(vec, (0, n - lay.totals.get(k, 0)))
    return out


def _write(flat: Flat, leaves: Sequence[jax.Array], lay: _Layout, start: int) -> dict[str, Any]:
    """Write ``leaves`` (leaf ``start`` onwards of ``lay``) into ``flat`` in place.

    Cheaper than re-packing inside a stage's branch: only the leaves that changed are
    written (XLA updates the buffer in place) instead of a fresh concatenation of the
    whole stage state every tick.
    """
    out = dict(flat)
    for i, leaf in enumerate(leaves, start):
        dt, off = lay.dtypes[i], lay.offsets[i]
        out[dt] = lax.dynamic_update_slice(out[dt], jnp.ravel(leaf).astype(dt), (off,))
    return out


def _unpack(flat: Flat, lay: _Layout) -> Any:
    # Plain slicing: static under jit, and host-side numpy when unpacking results.
    leaves = [
        flat[dt][off : off + _size(shape)].reshape(shape)
        for shape, dt, off in zip(lay.shapes, lay.dtypes, lay.offsets)
    ]
    return jax.tree.unflatten(lay.treedef, leaves)


def _put_stages(
    trees: Sequence[Any], layouts: Sequence[_Layout], sizes: Mapping[str, int], mesh: Mesh
) -> dict[str, jax.Array]:
    """Per-stage trees -> per dtype one ``(N, L)`` array, row s on device s."""
    flats = [_pack(t, lay, sizes, np) for t, lay in zip(jax.device_get(trees), layouts)]
    return {k: _put(np.stack([f[k] for f in flats]), mesh, P(AXIS)) for k in sizes}


def _get_stages(flat: Flat, layouts: Sequence[_Layout]) -> list[Any]:
    """The inverse of :func:`_put_stages`: the per-stage trees, as jax arrays."""
    host = {k: _to_host(v) for k, v in flat.items()}
    return [
        jax.tree.map(jnp.asarray, _unpack({k: v[s] for k, v in host.items()}, lay))
        for s, lay in enumerate(layouts)
    ]


def _pad_h(h: jax.Array, width: int) -> jax.Array:
    h = h.reshape(h.shape[0], -1)
    return jnp.pad(h, ((0, 0), (0, width - h.shape[1])))


def _crop_h(h: jax.Array, shape: Sequence[int]) -> jax.Array:
    return h[:, : _size(shape)].reshape(h.shape[0], *shape)


def _where(c: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(c, a, b), new, old)


def _width(net: Network) -> int:
    """The width of the messages: the widest stage output. Activations go down and input
    gradients up only across stage boundaries; the network's input is read by stage 0
    directly and never sent, so it does not widen every message (on 2 CPU processes a
    784-wide message cost ~2 ms per tick where a 512-wide one cost ~0.2 ms)."""
    return max(_size(s.out_shape) for s in net.stages)


def _in_shape(net: Network, s: int) -> tuple[int, ...]:
    return tuple(net.in_shape if s == 0 else net.stages[s - 1].out_shape)
