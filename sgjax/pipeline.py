"""Update-unlocked training across devices: the DNI pipeline on a JAX mesh.

The promise of decoupled neural interfaces (Jaderberg et al. 2017; Czarnecki et al. 2017,
§1) is that with a synthetic gradient SG_s(h_s, y) at its output, stage s can update
θ_s as soon as its own forward pass is done, without waiting for a backward pass. This
module puts stage s of a :class:`~sgjax.nets.Network` (and its SG module) on device s
of a 1-D mesh with axis ``"stage"`` and runs

* :func:`sg_on_mesh` — the **SG pipeline**: every tick each device works on a different
  micro-batch; after the fill no device waits for another's backward pass;
* :func:`gpipe_on_mesh` — the baseline **backprop pipeline** (GPipe schedule: M
  micro-batches forward, then backward, then one update); its gradients are exactly those
  of ordinary backprop on the M·B examples;
* :func:`sg_reference` — the SG pipeline's schedule on one device (a plain loop over
  ticks and stages), so that the N-device run can be checked against it.

Schedule and staleness of the SG pipeline (N stages, 0-based s = 0..N−1). Micro-batch m
enters stage 0 at tick m, so at tick t device s works on micro-batch m = t − s. One tick
on device s:

1. take h_{s−1}^{(m)} and the label y^{(m)} that device s−1 sent at tick t−1 (device 0
   takes x^{(m)} from the data);
2. forward: h_s^{(m)}, vjp = ``jax.vjp(f_s, θ_s, h_{s−1}^{(m)})``;
3. signal: δ̂ = SG_s(h_s^{(m)}, y^{(m)}) for s < N−1; the last stage uses the true
   per-example loss gradient ∂ℓ/∂p;
4. update θ_s at once from ``vjp(δ̂)`` (optax); the input part of the same VJP,
   t_{s−1}^{(m)} = (∂f_s/∂h_{s−1})ᵀ δ̂, is the bootstrapped target of SG_{s−1};
5. send (h_s^{(m)}, y^{(m)}) to device s+1 and t_{s−1}^{(m)} to device s−1
   (``lax.ppermute``);
6. receive t_s^{(m−1)} from device s+1 (computed this same tick from micro-batch m−1)
   and regress SG_s onto it at (h_s^{(m−1)}, y^{(m−1)}), kept from the previous tick (the
   one-tick buffer): φ_s ← opt(φ_s, ∇_φ mean_b ‖SG_s(h_b, y_b) − t_b‖²).

Exact staleness, compared with sequential DNI (:func:`sgjax.rules.synthetic_gradients`
with bootstrapped targets, one micro-batch per step):

* the forward pass is *not* stale: micro-batch m meets every θ_s after exactly the
  updates from micro-batches 0..m−1, as in sequential training;
* θ_s's update from micro-batch m is applied before micro-batches m+1.. reach stage s,
  as in sequential training;
* the SG modules lag one update: the δ̂ of micro-batch m (and hence the target it
  makes) comes from φ_s regressed on micro-batches 0..m−2 (sequential DNI: 0..m−1),
  because the target for m−1 is only produced by device s+1 during the tick in which
  device s already processes m. With frozen SG modules the pipeline therefore equals
  sequential DNI exactly (tested).

The stream does not drain between calls: the in-flight messages are part of the state,
so a long run fills the pipeline once. :func:`flush` feeds N−1 empty ticks to finish the
micro-batches still in flight.

Unequal stages. Stage params, optimiser states and SG modules have different shapes on
different devices, but ``shard_map`` needs one shape per argument. Each device therefore
keeps its stage's whole state (θ_s, optimiser state, φ_s, SG optimiser state) as one flat
vector per dtype, padded to the longest stage, and activations travel padded to the widest
boundary; ``lax.switch(lax.axis_index("stage"), ...)`` runs the selected stage's own code
(its branch unpacks, computes and re-packs), so a device executes only its own stage and
stages may differ in cost and shape. The padding is the price: memory and messages sized
by the largest stage.

Devices. The code is ``jax.shard_map`` over a :class:`jax.sharding.Mesh` with
``lax.ppermute``; it runs unchanged on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts), on GPUs, or on
several hosts after ``jax.distributed.initialize()`` (every process passes the same
data). The mesh must have exactly one device per stage.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from sgjax import nets, pipeline
    >>> net = nets.mlp([8, 16, 4])
    >>> pipe = pipeline.sg_pipeline(net, "xent", optax.sgd(0.1))
    >>> state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=2)
    >>> xs, ys = jnp.ones((3, 2, 8)), jnp.zeros((3, 2), jnp.int32)
    >>> state, metrics = pipeline.sg_reference(pipe, state, xs, ys)
    >>> metrics["done"].tolist()  # the last stage finishes micro-batches 0 and 1
    [False, True, True]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax import rules, train
from sgjax.nets import Network

AXIS = "stage"
Params = Any
#: a flat stage state: dtype name -> vector (a jax.Array on devices, numpy on the host)
Flat = Mapping[str, Any]


# --------------------------------------------------------------------------------------
# Mesh


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


# --------------------------------------------------------------------------------------
# Packing a per-stage pytree into one padded flat vector per dtype.


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


def _put(x: Any, mesh: Mesh, spec: P) -> jax.Array:
    # make_array_from_callback builds a global array from host data, so the same call works
    # when the mesh spans several processes (each passes the same host data).
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])


def _put_stages(
    trees: Sequence[Any], layouts: Sequence[_Layout], sizes: Mapping[str, int], mesh: Mesh
) -> dict[str, jax.Array]:
    """Per-stage trees -> per dtype one ``(N, L)`` array, row s on device s."""
    flats = [_pack(t, lay, sizes, np) for t, lay in zip(jax.device_get(trees), layouts)]
    return {k: _put(np.stack([f[k] for f in flats]), mesh, P(AXIS)) for k in sizes}


def _get_stages(flat: Flat, layouts: Sequence[_Layout]) -> list[Any]:
    """The inverse of :func:`_put_stages`: the per-stage trees, as jax arrays."""
    host = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
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
    return max(_size(net.in_shape), *(_size(s.out_shape) for s in net.stages))


def _in_shape(net: Network, s: int) -> tuple[int, ...]:
    return tuple(net.in_shape if s == 0 else net.stages[s - 1].out_shape)


def _stage_vjp(
    net: Network,
    loss: loss_lib.Loss,
    s: int,
    theta: Params,
    h: jax.Array,
    y: jax.Array,
    signal: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, Params, jax.Array, jax.Array, jax.Array]:
    """Stage s's forward and the VJP of its error signal, shared by both pipelines.

    The signal is the true per-example ∂ℓ/∂p on the last stage and ``signal(h_out)``
    elsewhere. Returns ``h_out``, the parameter gradient *of the summed loss* (signals
    are per example), the input gradient, and the loss and accuracy (zero but on the
    last stage).
    """
    h_out, vjp = jax.vjp(net.stages[s].apply, theta, h)
    if s == net.depth - 1:
        delta = loss.output_grad(h_out, y)
        value, acc = loss.fn(h_out, y), loss_lib.accuracy(h_out, y)
    else:
        delta = signal(h_out)
        value = acc = jnp.zeros((), h_out.dtype)
    g_theta, g_in = vjp(lax.stop_gradient(delta).astype(h_out.dtype))
    return h_out, g_theta, lax.stop_gradient(g_in), value, acc


def _send(x: Any, pairs: list[tuple[int, int]]) -> Any:
    """``lax.ppermute`` along the stage axis; with one device there is no one to send to."""
    return lax.ppermute(x, AXIS, pairs) if pairs else x


def _shard_map(fn: Callable, mesh: Mesh, in_specs: tuple, out_specs: tuple) -> Callable:
    # check_vma=False: the scans start from replicated zeros and some switch branches
    # return constants, while every tick yields device-varying values; with the check on,
    # each such value would need a lax.pcast(..., to="varying") to type-check.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


# --------------------------------------------------------------------------------------
# The SG pipeline: configuration, state, and the per-stage work shared by both schedules.


class SGPipeline(NamedTuple):
    """What the SG pipeline trains and how: built by :func:`sg_pipeline`."""

    net: Network
    loss: loss_lib.Loss
    optimizer: optax.GradientTransformation
    sg_optimizer: optax.GradientTransformation
    estimator: est_lib.Estimator


def sg_pipeline(
    net: Network,
    loss: loss_lib.Loss | str = "xent",
    optimizer: optax.GradientTransformation | None = None,
    sg_optimizer: optax.GradientTransformation | None = None,
    *,
    estimator: str | est_lib.Estimator = "conditioned",
) -> SGPipeline:
    """Configure an SG pipeline: one SG module at the output of every stage but the last.

    Args:
        net: the network; stage s runs on device s.
        loss: a :class:`~sgjax.losses.Loss` or its name.
        optimizer: optax transformation of every stage (default ``optax.adam(1e-3)``).
        sg_optimizer: optax transformation of the SG modules (default: ``optimizer``).
        estimator: the SG module (default: label-conditioned linear, zero-initialised).

    Example:
        >>> from sgjax import nets
        >>> sg_pipeline(nets.mlp([4, 8, 2])).estimator.name
        'conditioned'
    """
    if not isinstance(net, Network):
        raise TypeError(f"sg_pipeline: `net` must be a sgjax.nets.Network, got {type(net)}")
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    sg_optimizer = optimizer if sg_optimizer is None else sg_optimizer
    return SGPipeline(net, loss_lib.get(loss), optimizer, sg_optimizer, est_lib.get(estimator))


class Message(NamedTuple):
    """What stage s hands to stage s+1: its output, the labels (one-hot), a valid flag."""

    h: jax.Array
    y: jax.Array
    valid: jax.Array


class SGState(NamedTuple):
    """State of the SG pipeline, per stage (the single-device, unpadded form).

    Attributes:
        params: θ_s per stage.
        opt_state: optimiser state per stage.
        sg_params: φ_s of the SG module at the output of stage s, s = 0..N−2.
        sg_opt_state: their optimiser states.
        outbox: per stage s = 0..N−2, the :class:`Message` stage s produced at the last
            tick: the input of stage s+1 at the next tick *and* the one-tick buffer that
            SG_s regresses on when stage s+1 returns its target.
        tick: ticks run so far.
    """

    params: tuple
    opt_state: tuple
    sg_params: tuple
    sg_opt_state: tuple
    outbox: tuple[Message, ...]
    tick: jax.Array


def init_sg(pipe: SGPipeline, key: jax.Array, *, batch_size: int) -> SGState:
    """Initialise stages, SG modules, optimisers and an empty pipeline.

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> s = init_sg(sg_pipeline(nets.mlp([4, 8, 2])), jax.random.key(0), batch_size=3)
        >>> len(s.params), len(s.sg_params), s.outbox[0].h.shape
        (2, 1, (3, 8))
    """
    _check_count("init_sg", "batch_size", batch_size)
    # One compiled call instead of dozens of eager ops.
    return jax.jit(_init_sg, static_argnums=(0, 2))(pipe, key, batch_size)


def _init_sg(pipe: SGPipeline, key: jax.Array, batch_size: int) -> SGState:
    net = pipe.net
    k_net, k_sg = jax.random.split(key)
    params = net.init(k_net)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    hidden = range(net.depth - 1)  # the stages with an SG module at their output
    keys = jax.random.split(k_sg, max(net.depth - 1, 1))
    sg_params = tuple(
        pipe.estimator.init(keys[s], net.stages[s].out_shape, net.out_dim, dtype) for s in hidden
    )
    outbox = tuple(
        Message(
            jnp.zeros((batch_size, *net.stages[s].out_shape), dtype),
            jnp.zeros((batch_size, net.out_dim), dtype),
            jnp.zeros((), bool),
        )
        for s in hidden
    )
    return SGState(
        params=params,
        opt_state=tuple(pipe.optimizer.init(th) for th in params),
        sg_params=sg_params,
        sg_opt_state=tuple(pipe.sg_optimizer.init(ph) for ph in sg_params),
        outbox=outbox,
        tick=jnp.zeros((), jnp.int32),
    )


def _stage_update(
    pipe: SGPipeline, s: int, theta: Params, opt: Any, phi: Params, msg: Message
) -> tuple[Params, Any, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Steps 2–4 of a tick on stage s: forward, signal, immediate update of θ_s."""
    h_out, g_theta, g_in, loss, acc = _stage_vjp(
        pipe.net, pipe.loss, s, theta, msg.h, msg.y, lambda h: pipe.estimator.apply(phi, h, msg.y)
    )
    g_theta = jax.tree.map(lambda g: g / msg.h.shape[0], g_theta)  # batch-mean loss
    updates, new_opt = pipe.optimizer.update(g_theta, opt, theta)
    theta, opt = _where(msg.valid, (optax.apply_updates(theta, updates), new_opt), (theta, opt))
    return theta, opt, h_out, g_in, loss, acc


def _sg_update(
    pipe: SGPipeline, phi: Params, sg_opt: Any, prev: Message, target: jax.Array
) -> tuple[Params, Any, jax.Array]:
    """Step 6: regress SG_s at last tick's (h, y) onto the target stage s+1 returned."""
    t = lax.stop_gradient(target)

    def sg_loss(ph: Params) -> jax.Array:
        r = pipe.estimator.apply(ph, prev.h, prev.y) - t
        return jnp.mean(jnp.sum(jnp.square(r).reshape(r.shape[0], -1), axis=-1))

    value, g = jax.value_and_grad(sg_loss)(phi)
    updates, new_opt = pipe.sg_optimizer.update(g, sg_opt, phi)
    phi, sg_opt = _where(prev.valid, (optax.apply_updates(phi, updates), new_opt), (phi, sg_opt))
    return phi, sg_opt, jnp.where(prev.valid, value, 0.0)


def _check_stream(
    net: Network, batch: int | None, xs: Any, ys: Any, valid: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validate a stream of micro-batches; returns ``xs``, one-hot ``ys`` and ``valid``."""
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    want = (batch, *net.in_shape) if batch is not None else None
    if xs.ndim != len(net.in_shape) + 2 or (want is not None and tuple(xs.shape[1:]) != want):
        raise ValueError(
            f"pipeline: `xs` must be a stack of micro-batches of shape (ticks, "
            f"{batch or 'batch'}, {', '.join(map(str, net.in_shape))}), got {tuple(xs.shape)}"
        )
    if ys.shape[:2] != xs.shape[:2]:
        raise ValueError(
            f"pipeline: `ys` must have shape (ticks, batch[, width]) = {tuple(xs.shape[:2])}"
            f"..., got {tuple(ys.shape)}"
        )
    valid = jnp.ones(xs.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
    if valid.shape != xs.shape[:1]:
        raise ValueError(
            f"pipeline: `valid` must have shape ({xs.shape[0]},), got {tuple(valid.shape)}"
        )
    y_vec = jax.vmap(lambda y: loss_lib.as_target(y, net.out_dim, xs.dtype))(ys)
    return xs, y_vec, valid


def sg_reference(
    pipe: SGPipeline,
    state: SGState,
    xs: jax.Array,
    ys: jax.Array,
    valid: jax.Array | None = None,
) -> tuple[SGState, dict[str, jax.Array]]:
    """Run ``len(xs)`` ticks of the SG pipeline on one device (the reference schedule).

    ``xs[t]``, ``ys[t]`` is the micro-batch that enters stage 0 at tick t; ``valid[t] =
    False`` feeds an empty slot (see :func:`flush`). Stages run one after another inside
    a tick, each on the messages of the previous tick, which is exactly what the devices
    of :func:`sg_on_mesh` do in parallel.

    Returns:
        The new state and per-tick metrics: ``loss`` and ``accuracy`` of the micro-batch
        the last stage finished (``done`` says whether it finished one) and ``sg_loss``
        of shape ``(ticks, N−1)``.
    """
    batch = state.outbox[0].h.shape[0] if state.outbox else None
    xs, y_vec, valid = _check_stream(pipe.net, batch, xs, ys, valid)
    n = pipe.net.depth

    def tick(st: SGState, inp: tuple[jax.Array, jax.Array, jax.Array]):
        inbox = [Message(*inp), *st.outbox]
        params, opt = list(st.params), list(st.opt_state)
        outs, targets = [], []  # targets[s]: stage s's input gradient, the target of SG_{s-1}
        for s in range(n):
            phi = st.sg_params[s] if s < n - 1 else ()
            params[s], opt[s], h_out, g_in, loss, acc = _stage_update(
                pipe, s, params[s], opt[s], phi, inbox[s]
            )
            outs.append(Message(h_out, inbox[s].y, inbox[s].valid))
            targets.append(g_in)
        sg_params, sg_opt, sg_losses = list(st.sg_params), list(st.sg_opt_state), []
        for s in range(n - 1):
            sg_params[s], sg_opt[s], sgl = _sg_update(
                pipe, sg_params[s], sg_opt[s], st.outbox[s], targets[s + 1]
            )
            sg_losses.append(sgl)
        new = SGState(
            tuple(params), tuple(opt), tuple(sg_params), tuple(sg_opt), tuple(outs[:-1]),
            st.tick + 1,
        )  # fmt: skip
        done = inbox[-1].valid
        metrics = {
            "loss": jnp.where(done, loss, 0.0),  # of the last stage
            "accuracy": jnp.where(done, acc, 0.0),
            "done": done,
            "sg_loss": jnp.stack(sg_losses) if sg_losses else jnp.zeros((0,), xs.dtype),
        }
        return new, metrics

    return lax.scan(tick, state, (xs, y_vec, valid))


def flush(
    run: Callable[..., tuple[Any, dict[str, jax.Array]]],
    state: Any,
    n_stages: int,
    example_x: jax.Array,
    example_y: jax.Array,
) -> tuple[Any, dict[str, jax.Array]]:
    """Feed ``n_stages − 1`` empty ticks so every micro-batch in flight finishes.

    ``run`` is :func:`sg_reference` bound to its pipeline, or a mesh runner's ``run``;
    ``example_x``/``example_y`` is any micro-batch of the right shape (its values are
    ignored).

    Example:
        >>> import functools, jax, jax.numpy as jnp, optax
        >>> from sgjax import nets
        >>> pipe = sg_pipeline(nets.mlp([3, 4, 2]), optimizer=optax.sgd(0.1))
        >>> s = init_sg(pipe, jax.random.key(0), batch_size=2)
        >>> s, _ = sg_reference(pipe, s, jnp.ones((1, 2, 3)), jnp.zeros((1, 2), int))
        >>> s, m = flush(functools.partial(sg_reference, pipe), s, 2, jnp.ones((2, 3)),
        ...              jnp.zeros(2, int))
        >>> m["done"].tolist()
        [True]
    """
    k = max(n_stages - 1, 0)
    xs = jnp.broadcast_to(example_x, (k, *example_x.shape))
    ys = jnp.broadcast_to(example_y, (k, *example_y.shape))
    return run(state, xs, ys, jnp.zeros((k,), bool))


# --------------------------------------------------------------------------------------
# The SG pipeline on a mesh.


class PackedSG(NamedTuple):
    """The SG pipeline's state on the mesh: row s of every array lives on device s."""

    flat: dict[str, jax.Array]  # dtype -> (N, L): (θ_s, opt_s, φ_s, sg_opt_s) of device s
    inbox: Message  # (N, B, width) etc.: what device s consumes next tick
    prev: Message  # (N, B, width) etc.: device s's own output of the last tick
    tick: jax.Array


class MeshRunner(NamedTuple):
    """The SG pipeline bound to a mesh: ``pack``/``unpack`` convert between the per-stage
    state and the device-stacked, padded one that ``run`` (jitted) advances."""

    mesh: Mesh
    pack: Callable[[SGState], PackedSG]
    unpack: Callable[[PackedSG], SGState]
    run: Callable[..., tuple[PackedSG, dict[str, jax.Array]]]


def sg_on_mesh(pipe: SGPipeline, mesh: Mesh, *, batch_size: int) -> MeshRunner:
    """Bind the SG pipeline to a 1-D mesh with one device per stage.

    ``runner.run(packed, xs, ys, valid=None)`` advances ``len(xs)`` ticks exactly like
    :func:`sg_reference` (same arguments, same metrics), with stage s on device s.

    Example (with at least two devices; here the mesh mismatch is the point):
        >>> import optax
        >>> from sgjax import nets
        >>> pipe = sg_pipeline(nets.mlp([4, 8, 2]), optimizer=optax.sgd(0.1))
        >>> sg_on_mesh(pipe, make_mesh(1), batch_size=2)
        Traceback (most recent call last):
        ...
        ValueError: pipeline: the network has 2 stages but the mesh has 1 devices; ...
    """
    net = pipe.net
    n = _check_mesh(net, mesh)
    _check_count("sg_on_mesh", "batch_size", batch_size)
    width, c, B = _width(net), net.out_dim, batch_size
    dummy = jax.eval_shape(lambda: init_sg(pipe, jax.random.key(0), batch_size=B))

    def stage_tree(st: SGState, s: int) -> tuple:
        if s < n - 1:
            return (st.params[s], st.opt_state[s], st.sg_params[s], st.sg_opt_state[s])
        return (st.params[s], st.opt_state[s], (), ())

    layouts = [_layout(stage_tree(dummy, s)) for s in range(n)]
    sizes = _sizes(layouts)

    def pack(st: SGState) -> PackedSG:
        st = jax.device_get(st)
        # prev[s] is stage s's last output (none for the last stage); inbox[s] = prev[s−1].
        h = np.zeros((n, B, width), np.float32)
        y = np.zeros((n, B, c), np.float32)
        v = np.zeros(n, np.float32)
        for s, m in enumerate(st.outbox):
            out = np.asarray(m.h, np.float32).reshape(B, -1)
            h[s, :, : out.shape[1]], y[s], v[s] = out, m.y, m.valid
        shift = lambda a: np.concatenate([np.zeros_like(a[:1]), a[:-1]])  # noqa: E731

        def put(arrays: tuple[np.ndarray, ...]) -> Message:
            return Message(*(_put(a, mesh, P(AXIS)) for a in arrays))

        return PackedSG(
            _put_stages([stage_tree(st, s) for s in range(n)], layouts, sizes, mesh),
            put((shift(h), shift(y), shift(v))),
            put((h, y, v)),
            _put(st.tick, mesh, P()),
        )

    def unpack(pk: PackedSG) -> SGState:
        trees = _get_stages(pk.flat, layouts)
        h, y, v = (np.asarray(jax.device_get(a)) for a in pk.prev)
        outbox = tuple(
            Message(
                jnp.asarray(_crop_h(h[s], net.stages[s].out_shape)),
                jnp.asarray(y[s]),
                jnp.asarray(v[s] > 0.5),
            )
            for s in range(n - 1)
        )
        return SGState(
            tuple(t[0] for t in trees),
            tuple(t[1] for t in trees),
            tuple(t[2] for t in trees[:-1]),
            tuple(t[3] for t in trees[:-1]),
            outbox,
            jnp.asarray(jax.device_get(pk.tick)),
        )

    def forward_branch(s: int) -> Callable:
        def branch(flat: Flat, msg: Message):
            theta, opt, phi, _ = _unpack(flat, layouts[s])
            inp = Message(_crop_h(msg.h, _in_shape(net, s)), msg.y, msg.valid > 0.5)
            theta, opt, h_out, g_in, loss, acc = _stage_update(pipe, s, theta, opt, phi, inp)
            flat = _write(flat, jax.tree.leaves((theta, opt)), layouts[s], 0)
            return flat, _pad_h(h_out, width), _pad_h(g_in, width), loss, acc

        return branch

    def sg_branch(s: int) -> Callable:
        def branch(flat: Flat, prev: Message, target: jax.Array):
            if s == n - 1:  # the last stage has the true gradient, no module to train
                return dict(flat), jnp.zeros((), jnp.float32)
            theta, opt, phi, sg_opt = _unpack(flat, layouts[s])
            shape = net.stages[s].out_shape
            msg = Message(_crop_h(prev.h, shape), prev.y, prev.valid > 0.5)
            phi, sg_opt, sgl = _sg_update(pipe, phi, sg_opt, msg, _crop_h(target, shape))
            start = len(jax.tree.leaves((theta, opt)))
            return _write(flat, jax.tree.leaves((phi, sg_opt)), layouts[s], start), sgl

        return branch

    fwd_branches = [forward_branch(s) for s in range(n)]
    sg_branches = [sg_branch(s) for s in range(n)]
    down = [(s, s + 1) for s in range(n - 1)]
    up = [(s + 1, s) for s in range(n - 1)]

    def device(flat, inbox, prev, tick, xs, ys, valid):
        s = lax.axis_index(AXIS)
        first = s == 0

        def one_tick(carry, inp):
            flat, inbox, prev = carry
            x, y, v = inp
            msg = Message(
                jnp.where(first, _pad_h(x, width), inbox.h),
                jnp.where(first, y, inbox.y),
                jnp.where(first, v.astype(jnp.float32), inbox.valid),
            )
            flat, h_out, g_in, loss, acc = lax.switch(s, fwd_branches, flat, msg)
            out = Message(h_out, msg.y, msg.valid)
            # Both messages leave in the same tick: h_s goes down the pipeline for the
            # next tick, the target for SG_{s-1} goes back up and is used right away.
            new_inbox, target = _send(out, down), _send(g_in, up)
            flat, sgl = lax.switch(s, sg_branches, flat, prev, target)
            return (flat, new_inbox, out), (loss, acc, msg.valid, sgl)

        carry = jax.tree.map(lambda a: a[0], (flat, inbox, prev))  # drop the device axis
        carry, per_tick = lax.scan(one_tick, carry, (xs, ys, valid))
        add = lambda a: a[None]  # noqa: E731 — the device axis of the outputs
        return jax.tree.map(add, carry), tick + xs.shape[0], jax.tree.map(add, per_tick)

    spec = P(AXIS)
    mapped = _shard_map(
        device, mesh, (spec, spec, spec, P(), P(), P(), P()), ((spec, spec, spec), P(), spec)
    )

    @jax.jit
    def _run(pk: PackedSG, xs, y_vec, valid):
        (flat, inbox, prev), tick, (loss, acc, done, sgl) = mapped(
            pk.flat, pk.inbox, pk.prev, pk.tick, xs, y_vec, valid
        )
        finished = done[n - 1] > 0.5  # the last stage's view
        metrics = {
            "loss": jnp.where(finished, loss[n - 1], 0.0),
            "accuracy": jnp.where(finished, acc[n - 1], 0.0),
            "done": finished,
            "sg_loss": sgl[: n - 1].T,
        }
        return PackedSG(flat, inbox, prev, tick), metrics

    def run(pk: PackedSG, xs: Any, ys: Any, valid: Any = None):
        return _run(pk, *_check_stream(net, B, xs, ys, valid))

    return MeshRunner(mesh, pack, unpack, run)


# --------------------------------------------------------------------------------------
# The backprop pipeline (GPipe schedule).


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
    one extra forward per stage and micro-batch.

    Example (the mismatch of stages and devices is a clear error):
        >>> import optax
        >>> from sgjax import nets
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
            jnp.asarray(jax.device_get(pk.step)),
        )

    def fwd_branch(s: int) -> Callable:
        def branch(flat: Flat, h: jax.Array) -> jax.Array:
            if s == n - 1:  # the last stage's forward is redone in its backward tick
                return jnp.zeros_like(h)
            theta, _ = _unpack(flat, layouts[s])
            return _pad_h(net.stages[s].apply(theta, _crop_h(h, _in_shape(net, s))), width)

        return branch

    def bwd_branch(s: int) -> Callable:
        def branch(flat: Flat, h: jax.Array, g_out: jax.Array, y: jax.Array):
            theta, _ = _unpack(flat, layouts[s])
            shape = net.stages[s].out_shape
            _, g_theta, g_in, value, acc = _stage_vjp(
                net,
                loss,
                s,
                theta,
                _crop_h(h, _in_shape(net, s)),
                y,
                lambda _: _crop_h(g_out, shape),
            )
            return _pack(g_theta, g_layouts[s], g_sizes), _pad_h(g_in, width), value, acc

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
            h_in = jnp.where(s == 0, _pad_h(xs[mc], width), inbox)
            buf = lax.dynamic_update_index_in_dim(buf, jnp.where(valid, h_in, buf[mc]), mc, 0)
            h_out = lax.switch(s, fwd_branches, flat, h_in)
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
            g_flat, g_in, v, a = lax.switch(s, bwd_branches, flat, buf[mc], inbox, y_vec[mc])
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
        flat = lax.switch(s, update_branches, flat, g_flat)
        add = lambda a: a[None]  # noqa: E731 — the device axis of the outputs
        return jax.tree.map(add, (flat, g_flat, value / M, correct / M))

    spec = P(AXIS)
    mapped = _shard_map(device, mesh, (spec, P(), P()), (spec, spec, spec, spec))

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
        flat, g_flat, value, correct = mapped(pk.flat, xs, y_vec)
        metrics = {"loss": value[n - 1], "accuracy": correct[n - 1]}
        return PackedBP(flat, pk.step + 1), metrics, g_flat

    def run(pk: PackedBP, xs: Any, ys: Any) -> tuple[PackedBP, dict[str, jax.Array]]:
        new, metrics, _ = _run(pk, *check(xs, ys))
        return new, metrics

    def gradients(pk: PackedBP, xs: Any, ys: Any) -> tuple[tuple, jax.Array]:
        _, metrics, g_flat = _run(pk, *check(xs, ys))
        return tuple(_get_stages(g_flat, g_layouts)), metrics["loss"]

    return GPipeRunner(mesh, pack, unpack, run, gradients)


# --------------------------------------------------------------------------------------
# Training loops and the throughput benchmark.

METHODS = ("sg-pipeline", "gpipe", "backprop", "sg")


def _single_device_chunk(
    net: Network,
    rule: rules.UpdateRule,
    loss: loss_lib.Loss,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[train.TrainState, dict[str, jax.Array]]]:
    """``chunk(state, xs, ys, valid)``: :func:`sgjax.train.make_step` over a stack of
    batches in one jitted scan (one dispatch per chunk, as for the mesh runners); a
    batch with ``valid`` False is skipped (a partial last chunk reuses the compiled call).
    """
    step = train.make_step(net, rule, loss, optimizer, sg_optimizer)

    def masked(state: train.TrainState, batch: tuple[jax.Array, jax.Array, jax.Array]):
        x, y, v = batch
        skipped = jax.tree.map(
            lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(step, state, (x, y))[1]
        )
        return lax.cond(v, lambda s: step(s, (x, y)), lambda s: (s, skipped), state)

    @jax.jit
    def chunk(state: train.TrainState, xs: jax.Array, ys: jax.Array, valid: jax.Array):
        return lax.scan(masked, state, (xs, ys, valid))

    return chunk


def train_pipelined(
    method: str,
    net: Network,
    x_train: Any,
    y_train: Any,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 64,
    micro_batches: int = 4,
    loss: str | loss_lib.Loss = "xent",
    lr: float = 1e-3,
    sg_lr: float = 1e-3,
    estimator: str | est_lib.Estimator = "conditioned",
    seed: int = 0,
    chunk: int = 50,
    mesh: Mesh | None = None,
    x_test: Any = None,
    y_test: Any = None,
) -> dict[str, Any]:
    """Train ``net`` with a pipeline (or a single-device baseline) and report the result.

    Args:
        method: ``"sg-pipeline"`` (:func:`sg_on_mesh`, one update per stage and
            micro-batch), ``"gpipe"`` (:func:`gpipe_on_mesh`, one update per M
            micro-batches), or the single-device baselines ``"backprop"`` and ``"sg"``
            (sequential DNI) with one update per micro-batch.
        net: the network; the pipelines need a mesh with one device per stage (built with
            :func:`make_mesh` if ``mesh`` is None).
        x_train, y_train: training data (inputs are flattened; integer labels).
        steps: micro-batches of ``batch_size`` to train on (GPipe: rounded up to whole
            optimiser steps of M micro-batches).
        seconds: alternatively (or also) a wall-clock budget for training, compile
            excluded; training stops after the first call that ends past it.
        batch_size: micro-batch size B.
        micro_batches: M of GPipe.
        loss, lr, sg_lr, estimator, seed: loss, Adam learning rates of the stages and SG
            modules, the SG module, seed of the initialisation and of the batch order.
        chunk: micro-batches per jitted call (the pipelines never drain between calls).
        mesh: the mesh for the pipelines.
        x_test, y_test: evaluated at the end if given.

    Returns:
        A dict with ``method``, ``stages``, ``batch_size``, ``micro_batches_seen``,
        ``updates`` (per stage), ``examples``, ``seconds`` (training, compile excluded),
        ``compile_seconds`` (the first call, which also trains), ``examples_per_s``,
        ``final_loss`` (mean over the micro-batches finished in the last call),
        ``params``, ``micro_batches`` (GPipe) and, with test data, ``test_accuracy`` and
        ``test_loss``.

    Example:
        >>> from sgjax import nets
        >>> from sgjax.infra import data
        >>> ds = data.load("digits")
        >>> r = train_pipelined("backprop", nets.mlp([64, 32, 10]), ds.x_train, ds.y_train,
        ...                     steps=15, batch_size=32, chunk=10)
        >>> r["micro_batches_seen"], r["updates"]
        (15, 15)
    """
    if method not in METHODS:
        raise ValueError(f"train_pipelined: `method` must be one of {METHODS}, got {method!r}")
    if steps is None and seconds is None:
        raise ValueError("train_pipelined: give `steps`, `seconds` or both")
    if steps is not None:
        _check_count("train_pipelined", "steps", steps)
    if seconds is not None and not seconds > 0:
        raise ValueError(f"train_pipelined: `seconds` must be > 0, got {seconds!r}")
    for arg, value in (("chunk", chunk), ("micro_batches", micro_batches)):
        _check_count("train_pipelined", arg, value)
    x_train = np.asarray(x_train, np.float32).reshape(len(x_train), -1)
    y_train = np.asarray(y_train)
    train.check_labels(y_train, net.out_dim, name="y_train")
    loss = loss_lib.get(loss)
    opt, sg_opt = optax.adam(lr), optax.adam(sg_lr)
    key = jax.random.key(seed)
    per_call = micro_batches if method == "gpipe" else chunk
    if method == "gpipe" and steps is not None:
        steps = -(-steps // per_call) * per_call  # whole optimiser steps
    data = train.batches(x_train, y_train, batch_size, seed=seed)

    def next_chunk(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``per_call`` micro-batches, the first ``k`` of them valid."""
        xb, yb = zip(*(next(data) for _ in range(per_call)))
        return np.stack(xb), np.stack(yb), np.arange(per_call) < k

    state: Any
    call: Callable[..., tuple[Any, dict[str, jax.Array]]]
    finish: Callable[[Any], Any]  # the final state -> the trained parameters
    if method == "sg-pipeline":
        pipe = sg_pipeline(net, loss, opt, sg_opt, estimator=estimator)
        sg_runner = sg_on_mesh(pipe, mesh or make_mesh(net.depth), batch_size=batch_size)
        state, call = sg_runner.pack(init_sg(pipe, key, batch_size=batch_size)), sg_runner.run

        def finish(st: PackedSG) -> Any:
            # Drain the micro-batches still in flight: N−1 empty ticks, in whole chunks so
            # that the jitted call is reused.
            for _ in range(-(-(net.depth - 1) // chunk)):
                st, _ = sg_runner.run(st, *next_chunk(0))
            return sg_runner.unpack(st).params

    elif method == "gpipe":
        gp = gpipe_on_mesh(
            net, loss, opt, mesh or make_mesh(net.depth), batch_size=batch_size,
            micro_batches=micro_batches,
        )  # fmt: skip
        state = gp.pack(init_bp(net, opt, key))
        call = lambda st, xs, ys, valid: gp.run(st, xs, ys)  # noqa: E731 — always full
        finish = lambda st: gp.unpack(st).params  # noqa: E731
    else:
        rule = rules.backprop() if method == "backprop" else rules.synthetic_gradients(estimator)
        state = jax.jit(train.init, static_argnums=(1, 2, 3, 4))(key, net, rule, opt, sg_opt)
        call = _single_device_chunk(net, rule, loss, opt, sg_opt)
        finish = lambda st: st.params  # noqa: E731

    seen = calls = timed = 0
    compile_seconds = train_seconds = 0.0
    while (steps is None or seen < steps) and (seconds is None or train_seconds < seconds):
        k = per_call if steps is None else min(per_call, steps - seen)
        xs, ys, valid = next_chunk(k)
        t0 = time.perf_counter()
        state, metrics = call(state, xs, ys, valid)
        jax.block_until_ready(metrics)
        if calls == 0:  # the first call compiles (and trains like every other)
            compile_seconds = time.perf_counter() - t0
        else:
            train_seconds += time.perf_counter() - t0
            timed += k * batch_size
        calls, seen = calls + 1, seen + k
    finished = metrics["done"] if method == "sg-pipeline" else valid
    last = np.asarray(metrics["loss"])
    last = last if method == "gpipe" else last[np.asarray(finished)]
    out: dict[str, Any] = {
        "method": method,
        "stages": net.depth,
        "batch_size": batch_size,
        "micro_batches_seen": seen,
        "updates": calls if method == "gpipe" else seen,
        "examples": seen * batch_size,
        "seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "examples_per_s": timed / train_seconds if train_seconds > 0 else float("nan"),
        "final_loss": float(np.mean(last)) if last.size else float("nan"),
        "params": finish(state),
    }
    if method == "gpipe":
        out["micro_batches"] = micro_batches
    if x_test is not None:
        x_test = np.asarray(x_test, np.float32).reshape(len(x_test), -1)
        ev = train.evaluate(net, out["params"], loss, x_test, np.asarray(y_test))
        out["test_accuracy"], out["test_loss"] = ev["accuracy"], ev["loss"]
    return out


def benchmark_pipeline(
    n_devices: int,
    *,
    sizes: Sequence[int] | None = None,
    batch_size: int = 64,
    micro_batches: int = 8,
    ticks: int = 64,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Throughput (examples/s) of the pipelines on ``n_devices`` and their single-device
    baselines, from one process that already has the devices.

    The network is ``mlp(sizes)`` with ``n_devices`` stages (default
    ``[784, 256, ..., 256, 10]``). Each figure is the best of ``repeats`` timed jitted
    calls (after a compiling call) on random data of ``ticks`` micro-batches of
    ``batch_size``:

    * ``backprop_1dev`` / ``sg_1dev``: one device, one update per micro-batch;
    * ``backprop_1dev_big``: one device, batches of M·B (what GPipe computes per step);
    * ``sg_pipeline``: the SG pipeline in steady state (filled before timing);
    * ``gpipe``: the backprop pipeline with M micro-batches per step.

    Ratios to the ideal: ``sg_pipeline_ratio = sg_pipeline / (N · sg_1dev)`` and
    ``gpipe_ratio = gpipe / (N · M/(M+N−1) · backprop_1dev)`` (the bubble bound).

    Example:
        >>> r = benchmark_pipeline(1, sizes=[16, 8], batch_size=4, micro_batches=2,
        ...                        ticks=4, repeats=1)
        >>> sorted(k for k in r if k.endswith("ratio"))
        ['gpipe_ratio', 'sg_pipeline_ratio']
    """
    from sgjax import nets

    n, M = n_devices, micro_batches
    sizes = [784, *([256] * (n - 1)), 10] if sizes is None else list(sizes)
    net = nets.mlp(sizes)
    if net.depth != n:
        raise ValueError(
            f"benchmark_pipeline: `sizes` {sizes} give {net.depth} stages but n_devices = {n}"
        )
    mesh = make_mesh(n)
    loss = loss_lib.softmax_cross_entropy
    opt = optax.adam(1e-3)
    rng = np.random.default_rng(seed)
    xs = rng.random((ticks, batch_size, sizes[0]), np.float32)
    ys = rng.integers(0, sizes[-1], (ticks, batch_size)).astype(np.int32)
    key = jax.random.key(seed)

    def best(fn: Callable[..., tuple[Any, Any]], state: Any, *args: Any) -> float:
        state, metrics = fn(state, *args)  # compile (and fill the pipeline)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = fn(state, *args)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        return min(times)

    def single(rule: rules.UpdateRule, xs: np.ndarray, ys: np.ndarray) -> float:
        chunk_fn = _single_device_chunk(net, rule, loss, opt, opt)
        state = train.init(key, net, rule, opt, opt)
        return xs.shape[0] * xs.shape[1] / best(chunk_fn, state, xs, ys, np.ones(len(xs), bool))

    out: dict[str, Any] = {
        "n_devices": n,
        "sizes": sizes,
        "batch_size": batch_size,
        "micro_batches": M,
        "ticks": ticks,
        "cpu_count": os.cpu_count(),
        "platform": jax.devices()[0].platform,
    }
    out["backprop_1dev"] = single(rules.backprop(), xs, ys)
    # One stage has no hidden boundary: its "SG" pipeline is plain backprop.
    out["sg_1dev"] = single(rules.synthetic_gradients() if n > 1 else rules.backprop(), xs, ys)
    k = max(ticks // M, 1)
    out["backprop_1dev_big"] = single(
        rules.backprop(),
        xs[: k * M].reshape(k, M * batch_size, -1),
        ys[: k * M].reshape(k, M * batch_size),
    )
    pipe = sg_pipeline(net, loss, opt, opt)
    runner = sg_on_mesh(pipe, mesh, batch_size=batch_size)
    state = runner.pack(init_sg(pipe, key, batch_size=batch_size))
    out["sg_pipeline"] = ticks * batch_size / best(runner.run, state, xs, ys)
    gp = gpipe_on_mesh(net, loss, opt, mesh, batch_size=batch_size, micro_batches=M)
    out["gpipe"] = M * batch_size / best(gp.run, gp.pack(init_bp(net, opt, key)), xs[:M], ys[:M])

    out["sg_pipeline_ideal"] = n * out["sg_1dev"]
    out["gpipe_ideal"] = n * M / (M + n - 1) * out["backprop_1dev"]
    out["sg_pipeline_ratio"] = out["sg_pipeline"] / out["sg_pipeline_ideal"]
    out["gpipe_ratio"] = out["gpipe"] / out["gpipe_ideal"]
    return out
