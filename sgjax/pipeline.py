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

import time
from collections.abc import Callable, Sequence
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
from sgjax.nets import Network

AXIS = "stage"
Params = Any


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
    if not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1:
        raise ValueError(f"make_mesh: `n_devices` must be an int ≥ 1, got {n_devices!r}")
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
    shapes: tuple
    dtypes: tuple  # dtype name of each leaf
    offsets: tuple  # offset of each leaf inside its dtype's vector
    totals: dict  # dtype name -> length used


def _layout(tree: Any) -> _Layout:
    leaves, treedef = jax.tree.flatten(tree)
    shapes, dtypes, offsets, totals = [], [], [], {}
    for leaf in leaves:
        dt = jnp.dtype(leaf.dtype).name
        shapes.append(tuple(leaf.shape))
        dtypes.append(dt)
        offsets.append(totals.get(dt, 0))
        totals[dt] = totals.get(dt, 0) + int(np.prod(leaf.shape, dtype=np.int64))
    return _Layout(treedef, tuple(shapes), tuple(dtypes), tuple(offsets), totals)


def _sizes(layouts: Sequence[_Layout]) -> dict[str, int]:
    keys = sorted({k for lay in layouts for k in lay.totals})
    return {k: max(1, *(lay.totals.get(k, 0) for lay in layouts)) for k in keys}


def _pack(tree: Any, lay: _Layout, sizes: dict[str, int], xp: Any = jnp) -> dict[str, Any]:
    # xp = numpy packs on the host (no per-leaf device dispatch), jnp inside jitted code.
    parts: dict[str, list] = {k: [] for k in sizes}
    for leaf, dt in zip(jax.tree.leaves(tree), lay.dtypes):
        parts[dt].append(xp.ravel(xp.asarray(leaf)).astype(dt))
    out = {}
    for k, n in sizes.items():
        used = lay.totals.get(k, 0)
        vec = xp.concatenate(parts[k]) if parts[k] else xp.zeros((0,), k)
        out[k] = xp.pad(vec, (0, n - used))
    return out


def _write(flat: dict[str, jax.Array], leaves: Sequence[jax.Array], lay: _Layout, start: int):
    """Write ``leaves`` (leaf ``start`` onwards of ``lay``) into ``flat`` in place.

    Cheaper than re-packing inside a stage's branch: only the leaves that changed are
    written (XLA updates the buffer in place) instead of a fresh concatenation of the
    whole stage state every tick.
    """
    flat = dict(flat)
    for i, leaf in enumerate(leaves, start):
        dt, off = lay.dtypes[i], lay.offsets[i]
        flat[dt] = lax.dynamic_update_slice(flat[dt], jnp.ravel(leaf).astype(dt), (off,))
    return flat


def _unpack(flat: dict[str, jax.Array], lay: _Layout) -> Any:
    leaves = []
    for shape, dt, off in zip(lay.shapes, lay.dtypes, lay.offsets):
        n = int(np.prod(shape, dtype=np.int64))
        # Plain slicing: static under jit, and host-side numpy when unpacking results.
        leaves.append(flat[dt][off : off + n].reshape(shape))
    return jax.tree.unflatten(lay.treedef, leaves)


def _host_unpack(flat: dict[str, np.ndarray], lay: _Layout) -> Any:
    return jax.tree.map(jnp.asarray, _unpack(flat, lay))


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _pad_h(h: jax.Array, width: int) -> jax.Array:
    h = h.reshape(h.shape[0], -1)
    return jnp.pad(h, ((0, 0), (0, width - h.shape[1])))


def _crop_h(h: jax.Array, shape: Sequence[int]) -> jax.Array:
    return h[:, : _size(shape)].reshape(h.shape[0], *shape)


def _where(c: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(c, n, o), new, old)


def _put(x: Any, mesh: Mesh, spec: P) -> jax.Array:
    # make_array_from_callback builds a global array from host data, so the same call works
    # when the mesh spans several processes (each passes the same host data).
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])


def _width(net: Network) -> int:
    return max(_size(net.in_shape), *(_size(s.out_shape) for s in net.stages))


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
    outbox: tuple
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
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"init_sg: `batch_size` must be an int ≥ 1, got {batch_size!r}")
    # One compiled call instead of dozens of eager ops.
    return jax.jit(_init_sg, static_argnums=(0, 2))(pipe, key, batch_size)


def _init_sg(pipe: SGPipeline, key: jax.Array, batch_size: int) -> SGState:
    net = pipe.net
    k_net, k_sg = jax.random.split(key)
    params = net.init(k_net)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    keys = jax.random.split(k_sg, max(net.depth - 1, 1))
    sg_params = tuple(
        pipe.estimator.init(keys[s], net.stages[s].out_shape, net.out_dim, dtype)
        for s in range(net.depth - 1)
    )
    outbox = tuple(
        Message(
            jnp.zeros((batch_size, *net.stages[s].out_shape), dtype),
            jnp.zeros((batch_size, net.out_dim), dtype),
            jnp.zeros((), bool),
        )
        for s in range(net.depth - 1)
    )
    return SGState(
        params=params,
        opt_state=tuple(pipe.optimizer.init(th) for th in params),
        sg_params=sg_params,
        sg_opt_state=tuple(pipe.sg_optimizer.init(ph) for ph in sg_params),
        outbox=outbox,
        tick=jnp.zeros((), jnp.int32),
    )


def _stage_update(pipe: SGPipeline, s: int, theta, opt, phi, msg: Message):
    """Steps 2–4 of a tick on stage s: forward, signal, immediate update of θ_s."""
    net = pipe.net
    last = s == net.depth - 1
    h_out, vjp = jax.vjp(net.stages[s].apply, theta, msg.h)
    if last:
        delta = pipe.loss.output_grad(h_out, msg.y)  # the true per-example ∂ℓ/∂p
        loss = pipe.loss.fn(h_out, msg.y)
        acc = loss_lib.accuracy(h_out, msg.y)
    else:
        delta = pipe.estimator.apply(phi, h_out, msg.y)
        loss = acc = jnp.zeros((), h_out.dtype)
    g_theta, g_in = vjp(lax.stop_gradient(delta).astype(h_out.dtype))
    batch = msg.h.shape[0]
    # Signals are per example, so the VJP is the gradient of the summed loss.
    g_theta = jax.tree.map(lambda g: g / batch, g_theta)
    updates, new_opt = pipe.optimizer.update(g_theta, opt, theta)
    new_theta = optax.apply_updates(theta, updates)
    theta, opt = _where(msg.valid, (new_theta, new_opt), (theta, opt))
    return theta, opt, h_out, lax.stop_gradient(g_in), loss, acc


def _sg_update(pipe: SGPipeline, phi, sg_opt, prev: Message, target: jax.Array):
    """Step 6: regress SG_s at last tick's (h, y) onto the target stage s+1 returned."""
    t = lax.stop_gradient(target)

    def sg_loss(ph):
        r = pipe.estimator.apply(ph, prev.h, prev.y) - t
        return jnp.mean(jnp.sum(jnp.square(r).reshape(r.shape[0], -1), axis=-1))

    value, g = jax.value_and_grad(sg_loss)(phi)
    updates, new_opt = pipe.sg_optimizer.update(g, sg_opt, phi)
    new_phi = optax.apply_updates(phi, updates)
    phi, sg_opt = _where(prev.valid, (new_phi, new_opt), (phi, sg_opt))
    return phi, sg_opt, jnp.where(prev.valid, value, 0.0)


def _check_stream(pipe: SGPipeline, state: SGState, xs, ys, valid):
    net = pipe.net
    xs = jnp.asarray(xs)
    ys = jnp.asarray(ys)
    batch = state.outbox[0].h.shape[0] if state.outbox else None
    want = (batch, *net.in_shape) if batch else None
    if xs.ndim != len(net.in_shape) + 2 or (want and tuple(xs.shape[1:]) != want):
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
    xs, y_vec, valid = _check_stream(pipe, state, xs, ys, valid)
    n = pipe.net.depth

    def tick(st: SGState, inp):
        x, y, v = inp
        inbox = [Message(x, y, v), *st.outbox]
        params, opt, outs, targets = list(st.params), list(st.opt_state), [], [None] * n
        loss = acc = None
        for s in range(n):
            phi = st.sg_params[s] if s < n - 1 else None
            params[s], opt[s], h_out, g_in, loss, acc = _stage_update(
                pipe, s, params[s], opt[s], phi, inbox[s]
            )
            outs.append(Message(h_out, inbox[s].y, inbox[s].valid))
            targets[s] = g_in  # target for SG_{s-1}
        sg_params, sg_opt, sg_losses = list(st.sg_params), list(st.sg_opt_state), []
        for s in range(n - 1):
            sg_params[s], sg_opt[s], sgl = _sg_update(
                pipe, sg_params[s], sg_opt[s], st.outbox[s], targets[s + 1]
            )
            sg_losses.append(sgl)
        new = SGState(
            tuple(params),
            tuple(opt),
            tuple(sg_params),
            tuple(sg_opt),
            tuple(outs[: n - 1]),
            st.tick + 1,
        )
        done = inbox[n - 1].valid
        metrics = {
            "loss": jnp.where(done, loss, 0.0),
            "accuracy": jnp.where(done, acc, 0.0),
            "done": done,
            "sg_loss": jnp.stack(sg_losses) if sg_losses else jnp.zeros((0,), x.dtype),
        }
        return new, metrics

    return lax.scan(tick, state, (xs, y_vec, valid))


def flush(run: Callable, state: Any, n_stages: int, example_x: jax.Array, example_y: jax.Array):
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


class MeshRunner(NamedTuple):
    """A pipeline bound to a mesh: ``pack``/``unpack`` convert between the per-stage
    state and the device-stacked, padded one that ``run`` (jitted) advances."""

    mesh: Mesh
    pack: Callable[[Any], Any]
    unpack: Callable[[Any], Any]
    run: Callable[..., tuple[Any, dict[str, jax.Array]]]


class PackedSG(NamedTuple):
    flat: dict  # dtype -> (N, L): (θ_s, opt_s, φ_s, sg_opt_s) of device s
    inbox: Message  # (N, B, D) etc.: what device s consumes next tick
    prev: Message  # (N, B, D) etc.: device s's own output of the last tick
    tick: jax.Array


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
    width = _width(net)
    c = net.out_dim
    dummy = jax.eval_shape(lambda: init_sg(pipe, jax.random.key(0), batch_size=batch_size))

    def stage_tree(st: SGState, s: int):
        if s < n - 1:
            return (st.params[s], st.opt_state[s], st.sg_params[s], st.sg_opt_state[s])
        return (st.params[s], st.opt_state[s], (), ())

    layouts = [_layout(stage_tree(dummy, s)) for s in range(n)]
    sizes = _sizes(layouts)

    def pack(st: SGState) -> PackedSG:
        st = jax.device_get(st)
        flats = [_pack(stage_tree(st, s), layouts[s], sizes, np) for s in range(n)]
        flat = {k: np.stack([np.asarray(f[k]) for f in flats]) for k in sizes}
        zero = Message(
            np.zeros((batch_size, width), np.float32), np.zeros((batch_size, c), np.float32), 0.0
        )

        def padded(m: Message) -> Message:
            h = np.asarray(m.h, np.float32).reshape(batch_size, -1)
            h = np.pad(h, ((0, 0), (0, width - h.shape[1])))
            return Message(h, np.asarray(m.y, np.float32), float(m.valid))

        outs = [padded(m) for m in st.outbox]
        prev = [*outs, zero]
        inbox = [zero, *outs]

        def stack(ms: list[Message]) -> Message:
            return Message(
                np.stack([m.h for m in ms]),
                np.stack([m.y for m in ms]),
                np.asarray([m.valid for m in ms], np.float32),
            )

        spec = P(AXIS)
        return PackedSG(
            {k: _put(v, mesh, spec) for k, v in flat.items()},
            jax.tree.map(lambda a: _put(a, mesh, spec), stack(inbox)),
            jax.tree.map(lambda a: _put(a, mesh, spec), stack(prev)),
            _put(np.asarray(st.tick), mesh, P()),
        )

    def unpack(pk: PackedSG) -> SGState:
        flat = {k: np.asarray(jax.device_get(v)) for k, v in pk.flat.items()}
        trees = [_host_unpack({k: v[s] for k, v in flat.items()}, layouts[s]) for s in range(n)]
        prev_h = np.asarray(jax.device_get(pk.prev.h))
        prev_y = np.asarray(jax.device_get(pk.prev.y))
        prev_v = np.asarray(jax.device_get(pk.prev.valid))
        outbox = tuple(
            Message(
                jnp.asarray(_crop_h(prev_h[s], net.stages[s].out_shape)),
                jnp.asarray(prev_y[s]),
                jnp.asarray(prev_v[s] > 0.5),
            )
            for s in range(n - 1)
        )
        return SGState(
            tuple(t[0] for t in trees),
            tuple(t[1] for t in trees),
            tuple(trees[s][2] for s in range(n - 1)),
            tuple(trees[s][3] for s in range(n - 1)),
            outbox,
            jnp.asarray(jax.device_get(pk.tick)),
        )

    def forward_branch(s: int):
        def branch(flat, msg: Message):
            theta, opt, phi, _ = _unpack(flat, layouts[s])
            inp = Message(
                _crop_h(msg.h, net.in_shape if s == 0 else net.stages[s - 1].out_shape),
                msg.y,
                msg.valid > 0.5,
            )
            theta, opt, h_out, g_in, loss, acc = _stage_update(pipe, s, theta, opt, phi, inp)
            flat = _write(flat, jax.tree.leaves((theta, opt)), layouts[s], 0)
            return flat, _pad_h(h_out, width), _pad_h(g_in, width), loss, acc

        return branch

    def sg_branch(s: int):
        def branch(flat, prev: Message, target):
            if s == n - 1:  # the last stage has the true gradient, no module to train
                return flat, jnp.zeros((), jnp.float32)
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
        flat = {k: v[0] for k, v in flat.items()}
        inbox = jax.tree.map(lambda a: a[0], inbox)
        prev = jax.tree.map(lambda a: a[0], prev)
        s = lax.axis_index(AXIS)

        def one_tick(carry, inp):
            flat, inbox, prev = carry
            x, y, v = inp
            first = s == 0
            msg = Message(
                jnp.where(first, _pad_h(x, width), inbox.h),
                jnp.where(first, y, inbox.y),
                jnp.where(first, v.astype(jnp.float32), inbox.valid),
            )
            flat, h_out, g_in, loss, acc = lax.switch(s, fwd_branches, flat, msg)
            out = Message(h_out, msg.y, msg.valid)
            # Both messages leave in the same tick: h_s goes down the pipeline for the
            # next tick, the target for SG_{s-1} goes back up and is used right away.
            new_inbox = lax.ppermute(out, AXIS, down) if down else out
            target = lax.ppermute(g_in, AXIS, up) if up else g_in
            flat, sgl = lax.switch(s, sg_branches, flat, prev, target)
            metrics = (loss, acc, msg.valid, sgl)
            return (flat, new_inbox, out), metrics

        (flat, inbox, prev), (loss, acc, done, sgl) = lax.scan(
            one_tick, (flat, inbox, prev), (xs, ys, valid)
        )
        add = lambda a: a[None]  # noqa: E731 — the device axis of the outputs
        return (
            {k: add(v) for k, v in flat.items()},
            jax.tree.map(add, inbox),
            jax.tree.map(add, prev),
            tick + xs.shape[0],
            add(loss),
            add(acc),
            add(done),
            add(sgl),
        )

    spec = P(AXIS)
    mapped = jax.shard_map(
        device,
        mesh=mesh,
        in_specs=(spec, spec, spec, P(), P(), P(), P()),
        out_specs=(spec, spec, spec, P(), spec, spec, spec, spec),
        check_vma=False,
    )

    @jax.jit
    def _run(pk: PackedSG, xs, y_vec, valid):
        flat, inbox, prev, tick, loss, acc, done, sgl = mapped(
            pk.flat, pk.inbox, pk.prev, pk.tick, xs, y_vec, valid
        )
        metrics = {
            "loss": jnp.where(done[n - 1] > 0.5, loss[n - 1], 0.0),
            "accuracy": jnp.where(done[n - 1] > 0.5, acc[n - 1], 0.0),
            "done": done[n - 1] > 0.5,
            "sg_loss": sgl[: n - 1].T,
        }
        return PackedSG(flat, inbox, prev, tick), metrics

    def run(pk: PackedSG, xs, ys, valid=None):
        xs, y_vec, valid = _check_stream(pipe, dummy, xs, ys, valid)
        return _run(pk, xs, y_vec, valid)

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
    flat: dict  # dtype -> (N, L): (θ_s, opt_s) of device s
    step: jax.Array


class GPipeRunner(NamedTuple):
    """:class:`MeshRunner` of the backprop pipeline, plus ``gradients(packed, xs, ys) ->
    (per-stage gradients, loss)`` (the same schedule without the update, for tests)."""

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
    for arg, v in (("batch_size", batch_size), ("micro_batches", micro_batches)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"gpipe_on_mesh: `{arg}` must be an int ≥ 1, got {v!r}")
    width, c, M, B = _width(net), net.out_dim, micro_batches, batch_size
    dummy = jax.eval_shape(lambda: init_bp(net, optimizer, jax.random.key(0)))
    layouts = [_layout((dummy.params[s], dummy.opt_state[s])) for s in range(n)]
    sizes = _sizes(layouts)
    g_layouts = [_layout(dummy.params[s]) for s in range(n)]
    g_sizes = _sizes(g_layouts)

    def in_shape(s: int):
        return net.in_shape if s == 0 else net.stages[s - 1].out_shape

    def pack(st: BPState) -> PackedBP:
        st = jax.device_get(st)
        flats = [_pack((st.params[s], st.opt_state[s]), layouts[s], sizes, np) for s in range(n)]
        flat = {k: np.stack([np.asarray(f[k]) for f in flats]) for k in sizes}
        return PackedBP(
            {k: _put(v, mesh, P(AXIS)) for k, v in flat.items()},
            _put(np.asarray(st.step), mesh, P()),
        )

    def unpack(pk: PackedBP) -> BPState:
        flat = {k: np.asarray(jax.device_get(v)) for k, v in pk.flat.items()}
        trees = [_host_unpack({k: v[s] for k, v in flat.items()}, layouts[s]) for s in range(n)]
        return BPState(
            tuple(t[0] for t in trees),
            tuple(t[1] for t in trees),
            jnp.asarray(jax.device_get(pk.step)),
        )

    def fwd_branch(s: int):
        def branch(flat, h):
            if s == n - 1:  # the last stage's forward is redone in its backward tick
                return jnp.zeros_like(h)
            theta, _ = _unpack(flat, layouts[s])
            return _pad_h(net.stages[s].apply(theta, _crop_h(h, in_shape(s))), width)

        return branch

    def bwd_branch(s: int):
        def branch(flat, h, g_out, y):
            theta, _ = _unpack(flat, layouts[s])
            h_out, vjp = jax.vjp(net.stages[s].apply, theta, _crop_h(h, in_shape(s)))
            if s == n - 1:
                delta = loss.output_grad(h_out, y)  # per-example ∂ℓ/∂p
                value, acc = loss.fn(h_out, y), loss_lib.accuracy(h_out, y)
            else:
                delta = _crop_h(g_out, net.stages[s].out_shape)
                value = acc = jnp.zeros((), h.dtype)
            g_theta, g_in = vjp(delta.astype(h_out.dtype))
            return _pack(g_theta, g_layouts[s], g_sizes), _pad_h(g_in, width), value, acc

        return branch

    def update_branch(s: int):
        def branch(flat, g_flat):
            theta, opt = _unpack(flat, layouts[s])
            g = _unpack(g_flat, g_layouts[s])
            updates, opt = optimizer.update(g, opt, theta)
            return _write(
                flat, jax.tree.leaves((optax.apply_updates(theta, updates), opt)), layouts[s], 0
            )

        return branch

    fwd_branches = [fwd_branch(s) for s in range(n)]
    bwd_branches = [bwd_branch(s) for s in range(n)]
    update_branches = [update_branch(s) for s in range(n)]
    down = [(s, s + 1) for s in range(n - 1)]
    up = [(s + 1, s) for s in range(n - 1)]
    ticks = M + n - 1

    def grads_on_device(flat, xs, y_vec):
        s = lax.axis_index(AXIS)

        def fwd_tick(carry, t):
            buf, inbox = carry
            m = t - s
            valid = (m >= 0) & (m < M)
            mc = jnp.clip(m, 0, M - 1)
            h_in = jnp.where(s == 0, _pad_h(xs[mc], width), inbox)
            buf = lax.dynamic_update_index_in_dim(buf, jnp.where(valid, h_in, buf[mc]), mc, 0)
            h_out = lax.switch(s, fwd_branches, flat, h_in)
            return (buf, lax.ppermute(h_out, AXIS, down) if down else h_out), None

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
            return (acc, lax.ppermute(g_in, AXIS, up) if up else g_in, value, correct), None

        acc0 = {k: jnp.zeros((L,), k) for k, L in g_sizes.items()}
        zero = jnp.zeros((), xs.dtype)
        (acc, _, value, correct), _ = lax.scan(
            bwd_tick, (acc0, zeros_h, zero, zero), jnp.arange(ticks)
        )
        # Per-example signals: the VJPs summed the loss over the M·B examples.
        g_flat = jax.tree.map(lambda g: g / (M * B), acc)
        return g_flat, value / M, correct / M

    def gradients_device(flat, xs, y_vec):
        flat = {k: v[0] for k, v in flat.items()}
        g_flat, value, correct = grads_on_device(flat, xs, y_vec)
        return {k: v[None] for k, v in g_flat.items()}, value[None], correct[None]

    def step_device(flat, xs, y_vec):
        flat = {k: v[0] for k, v in flat.items()}
        g_flat, value, correct = grads_on_device(flat, xs, y_vec)
        flat = lax.switch(lax.axis_index(AXIS), update_branches, flat, g_flat)
        return {k: v[None] for k, v in flat.items()}, value[None], correct[None]

    spec = P(AXIS)
    kw = dict(mesh=mesh, in_specs=(spec, P(), P()), out_specs=(spec, spec, spec), check_vma=False)
    grads_mapped = jax.shard_map(gradients_device, **kw)
    step_mapped = jax.shard_map(step_device, **kw)

    def check(xs, ys):
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
        flat, value, correct = step_mapped(pk.flat, xs, y_vec)
        return PackedBP(flat, pk.step + 1), {"loss": value[n - 1], "accuracy": correct[n - 1]}

    @jax.jit
    def _grads(pk: PackedBP, xs, y_vec):
        g_flat, value, _ = grads_mapped(pk.flat, xs, y_vec)
        return g_flat, value[n - 1]

    def run(pk: PackedBP, xs, ys):
        return _run(pk, *check(xs, ys))

    def gradients(pk: PackedBP, xs, ys):
        g_flat, value = _grads(pk, *check(xs, ys))
        g_flat = {k: np.asarray(jax.device_get(v)) for k, v in g_flat.items()}
        grads = tuple(
            _host_unpack({k: v[s] for k, v in g_flat.items()}, g_layouts[s]) for s in range(n)
        )
        return grads, value

    return GPipeRunner(mesh, pack, unpack, run, gradients)


# --------------------------------------------------------------------------------------
# Training loops, data, and the throughput benchmark.

METHODS = ("sg-pipeline", "gpipe", "backprop", "sg")


def load_dataset(name: str, data_dir: str | None = None):
    """Load ``"digits"`` or ``"mnist"`` as flat float32 inputs (a :class:`sgjax.data.Dataset`).

    Uses :func:`sgjax.data.load` when it knows the name; MNIST is otherwise read here from
    IDX files (raw or ``.gz``) in ``data_dir``, ``$SGJAX_DATA_DIR`` or the shared copy.
    Nothing is downloaded.

    Example:
        >>> load_dataset("digits").x_train.shape[1]
        64
    """
    import os
    from pathlib import Path

    from sgjax import data

    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    if name in getattr(data, "LOADERS", {}):
        ds = data.load(name, **kwargs)
    elif name == "mnist":
        here = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
        dirs = [d for d in (data_dir, os.environ.get("SGJAX_DATA_DIR"), str(here)) if d]
        for d in dirs:
            if _idx_path(Path(d), "train-images-idx3-ubyte") is not None:
                ds = _mnist(Path(d))
                break
        else:
            raise FileNotFoundError(
                f"MNIST IDX files not found in {dirs}: pass data_dir or set SGJAX_DATA_DIR "
                "to a directory holding train-images-idx3-ubyte[.gz] and the other three"
            )
    else:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; expected 'digits' or 'mnist'")
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)  # noqa: E731
    return ds._replace(x_train=flat(ds.x_train), x_test=flat(ds.x_test))


def _idx_path(d, stem: str):
    for name in (stem, stem + ".gz"):
        if (d / name).exists():
            return d / name
    return None


def _read_idx(path) -> np.ndarray:
    import gzip

    raw = (gzip.open if str(path).endswith(".gz") else open)(path, "rb").read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], ">i4")
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(tuple(int(d) for d in dims))


def _mnist(d):
    from sgjax.data import Dataset

    def get(stem):
        path = _idx_path(d, stem)
        if path is None:
            raise FileNotFoundError(f"MNIST: {stem}[.gz] missing in {d}")
        return _read_idx(path)

    x_tr = get("train-images-idx3-ubyte").astype(np.float32) / 255.0
    x_te = get("t10k-images-idx3-ubyte").astype(np.float32) / 255.0
    y_tr = get("train-labels-idx1-ubyte").astype(np.int32)
    y_te = get("t10k-labels-idx1-ubyte").astype(np.int32)
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10)


def _single_device_chunk(net: Network, rule, loss, optimizer, sg_optimizer):
    from sgjax import train

    step = train.make_step(net, rule, loss, optimizer, sg_optimizer)

    @jax.jit
    def chunk(state, xs, ys):
        # A scan over the chunk: one dispatch per chunk, as for the mesh runners.
        return lax.scan(lambda s, b: step(s, b), state, (xs, ys))

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
        x_train, y_train: training data (flat inputs, integer labels).
        steps: micro-batches of ``batch_size`` to train on (rounded up to whole chunks of
            ``chunk`` micro-batches; GPipe to whole steps of M micro-batches).
        seconds: alternatively (or also) a wall-clock budget for training, compile
            excluded; training stops after the first chunk that ends past it.
        batch_size: micro-batch size B.
        micro_batches: M of GPipe.
        loss, lr, sg_lr, seed: loss, Adam learning rates of the stages and SG modules,
            seed of the initialisation and of the batch order.
        chunk: micro-batches per jitted call (the pipelines never drain between calls).
        mesh: the mesh for the pipelines.
        x_test, y_test: evaluated at the end if given.

    Returns:
        A dict with ``method``, ``micro_batches_seen``, ``updates`` (per stage),
        ``examples``, ``seconds`` (training, compile excluded), ``compile_seconds``,
        ``examples_per_s``, ``final_loss`` (mean of the last chunk), ``params`` and, with
        test data, ``test_accuracy`` and ``test_loss``.

    Example:
        >>> from sgjax import nets
        >>> ds = load_dataset("digits")
        >>> r = train_pipelined("backprop", nets.mlp([64, 32, 10]), ds.x_train, ds.y_train,
        ...                     steps=20, batch_size=32, chunk=10)
        >>> r["micro_batches_seen"], r["updates"]
        (20, 20)
    """
    from sgjax import rules, train

    if method not in METHODS:
        raise ValueError(f"train_pipelined: `method` must be one of {METHODS}, got {method!r}")
    if steps is None and seconds is None:
        raise ValueError("train_pipelined: give `steps`, `seconds` or both")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"train_pipelined: `steps` must be an int ≥ 1, got {steps!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"train_pipelined: `seconds` must be > 0, got {seconds!r}")
    x_train = np.asarray(x_train, np.float32).reshape(len(x_train), -1)
    y_train = np.asarray(y_train)
    train.check_labels(y_train, net.out_dim, name="y_train")
    loss = loss_lib.get(loss)
    opt, sg_opt = optax.adam(lr), optax.adam(sg_lr)
    key = jax.random.key(seed)
    per_call = micro_batches if method == "gpipe" else chunk
    calls_cap = None if steps is None else -(-steps // per_call)
    data = train.batches(x_train, y_train, batch_size, seed=seed)

    def next_chunk(k):
        xb, yb = zip(*(next(data) for _ in range(k)))
        return np.stack(xb), np.stack(yb)

    if method in ("sg-pipeline", "gpipe"):
        mesh = make_mesh(net.depth) if mesh is None else mesh
    if method == "sg-pipeline":
        pipe = sg_pipeline(net, loss, opt, sg_opt)
        runner = sg_on_mesh(pipe, mesh, batch_size=batch_size)
        state = runner.pack(init_sg(pipe, key, batch_size=batch_size))

        def call(state, xs, ys):
            return runner.run(state, xs, ys)

        def finish(state):
            xs = np.zeros((chunk, batch_size, x_train.shape[1]), np.float32)
            ys = np.zeros((chunk, batch_size), y_train.dtype)
            # Drain the micro-batches still in flight (N−1 empty ticks, padded to a chunk
            # so that the jitted call is reused).
            valid = np.zeros(chunk, bool)
            state, _ = runner.run(state, xs, ys, valid)
            return runner.unpack(state).params
    elif method == "gpipe":
        runner = gpipe_on_mesh(
            net, loss, opt, mesh, batch_size=batch_size, micro_batches=micro_batches
        )
        state = runner.pack(init_bp(net, opt, key))
        call = runner.run

        def finish(state):
            return runner.unpack(state).params
    else:
        rule = rules.backprop() if method == "backprop" else rules.synthetic_gradients()
        state = train.init(key, net, rule, opt, sg_opt)
        call = _single_device_chunk(net, rule, loss, opt, sg_opt)

        def finish(state):
            return state.params

    # Compile on the first chunk (which is then trained on, like every other).
    t0 = time.perf_counter()
    state, metrics = call(state, *next_chunk(per_call))
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - t0
    calls, train_seconds = 1, 0.0
    while calls_cap is None or calls < calls_cap:
        if seconds is not None and train_seconds >= seconds:
            break
        xs, ys = next_chunk(per_call)
        t0 = time.perf_counter()
        state, metrics = call(state, xs, ys)
        jax.block_until_ready(metrics)
        train_seconds += time.perf_counter() - t0
        calls += 1
    params = finish(state)
    seen = calls * per_call
    updates = calls if method == "gpipe" else seen
    last = np.asarray(metrics["loss"])
    if method == "sg-pipeline":
        last = last[np.asarray(metrics["done"])]
    # The timed part excludes the first (compiling) call: count its examples out too.
    timed = (calls - 1) * per_call * batch_size
    out: dict[str, Any] = {
        "method": method,
        "stages": net.depth,
        "batch_size": batch_size,
        "micro_batches_seen": seen,
        "updates": updates,
        "examples": seen * batch_size,
        "seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "examples_per_s": timed / train_seconds if train_seconds > 0 else float("nan"),
        "final_loss": float(np.mean(last)) if last.size else float("nan"),
        "params": params,
    }
    if method == "gpipe":
        out["micro_batches"] = micro_batches
    if x_test is not None:
        x_test = np.asarray(x_test, np.float32).reshape(len(x_test), -1)
        ev = train.evaluate(net, params, loss, x_test, np.asarray(y_test))
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
    from sgjax import nets, rules, train

    n = n_devices
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
    d_in = sizes[0]
    xs = rng.random((ticks, batch_size, d_in), np.float32)
    ys = rng.integers(0, sizes[-1], (ticks, batch_size)).astype(np.int32)
    M = micro_batches

    def best(fn, *args):
        state, metrics = fn(*args)  # compile (and fill the pipeline)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = fn(state, *args[1:])
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        return min(times)

    key = jax.random.key(seed)
    out: dict[str, Any] = {
        "n_devices": n,
        "sizes": sizes,
        "batch_size": batch_size,
        "micro_batches": M,
        "ticks": ticks,
        "cpu_count": __import__("os").cpu_count(),
        "platform": jax.devices()[0].platform,
    }
    # One stage has no hidden boundary: its "SG" pipeline is plain backprop.
    sg_rule = rules.synthetic_gradients() if n > 1 else rules.backprop()
    for name, rule in (("backprop_1dev", rules.backprop()), ("sg_1dev", sg_rule)):
        chunk_fn = _single_device_chunk(net, rule, loss, opt, opt)
        t = best(chunk_fn, train.init(key, net, rule, opt, opt), xs, ys)
        out[name] = ticks * batch_size / t
    big = _single_device_chunk(net, rules.backprop(), loss, opt, opt)
    k = max(ticks // M, 1)
    xs_big = xs[: k * M].reshape(k, M * batch_size, d_in)
    ys_big = ys[: k * M].reshape(k, M * batch_size)
    t = best(big, train.init(key, net, rules.backprop(), opt, opt), xs_big, ys_big)
    out["backprop_1dev_big"] = k * M * batch_size / t

    pipe = sg_pipeline(net, loss, opt, opt)
    runner = sg_on_mesh(pipe, mesh, batch_size=batch_size)
    t = best(runner.run, runner.pack(init_sg(pipe, key, batch_size=batch_size)), xs, ys)
    out["sg_pipeline"] = ticks * batch_size / t

    gp = gpipe_on_mesh(net, loss, opt, mesh, batch_size=batch_size, micro_batches=M)
    t = best(gp.run, gp.pack(init_bp(net, opt, key)), xs[:M], ys[:M])
    out["gpipe"] = M * batch_size / t

    out["sg_pipeline_ideal"] = n * out["sg_1dev"]
    out["gpipe_ideal"] = n * M / (M + n - 1) * out["backprop_1dev"]
    out["sg_pipeline_ratio"] = out["sg_pipeline"] / out["sg_pipeline_ideal"]
    out["gpipe_ratio"] = out["gpipe"] / out["gpipe_ideal"]
    return out
