"""The backprop pipeline baseline: the GPipe schedule on a mesh (:func:`gpipe_on_mesh`)."""

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
from sgjax.pipeline.mesh import (
    AXIS,
    _check_count,
    _check_mesh,
    _global,
    _put,
    _replicated,
    _send,
    _shard_map,
    _to_host,
)
from sgjax.pipeline.packing import (
    Flat,
    _crop_h,
    _get_stages,
    _in_shape,
    _layout,
    _pack,
    _pad_h,
    _put_stages,
    _sizes,
    _unpack,
    _width,
    _write,
)
from sgjax.pipeline.stages import _all_finite, _stage_vjp


class BPState(NamedTuple):
    """State of backprop training: per-stage parameters and optimiser states."""

    params: tuple
    opt_state: tuple
    step: jax.Array


def init_bp(net: Network, optimizer: optax.GradientTransformation, key: jax.Array) -> BPState:
    """Initialise a network and one optimiser state per stage for :func:`gpipe_on_mesh`.

    Example:
        >>> import jax, optax
        >>> from sgjax import nets
        >>> len(init_bp(nets.mlp([4, 8, 2]), optax.sgd(0.1), jax.random.key(0)).params)
        2
    """
    return jax.jit(_init_bp, static_argnums=(0, 1))(net, optimizer, key)


def _init_bp(net: Network, optimizer: optax.GradientTransformation, key: jax.Array) -> BPState:
    params = net.init(key)
    return BPState(params, tuple(optimizer.init(th) for th in params), jnp.zeros((), jnp.int32))


class PackedBP(NamedTuple):
    """Backprop state on the mesh: row s of every array lives on device s."""

    flat: dict[str, jax.Array]  # dtype -> (N, L): (θ_s, opt_s) of device s
    step: jax.Array


class GPipeRunner(NamedTuple):
    """:class:`MeshRunner` of the backprop pipeline, plus ``gradients(packed, xs, ys) ->
    (per-stage gradients, loss)``: what ``run`` would apply, without applying it."""

    mesh: Mesh
    pack: Callable[[BPState], PackedBP]
    unpack: Callable[[PackedBP], BPState]
    run: Callable[..., tuple[PackedBP, dict[str, jax.Array]]]
    gradients: Callable[..., tuple[tuple, jax.Array]]


def gpipe_on_mesh(
    net: Network,
    loss: loss_lib.Loss | str,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    batch_size: int,
    micro_batches: int,
) -> GPipeRunner:
    """The backprop pipeline baseline: GPipe with M micro-batches, stage s on device s.

    One ``run(packed, xs, ys)`` is one optimiser step on the M·B examples ``xs`` of shape
    ``(M, B, *in_shape)``: M + N − 1 forward ticks (device s stores its inputs), then
    M + N − 1 backward ticks in which device s recomputes its forward from the stored
    input and takes the VJP of the gradient device s+1 sent (the last device starts from
    ∂ℓ/∂p), accumulating its parameter gradient; then every device updates its stage.
    The gradient is exactly that of the mean loss over all M·B examples (ordinary
    backprop); the idle fraction of each phase is the bubble (N−1)/(M+N−1). Activations
    are recomputed in the backward phase rather than stored (GPipe's re-materialisation):
    one extra forward per stage and micro-batch. As in :func:`sgjax.train.make_step`, a
    step whose loss, gradients or new parameters are not finite on any stage is applied
    on none (``metrics["finite"]`` is False, the step counter does not advance).

    Example (the mismatch of stages and devices is a clear error):
        >>> import optax
        >>> from sgjax import nets
        >>> from sgjax.pipeline import make_mesh
        >>> gpipe_on_mesh(nets.mlp([4, 8, 2]), "xent", optax.sgd(0.1), make_mesh(1),
        ...               batch_size=2, micro_batches=2)
        Traceback (most recent call last):
        ...
        ValueError: pipeline: the network has 2 stages but the mesh has 1 devices; ...
    """
    n = _check_mesh(net, mesh)
    loss = loss_lib.get(loss)
    _check_count("gpipe_on_mesh", "batch_size", batch_size)
    _check_count("gpipe_on_mesh", "micro_batches", micro_batches)
    width, c, M, B = _width(net), net.out_dim, micro_batches, batch_size
    dummy = jax.eval_shape(lambda: init_bp(net, optimizer, jax.random.key(0)))
    layouts = [_layout((dummy.params[s], dummy.opt_state[s])) for s in range(n)]
    sizes = _sizes(layouts)
    g_layouts = [_layout(dummy.params[s]) for s in range(n)]
    g_sizes = _sizes(g_layouts)

    def pack(st: BPState) -> PackedBP:
        trees = [(st.params[s], st.opt_state[s]) for s in range(n)]
        return PackedBP(_put_stages(trees, layouts, sizes, mesh), _put(st.step, mesh, P()))

    def unpack(pk: PackedBP) -> BPState:
        trees = _get_stages(pk.flat, layouts)
        return BPState(
            tuple(t[0] for t in trees),
            tuple(t[1] for t in trees),
            jnp.asarray(_to_host(pk.step)),
        )

    def fwd_branch(s: int) -> Callable:
        def branch(flat: Flat, h: jax.Array, x: jax.Array) -> jax.Array:
            if s == n - 1:  # the last stage's forward is redone in its backward tick
                return jnp.zeros_like(h)
            theta, _ = _unpack(flat, layouts[s])
            h = x if s == 0 else _crop_h(h, _in_shape(net, s))  # x is never sent
            return _pad_h(net.stages[s].apply(theta, h), width)

        return branch

    def bwd_branch(s: int) -> Callable:
        def branch(flat: Flat, h: jax.Array, x: jax.Array, g_out: jax.Array, y: jax.Array):
            theta, _ = _unpack(flat, layouts[s])
            shape = net.stages[s].out_shape
            _, g_theta, g_in, value, acc = _stage_vjp(
                net,
                loss,
                s,
                theta,
                x if s == 0 else _crop_h(h, _in_shape(net, s)),
                y,
                lambda _: _crop_h(g_out, shape),
            )
            # stage 0's input gradient is not computed (nothing consumes it)
            g_in = jnp.zeros((B, width), g_out.dtype) if s == 0 else _pad_h(g_in, width)
            return _pack(g_theta, g_layouts[s], g_sizes), g_in, value, acc

        return branch

    def update_branch(s: int) -> Callable:
        def branch(flat: Flat, g_flat: Flat) -> dict[str, Any]:
            theta, opt = _unpack(flat, layouts[s])
            updates, opt = optimizer.update(_unpack(g_flat, g_layouts[s]), opt, theta)
            new = jax.tree.leaves((optax.apply_updates(theta, updates), opt))
            return _write(flat, new, layouts[s], 0)

        return branch

    fwd_branches = [fwd_branch(s) for s in range(n)]
    bwd_branches = [bwd_branch(s) for s in range(n)]
    update_branches = [update_branch(s) for s in range(n)]
    down = [(s, s + 1) for s in range(n - 1)]
    up = [(s + 1, s) for s in range(n - 1)]
    ticks = M + n - 1

    def device(flat, xs, y_vec):
        flat = {k: v[0] for k, v in flat.items()}  # drop the device axis
        s = lax.axis_index(AXIS)

        def fwd_tick(carry, t):
            buf, inbox = carry
            m = t - s  # the micro-batch device s sees at tick t
            valid = (m >= 0) & (m < M)
            mc = jnp.clip(m, 0, M - 1)
            # stage 0 reads its micro-batch from xs: never sent, never buffered
            h_in = inbox
            buf = lax.dynamic_update_index_in_dim(buf, jnp.where(valid, h_in, buf[mc]), mc, 0)
            h_out = lax.switch(s, fwd_branches, flat, h_in, xs[mc])
            return (buf, _send(h_out, down)), None

        zeros_h = jnp.zeros((B, width), xs.dtype)
        (buf, _), _ = lax.scan(
            fwd_tick, (jnp.zeros((M, B, width), xs.dtype), zeros_h), jnp.arange(ticks)
        )

        def bwd_tick(carry, u):
            acc, inbox, value, correct = carry
            m = u - (n - 1 - s)
            valid = (m >= 0) & (m < M)
            mc = jnp.clip(m, 0, M - 1)
            g_flat, g_in, v, a = lax.switch(
                s, bwd_branches, flat, buf[mc], xs[mc], inbox, y_vec[mc]
            )
            acc = jax.tree.map(lambda t, g: t + jnp.where(valid, g, 0), acc, g_flat)
            value = value + jnp.where(valid, v, 0.0)
            correct = correct + jnp.where(valid, a, 0.0)
            return (acc, _send(g_in, up), value, correct), None

        acc0 = {k: jnp.zeros((L,), k) for k, L in g_sizes.items()}
        zero = jnp.zeros((), xs.dtype)
        (acc, _, value, correct), _ = lax.scan(
            bwd_tick, (acc0, zeros_h, zero, zero), jnp.arange(ticks)
        )
        # Per-example signals: the VJPs summed the loss over the M·B examples.
        g_flat = jax.tree.map(lambda g: g / (M * B), acc)
        new_flat = lax.switch(s, update_branches, flat, g_flat)
        # The non-finite guard of the single-device step: the optimiser step is applied on
        # every stage or on none (one scalar all-reduce per step).
        ok = jnp.isfinite(value) & _all_finite((g_flat, new_flat))
        all_ok = lax.psum((~ok).astype(jnp.int32), AXIS) == 0
        flat = jax.tree.map(lambda a, b: jnp.where(all_ok, a, b), new_flat, flat)
        add = lambda a: a[None]  # noqa: E731 — the device axis of the outputs
        return jax.tree.map(add, (flat, g_flat, value / M, correct / M, ok))

    spec = P(AXIS)
    mapped = _shard_map(device, mesh, (spec, P(), P()), (spec, spec, spec, spec, spec))

    def check(xs: Any, ys: Any) -> tuple[jax.Array, jax.Array]:
        xs, ys = jnp.asarray(xs), jnp.asarray(ys)
        if tuple(xs.shape) != (M, B, *net.in_shape):
            raise ValueError(
                f"gpipe: `xs` must have shape (micro_batches, batch_size, *in_shape) = "
                f"{(M, B, *net.in_shape)}, got {tuple(xs.shape)}"
            )
        if tuple(ys.shape[:2]) != (M, B):
            raise ValueError(f"gpipe: `ys` must have shape ({M}, {B}[, width]), got {ys.shape}")
        return xs, jax.vmap(lambda y: loss_lib.as_target(y, c, xs.dtype))(ys)

    @jax.jit
    def _run(pk: PackedBP, xs, y_vec):
        # The gradients come out of the same compiled step (a buffer the size of the
        # parameters), so that `gradients` costs no second compilation.
        flat, g_flat, value, correct, ok = mapped(pk.flat, xs, y_vec)
        metrics = {
            "loss": value[n - 1],
            "accuracy": correct[n - 1],
            "stage_finite": ok,
            "finite": jnp.all(ok),  # False: the step was not applied
        }
        step = pk.step + metrics["finite"].astype(pk.step.dtype)
        return PackedBP(flat, step), _replicated(metrics, mesh), g_flat

    def run(pk: PackedBP, xs: Any, ys: Any) -> tuple[PackedBP, dict[str, jax.Array]]:
        new, metrics, _ = _run(pk, *_global(mesh, *check(xs, ys)))
        return new, metrics

    def gradients(pk: PackedBP, xs: Any, ys: Any) -> tuple[tuple, jax.Array]:
        _, metrics, g_flat = _run(pk, *_global(mesh, *check(xs, ys)))
        return tuple(_get_stages(g_flat, g_layouts)), metrics["loss"]

    return GPipeRunner(mesh, pack, unpack, run, gradients)
