"""The SG pipeline with one process per stage, each running its own stage's program.

:func:`~sgjax.pipeline.sg.sg_on_mesh` compiles one SPMD program for every device: the
stage's work is chosen at run time by ``lax.switch(axis_index, ...)`` over the stage
state packed into padded vectors. On CPU processes that costs, per tick, a copy of the
packed state into and out of each switch (XLA cannot update a conditional's operands in
place: ≈ 16 MB per tick for a 784-512-512 stage with Adam and its SG module, measured in
the compiled program) — on one core about a third of the tick.

When every process holds exactly one stage — a :func:`~sgjax.pipeline.launch` job, or
one process per host with one accelerator each — that indirection is not needed: JAX's
multi-controller model lets each process run its *own* jitted computations on its own
device, as long as the computations that span processes are the same everywhere. So
here each process compiles only its stage's tick (static stage index, its parameters as
ordinary arrays updated in place, the state donated), and the processes meet once per
tick in a small global program that does nothing but the exchange
(:func:`~sgjax.pipeline.sg._exchange`, the same messages as the SPMD runner). The math
is the same code as the SPMD runner's (:func:`~sgjax.pipeline.sg._forward_math`,
``_sg_math``) in the same order, so the two agree to rounding (and both with
:func:`~sgjax.pipeline.sg.sg_reference`; ``tests/test_launch.py``).

The price: one Python dispatch of the stage's tick and one of the exchange per tick
(≈ 0.1–0.2 ms on CPU), where the SPMD runner scans a whole call on the device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgjax.pipeline.mesh import AXIS, _check_count, _check_mesh, _shard_map, _to_host
from sgjax.pipeline.packing import _crop_h, _get_stages, _pack, _width
from sgjax.pipeline.sg import (
    MeshRunner,
    _exchange,
    _forward_math,
    _pack_message,
    _sg_math,
    _sg_state,
    _stage_layouts,
    _stage_tree,
    _unpack_message,
)
from sgjax.pipeline.stages import Message, SGPipeline, SGState, _check_stream


class LocalSG(NamedTuple):
    """One process's part of the SG pipeline's state (its stage ``stage``).

    ``trees`` = (θ_s, optimiser state, φ_s, SG optimiser state) (φ empty for the last
    stage); ``inbox`` and ``prev`` are messages packed as ``[h | y | valid]`` (what stage
    s consumes next tick, and its own last output); ``tick`` counts ticks run.
    """

    stage: int
    trees: tuple
    inbox: jax.Array
    prev: jax.Array
    tick: int


def _local_stage(mesh: Mesh, fn: str) -> tuple[int, Any]:
    """The stage (position in the mesh) of this process's one device, and the device."""
    devs = list(mesh.devices.flat)
    mine = [i for i, d in enumerate(devs) if d.process_index == jax.process_index()]
    if len(mine) != 1:
        raise ValueError(
            f"{fn}: needs exactly one mesh device per process (one process per stage); "
            f"process {jax.process_index()} holds {len(mine)} of the mesh's {len(devs)} "
            "devices — use sg_on_mesh for a mesh inside one process"
        )
    return mine[0], devs[mine[0]]


def sg_per_process(pipe: SGPipeline, mesh: Mesh, *, batch_size: int) -> MeshRunner:
    """Bind the SG pipeline to a mesh with one device per process, one process per stage.

    Same interface and results as :func:`~sgjax.pipeline.sg_on_mesh` (``pack`` an
    :class:`~sgjax.pipeline.SGState`, ``run(state, xs, ys, valid=None)`` for
    ``len(xs)`` ticks with the same metrics, ``unpack`` back — every process must call
    ``run`` and ``unpack`` alike, with the same data), but each process runs only its own
    stage's compiled tick; see the module's docstring for why that is faster on CPU.

    Raises:
        ValueError: if a process holds other than one device of the mesh, or the mesh
            does not have one device per stage.

    Example (one stage, one process — the smallest job; ``sgjax launch`` runs more):
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax import nets
        >>> from sgjax.pipeline import init_sg, make_mesh, sg_pipeline
        >>> pipe = sg_pipeline(nets.mlp([4, 3]), optimizer=optax.sgd(0.1))
        >>> runner = sg_per_process(pipe, make_mesh(1), batch_size=2)
        >>> state = runner.pack(init_sg(pipe, jax.random.key(0), batch_size=2))
        >>> state, m = runner.run(state, jnp.ones((3, 2, 4)), jnp.zeros((3, 2), int))
        >>> m["done"].tolist(), state.tick
        ([True, True, True], 3)
    """
    net = pipe.net
    n = _check_mesh(net, mesh)
    _check_count("sg_per_process", "batch_size", batch_size)
    s, dev = _local_stage(mesh, "sg_per_process")
    width, c, B = _width(net), net.out_dim, batch_size
    K = width + c + 1  # a packed message
    last = s == n - 1
    layouts, sizes = _stage_layouts(pipe, B)
    like = Message(
        jnp.zeros((B, width), jnp.float32), jnp.zeros((B, c), jnp.float32), jnp.zeros(())
    )
    sharding = NamedSharding(mesh, P(AXIS))

    def _global(local: Any) -> jax.Array:
        """This process's row of an (n, ...) array, as the global array."""
        local = jax.device_put(jnp.asarray(local)[None], dev)
        return jax.make_array_from_single_device_arrays((n, *local.shape[1:]), sharding, [local])

    def _gather(local: Any) -> np.ndarray:
        """Every process's row, stacked (a collective: every process calls it)."""
        return _to_host(_global(local))

    def pack(st: SGState) -> LocalSG:
        st = jax.device_get(st)

        def packed(i: int) -> np.ndarray:  # stage i's last output, padded and packed
            if i < 0 or i >= n - 1:
                return np.zeros((B, K), np.float32)
            m = st.outbox[i]
            buf = np.zeros((B, K), np.float32)
            out = np.asarray(m.h, np.float32).reshape(B, -1)
            buf[:, : out.shape[1]] = out
            buf[:, width : width + c] = m.y
            buf[:, -1] = float(m.valid)
            return buf

        trees = jax.device_put(_stage_tree(st, s), dev)
        put = lambda a: jax.device_put(jnp.asarray(a), dev)  # noqa: E731
        return LocalSG(s, trees, put(packed(s - 1)), put(packed(s)), int(st.tick))

    def unpack(pk: LocalSG) -> SGState:
        local = _pack(jax.device_get(pk.trees), layouts[s], sizes, np)
        trees = _get_stages({k: _global(v) for k, v in local.items()}, layouts)
        prev = _gather(pk.prev)  # (n, B, K)
        outbox = tuple(
            Message(
                _crop_h(jnp.asarray(prev[i, :, :width]), net.stages[i].out_shape),
                jnp.asarray(prev[i, :, width : width + c]),
                jnp.asarray(prev[i, 0, -1] > 0.5),
            )
            for i in range(n - 1)
        )
        return _sg_state(trees, outbox, jnp.asarray(pk.tick, jnp.int32))

    def sg_part(trees: tuple, pend: jax.Array, target: jax.Array) -> tuple:
        theta, opt, phi, sg_opt = trees
        if last:  # the last stage has the true gradient, no module to train
            return trees, jnp.zeros((), jnp.float32), jnp.ones((), bool)
        phi, sg_opt, sgl, ok = _sg_math(pipe, s, phi, sg_opt, _unpack_message(pend, like), target)
        return (theta, opt, phi, sg_opt), sgl, ok

    def tick(trees, inbox, target, prev, pend, xs, ys, valid, t):
        # The SPMD runner's one_tick for this stage: SG_s first (on last tick's target),
        # then the forward; the exchange follows in the global program.
        trees, sgl, sg_ok = sg_part(trees, pend, target)
        theta, opt, phi, sg_opt = trees
        msg = _unpack_message(inbox, like)
        if s == 0:
            msg = Message(msg.h, ys[t], valid[t].astype(jnp.float32))
        theta, opt, h_out, g_in, loss, acc, fwd_ok = _forward_math(
            pipe, s, width, theta, opt, phi, msg, xs[t], sg_opt
        )
        out = _pack_message(Message(h_out, msg.y, msg.valid))
        send = jnp.concatenate([out, g_in], axis=1)
        mets = jnp.stack(
            [loss, acc, msg.valid, sgl, fwd_ok.astype(jnp.float32), sg_ok.astype(jnp.float32)]
        )
        return (theta, opt, phi, sg_opt), send, out, mets

    local_tick = jax.jit(tick, donate_argnums=(0,))
    finish = jax.jit(sg_part, donate_argnums=(0,))

    def exchange_device(buf: jax.Array) -> tuple[jax.Array, jax.Array]:
        i = jax.lax.axis_index(AXIS)
        out = _unpack_message(buf[:, :K], like)
        msg, target = _exchange(n, i, out, buf[:, K:])
        return _pack_message(msg), target

    exchange = jax.jit(_shard_map(exchange_device, mesh, (P(AXIS),), (P(AXIS), P(AXIS))))
    ticks_on_device: dict[int, list[jax.Array]] = {}

    def run(pk: LocalSG, xs: Any, ys: Any, valid: Any = None) -> tuple[LocalSG, dict]:
        if pk.stage != s:
            raise ValueError(
                f"sg_per_process: this state is stage {pk.stage}'s, this process runs stage {s}"
            )
        xs, y_vec, valid = _check_stream(net, B, xs, ys, valid)
        T = xs.shape[0]
        if T not in ticks_on_device:
            ticks_on_device[T] = [jax.device_put(jnp.int32(t), dev) for t in range(T)]
        xs, y_vec, valid = jax.device_put((xs, y_vec, valid), dev)
        trees, inbox, prev = pk.trees, pk.inbox, pk.prev
        # nothing pending at the start of a call (the last call applied its update)
        pend = prev.at[:, -1].set(0.0)
        target = jnp.zeros((B, width), jnp.float32, device=dev)
        mets = []
        for t in ticks_on_device[T]:
            trees, send, out, m = local_tick(trees, inbox, target, prev, pend, xs, y_vec, valid, t)
            got_inbox, got_target = exchange(
                jax.make_array_from_single_device_arrays((n * B, send.shape[1]), sharding, [send])
            )
            inbox = got_inbox.addressable_shards[0].data
            target = got_target.addressable_shards[0].data
            pend, prev = prev, out
            mets.append(m)
        trees, sgl_last, ok_last = finish(trees, pend, target)
        per = jnp.stack(mets, axis=1)  # (6, T): loss, acc, done, sgl, fwd_ok, sg_ok
        # tick t's SG update ran at the start of tick t + 1 (the last one just above)
        sgl = jnp.concatenate([per[3, 1:], sgl_last[None]])
        sg_ok = jnp.concatenate([per[5, 1:] > 0.5, ok_last[None]])
        local = jnp.stack([per[0], per[1], per[2], sgl, ((per[4] > 0.5) & sg_ok).astype(per.dtype)])
        allm = _gather(local)  # (n, 5, T)
        finished = allm[n - 1, 2] > 0.5  # the last stage's view
        ok = allm[:, 4].T > 0.5
        metrics = {
            "loss": jnp.asarray(np.where(finished, allm[n - 1, 0], 0.0)),
            "accuracy": jnp.asarray(np.where(finished, allm[n - 1, 1], 0.0)),
            "done": jnp.asarray(finished),
            "sg_loss": jnp.asarray(allm[: n - 1, 3].T),
            "stage_finite": jnp.asarray(ok),
            "finite": jnp.asarray(ok.all(axis=1)),
        }
        return LocalSG(s, trees, inbox, prev, pk.tick + T), metrics

    return MeshRunner(mesh, pack, unpack, run)
