"""The 1-D device mesh of the pipelines and the collectives on it.

Stage s runs on device s of a mesh with the single axis ``"stage"``; :func:`make_mesh`
builds it and :func:`_check_mesh` checks it against a network. :func:`_put` places host
data as a global array (the same call works when the mesh spans several processes),
:func:`_send` is the neighbour exchange and :func:`_shard_map` the one ``shard_map``
configuration both pipelines use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgjax.nets import Network

AXIS = "stage"


def make_mesh(n_devices: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"stage"`` over the first ``n_devices`` devices.

    Raises:
        ValueError: if fewer than ``n_devices`` devices exist (with the flag that makes
            fake CPU devices).

    Example:
        >>> dict(make_mesh(1).shape)
        {'stage': 1}
    """
    _check_count("make_mesh", "n_devices", n_devices)
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < n_devices:
        raise ValueError(
            f"make_mesh: asked for {n_devices} devices but JAX sees {len(devices)}; on CPU "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={n_devices} before JAX "
            "starts"
        )
    return jax.make_mesh(
        (n_devices,),
        (AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices[:n_devices],
    )


def _check_count(fn: str, arg: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{fn}: `{arg}` must be an int ≥ 1, got {value!r}")


def _check_mesh(net: Network, mesh: Mesh) -> int:
    if tuple(mesh.axis_names) != (AXIS,):
        raise ValueError(
            f"pipeline: the mesh must be 1-D with axis name {AXIS!r} (see make_mesh), got "
            f"axes {tuple(mesh.axis_names)}"
        )
    n = int(mesh.shape[AXIS])
    if n != net.depth:
        raise ValueError(
            f"pipeline: the network has {net.depth} stages but the mesh has {n} devices; the "
            "pipeline puts one stage on each device, so they must be equal (regroup the "
            "layers into stages, or build the mesh with make_mesh(net.depth))"
        )
    return n


def _put(x: Any, mesh: Mesh, spec: P) -> jax.Array:
    # make_array_from_callback builds a global array from host data, so the same call works
    # when the mesh spans several processes (each passes the same host data).
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])


def _global(mesh: Mesh, *arrays: Any) -> tuple[Any, ...]:
    """Inputs of a jitted mesh computation, replicated: unchanged in one process; as global
    arrays (each process passes the same host data) when the mesh spans several."""
    if jax.process_count() == 1:
        return arrays
    return tuple(_put(a, mesh, P()) for a in arrays)


def _agree(flag: bool) -> bool:
    """Process 0's ``flag``, in every process (a tiny broadcast; no-op in one process).

    Decisions that depend on a clock or a measurement (stop after ``seconds``, stop at a
    target accuracy) may differ between processes; a process that stops while another
    calls the next collective would hang both. Every process takes process 0's.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _to_host(x: Any) -> np.ndarray:
    """A (global) array as one numpy array on this host, also when its shards live in
    several processes (then every process must call this, as with any collective)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _replicated(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (inside jit) constrained to be replicated on every device of ``mesh``:
    what the host reads back, from any process of a mesh that spans several."""
    return lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


def _send(x: Any, pairs: list[tuple[int, int]]) -> Any:
    """``lax.ppermute`` along the stage axis; with one device there is no one to send to."""
    return lax.ppermute(x, AXIS, pairs) if pairs else x


def _shard_map(fn: Callable, mesh: Mesh, in_specs: tuple, out_specs: tuple) -> Callable:
    # check_vma=False: the scans start from replicated zeros and some switch branches
    # return constants, while every tick yields device-varying values; with the check on,
    # each such value would need a lax.pcast(..., to="varying") to type-check.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
