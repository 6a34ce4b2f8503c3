"""The data-parallel baseline: every device holds the whole network and a slice of each
batch; the gradients are averaged with one all-reduce (``lax.psum``) per step.

Not a pipeline, but the other way to use N devices for one network, and the one the
pipelines must be compared with (``scripts/bench_pipeline.py``): it needs no stage
boundary and no staleness, and its messages are the size of the parameters, once per
step, where a pipeline sends activations every tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sgjax import losses as loss_lib
from sgjax.nets import Network
from sgjax.pipeline.gpipe import BPState
from sgjax.pipeline.mesh import AXIS, _check_count, _put, _replicated, _shard_map, _to_host
from sgjax.pipeline.stages import _all_finite, _check_stream


class DPRunner(NamedTuple):
    """Data-parallel training bound to a mesh: ``pack``/``unpack`` convert a
    :class:`~sgjax.pipeline.BPState` to and from the replicated state ``run`` advances."""

    mesh: Mesh
    pack: Callable[[BPState], BPState]
    unpack: Callable[[BPState], BPState]
    run: Callable[..., tuple[BPState, dict[str, jax.Array]]]


def dp_on_mesh(
    net: Network,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    batch_size: int,
) -> DPRunner:
    """Data-parallel backprop: batches of ``batch_size`` split evenly over the mesh.

    ``run(state, xs, ys, valid=None)`` takes one optimiser step per batch ``xs[t]``
    (shape ``(ticks, batch_size, *in_shape)``); device d computes the gradient of its
    ``batch_size / N`` examples and one ``psum`` makes the mean over the whole batch, so
    the steps are those of ordinary backprop on ``batch_size`` examples. A batch with
    ``valid`` False is skipped; a non-finite step is not applied (``metrics["finite"]``).

    Example:
        >>> import jax, optax
        >>> from sgjax import nets
        >>> from sgjax.pipeline import init_bp, make_mesh
        >>> net, opt = nets.mlp([4, 3]), optax.sgd(0.1)
        >>> dp = dp_on_mesh(net, "xent", opt, make_mesh(1), batch_size=2)
        >>> st, m = dp.run(dp.pack(init_bp(net, opt, jax.random.key(0))),
        ...                jax.numpy.ones((3, 2, 4)), jax.numpy.zeros((3, 2), int))
        >>> int(dp.unpack(st).step), m["finite"].tolist()
        (3, [True, True, True])
    """
    if mesh.axis_names != (AXIS,):
        raise ValueError(f"dp_on_mesh: the mesh must be 1-D with axis {AXIS!r} (see make_mesh)")
    n = int(mesh.shape[AXIS])
    loss = loss_lib.get(loss)
    _check_count("dp_on_mesh", "batch_size", batch_size)
    if batch_size % n:
        raise ValueError(
            f"dp_on_mesh: `batch_size` must be a multiple of the {n} devices, got {batch_size}"
        )

    def pack(st: BPState) -> BPState:
        return jax.tree.map(lambda a: _put(a, mesh, P()), jax.device_get(st))

    def unpack(st: BPState) -> BPState:
        return jax.tree.map(lambda a: jnp.asarray(_to_host(a)), st)

    def device(st: BPState, xs: jax.Array, ys: jax.Array, valid: jax.Array):
        def step(st: BPState, batch: tuple[jax.Array, jax.Array, jax.Array]):
            x, y, v = batch

            def mean_loss(params: Any) -> tuple[jax.Array, jax.Array]:
                p = net.apply(params, x)
                return loss.fn(p, y), loss_lib.accuracy(p, y)

            (value, acc), grads = jax.value_and_grad(mean_loss, has_aux=True)(st.params)
            # The all-reduce: the mean over the devices of their slices' mean gradients.
            grads, value, acc = lax.psum((grads, value, acc), AXIS)
            grads, value, acc = jax.tree.map(lambda g: g / n, (grads, value, acc))
            # One optimiser state per stage, as in init_bp (and the pipelines).
            stepped = [
                optimizer.update(g, o, th) for g, o, th in zip(grads, st.opt_state, st.params)
            ]
            params = tuple(optax.apply_updates(th, u) for th, (u, _) in zip(st.params, stepped))
            opt_state = tuple(o for _, o in stepped)
            finite = jnp.isfinite(value) & _all_finite((grads, params))
            new = BPState(params, opt_state, st.step + 1)
            new = jax.tree.map(lambda a, b: jnp.where(v & finite, a, b), new, st)
            return new, {"loss": value, "accuracy": acc, "finite": finite | ~v}

        return lax.scan(step, st, (xs, ys, valid))

    batch_spec = P(None, AXIS)  # (ticks, batch, ...): the batch axis split over devices
    mapped = _shard_map(device, mesh, (P(), batch_spec, batch_spec, P()), (P(), P()))

    @jax.jit
    def _run(st: BPState, xs: jax.Array, ys: jax.Array, valid: jax.Array):
        st, metrics = mapped(st, xs, ys, valid)
        return st, _replicated(metrics, mesh)

    def run(st: BPState, xs: Any, ys: Any, valid: Any = None):
        xs, y_vec, valid = _check_stream(net, batch_size, xs, ys, valid)
        return _run(
            st, _put(xs, mesh, batch_spec), _put(y_vec, mesh, batch_spec), _put(valid, mesh, P())
        )

    return DPRunner(mesh, pack, unpack, run)
