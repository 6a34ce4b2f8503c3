"""The SG pipeline's schedule: on one device (:func:`sg_reference`) and on a mesh
(:func:`sg_on_mesh`), plus :func:`flush`, which drains it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

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
    _pad_h,
    _put_stages,
    _sizes,
    _unpack,
    _width,
    _write,
)
from sgjax.pipeline.stages import (
    Message,
    SGPipeline,
    SGState,
    _check_stream,
    _sg_update,
    _stage_update,
    init_sg,
)


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
        the last stage finished (``done`` says whether it finished one), ``sg_loss``
        of shape ``(ticks, N−1)``, ``stage_finite`` of shape ``(ticks, N)`` (stage s's
        updates of that tick were finite; a non-finite one was not applied) and
        ``finite`` (all stages were).
    """
    batch = state.outbox[0].h.shape[0] if state.outbox else None
    xs, y_vec, valid = _check_stream(pipe.net, batch, xs, ys, valid)
    n = pipe.net.depth

    def tick(st: SGState, inp: tuple[jax.Array, jax.Array, jax.Array]):
        inbox = [Message(*inp), *st.outbox]
        params, opt = list(st.params), list(st.opt_state)
        outs, targets = [], []  # targets[s]: stage s's input gradient, the target of SG_{s-1}
        ok = []  # ok[s]: stage s's updates this tick were finite
        for s in range(n):
            phi, sg_opt = (st.sg_params[s], st.sg_opt_state[s]) if s < n - 1 else ((), ())
            params[s], opt[s], h_out, g_in, loss, acc, fwd_ok = _stage_update(
                pipe, s, params[s], opt[s], phi, inbox[s], sg_opt
            )
            outs.append(Message(h_out, inbox[s].y, inbox[s].valid))
            targets.append(g_in)
            ok.append(fwd_ok)
        sg_params, sg_opt, sg_losses = list(st.sg_params), list(st.sg_opt_state), []
        for s in range(n - 1):
            sg_params[s], sg_opt[s], sgl, sg_ok = _sg_update(
                pipe, sg_params[s], sg_opt[s], st.outbox[s], targets[s + 1]
            )
            sg_losses.append(sgl)
            ok[s] = ok[s] & sg_ok
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
            "stage_finite": jnp.stack(ok),
            "finite": jnp.all(jnp.stack(ok)),
        }
        return new, metrics

    return lax.scan(tick, state, (xs, y_vec, valid))


def flush(
    run: Callable[..., tuple[Any, dict[str, jax.Array]]],
    state: Any,
    n_stages: int,
    example_x: jax.Array,
    example_y: jax.Array,
    *,
    ticks: int | None = None,
) -> tuple[Any, dict[str, jax.Array]]:
    """Feed ``n_stages − 1`` empty ticks so every micro-batch in flight finishes.

    ``run`` is :func:`sg_reference` bound to its pipeline, or a mesh runner's ``run``;
    ``example_x``/``example_y`` is any micro-batch of the right shape (its values are
    ignored). With ``ticks`` the empty ticks are fed in calls of that length (so a
    runner already compiled for calls of ``ticks`` is reused), as many calls as needed
    to reach ``n_stages − 1``; the metrics of the calls are concatenated.

    Example:
        >>> import functools, jax, jax.numpy as jnp, optax
        >>> from sgjax import nets
        >>> from sgjax.pipeline import sg_pipeline
        >>> pipe = sg_pipeline(nets.mlp([3, 4, 2]), optimizer=optax.sgd(0.1))
        >>> s = init_sg(pipe, jax.random.key(0), batch_size=2)
        >>> s, _ = sg_reference(pipe, s, jnp.ones((1, 2, 3)), jnp.zeros((1, 2), int))
        >>> s, m = flush(functools.partial(sg_reference, pipe), s, 2, jnp.ones((2, 3)),
        ...              jnp.zeros(2, int))
        >>> m["done"].tolist()
        [True]
    """
    _check_count("flush", "n_stages", n_stages)
    k = n_stages - 1
    if ticks is not None:
        _check_count("flush", "ticks", ticks)
    per_call = k if ticks is None else ticks
    xs = jnp.broadcast_to(example_x, (per_call, *example_x.shape))
    ys = jnp.broadcast_to(example_y, (per_call, *example_y.shape))
    empty = jnp.zeros((per_call,), bool)
    state, metrics = run(state, xs, ys, empty)
    parts = [metrics]
    for _ in range(per_call, k, per_call):
        state, metrics = run(state, xs, ys, empty)
        parts.append(metrics)
    if len(parts) == 1:
        return state, parts[0]
    return state, jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


class PackedSG(NamedTuple):
    """The SG pipeline's state on the mesh: row s of every array lives on device s."""

    flat: dict[str, jax.Array]  # dtype -> (N, L): (θ_s, opt_s, φ_s, sg_opt_s) of device s
    inbox: Message  # (N, B, width) etc.: what device s consumes next tick
    prev: Message  # (N, B, width) etc.: device s's own output of the last tick
    tick: jax.Array


class MeshRunner(NamedTuple):
    """The SG pipeline bound to a mesh: ``pack``/``unpack`` convert between the per-stage
    state and the runner's own (:class:`PackedSG` for :func:`sg_on_mesh`, the
    device-stacked, padded state; :class:`~sgjax.pipeline.per_process.LocalSG` for
    :func:`~sgjax.pipeline.per_process.sg_per_process`), which ``run`` advances."""

    mesh: Mesh
    pack: Callable[[SGState], Any]
    unpack: Callable[[Any], SGState]
    run: Callable[..., tuple[Any, dict[str, jax.Array]]]


def _pack_message(m: Message) -> jax.Array:
    """A :class:`Message` as one buffer ``[h | y | valid]`` of shape (B, width + c + 1), so
    that it travels in one collective (on CPU processes each collective costs a round
    trip; the parts are 0/1 or h's dtype, so the cast is exact)."""
    flag = jnp.broadcast_to(m.valid.astype(m.h.dtype), (m.h.shape[0], 1))
    return jnp.concatenate([m.h, m.y.astype(m.h.dtype), flag], axis=1)


def _unpack_message(buf: jax.Array, like: Message) -> Message:
    """The inverse of :func:`_pack_message` (shapes and dtypes from ``like``)."""
    w, c = like.h.shape[1], like.y.shape[1]
    return Message(
        buf[:, :w], buf[:, w : w + c].astype(like.y.dtype), buf[0, w + c].astype(like.valid.dtype)
    )


def _send_message(m: Message, pairs: list[tuple[int, int]]) -> Message:
    """Send a :class:`Message` in one collective (:func:`_pack_message`)."""
    return _unpack_message(_send(_pack_message(m), pairs), m)


def _forward_math(
    pipe: SGPipeline,
    s: int,
    width: int,
    theta: Any,
    opt: Any,
    phi: Any,
    msg: Message,
    x: jax.Array,
    sg_opt: Any = (),
) -> tuple:
    """Stage s's forward, signal and update on a device's padded message (stage 0 reads
    ``x``); returns θ_s, its optimiser state, the padded output and input gradient, loss,
    accuracy and the finiteness flag. The same code for both mesh runners."""
    net = pipe.net
    h = x if s == 0 else _crop_h(msg.h, _in_shape(net, s))  # x is never sent
    inp = Message(h, msg.y, msg.valid > 0.5)
    theta, opt, h_out, g_in, loss, acc, ok = _stage_update(pipe, s, theta, opt, phi, inp, sg_opt)
    # stage 0's input gradient is not computed (nothing consumes it)
    batch = h_out.shape[0]
    g_in = jnp.zeros((batch, width), h_out.dtype) if s == 0 else _pad_h(g_in, width)
    return theta, opt, _pad_h(h_out, width), g_in, loss, acc, ok


def _sg_math(
    pipe: SGPipeline, s: int, phi: Any, sg_opt: Any, prev: Message, target: jax.Array
) -> tuple:
    """SG_s's regression on last tick's padded output and the target that came back."""
    shape = pipe.net.stages[s].out_shape
    msg = Message(_crop_h(prev.h, shape), prev.y, prev.valid > 0.5)
    return _sg_update(pipe, phi, sg_opt, msg, _crop_h(target, shape))


def _exchange(n: int, s: jax.Array, out: Message, g_in: jax.Array) -> tuple[Message, jax.Array]:
    """Both messages of a tick (inside a ``shard_map``, ``s`` = the stage index): h_s down,
    the target for SG_{s-1} up. With two stages they are one swap, so one collective (one
    round trip between processes): device 0 sends [h | y | valid], device 1 its input
    gradient, in one buffer of the wider."""
    if n != 2:
        down = [(i, i + 1) for i in range(n - 1)]
        up = [(i + 1, i) for i in range(n - 1)]
        return _send_message(out, down), _send(g_in, up)
    w, c = out.h.shape[1], out.y.shape[1]
    up_part = jnp.pad(g_in.astype(out.h.dtype), ((0, 0), (0, c + 1)))
    got = _send(jnp.where(s == 0, _pack_message(out), up_part), [(0, 1), (1, 0)])
    msg = _unpack_message(got, out)
    # what ppermute gives a device nothing is sent to: zeros (the first stage's inbox,
    # the last stage's target)
    msg = jax.tree.map(lambda a: jnp.where(s == 0, jnp.zeros_like(a), a), msg)
    return msg, jnp.where(s == 1, 0.0, got[:, :w]).astype(g_in.dtype)


def _stage_tree(st: SGState, s: int) -> tuple:
    """Stage s's whole state (θ_s, optimiser state, φ_s, SG optimiser state); φ and its
    optimiser state are empty for the last stage."""
    if s < len(st.params) - 1:
        return (st.params[s], st.opt_state[s], st.sg_params[s], st.sg_opt_state[s])
    return (st.params[s], st.opt_state[s], (), ())


def _stage_layouts(pipe: SGPipeline, batch_size: int) -> tuple[list[Any], dict[str, int]]:
    """The packing layout of every stage's state and the padded sizes (from shapes only)."""
    dummy = jax.eval_shape(lambda: init_sg(pipe, jax.random.key(0), batch_size=batch_size))
    layouts = [_layout(_stage_tree(dummy, s)) for s in range(pipe.net.depth)]
    return layouts, _sizes(layouts)


def _sg_state(trees: list[tuple], outbox: tuple, tick: jax.Array) -> SGState:
    """An :class:`SGState` from the per-stage trees of :func:`_stage_tree`."""
    return SGState(
        tuple(t[0] for t in trees),
        tuple(t[1] for t in trees),
        tuple(t[2] for t in trees[:-1]),
        tuple(t[3] for t in trees[:-1]),
        outbox,
        tick,
    )


def sg_on_mesh(pipe: SGPipeline, mesh: Mesh, *, batch_size: int) -> MeshRunner:
    """Bind the SG pipeline to a 1-D mesh with one device per stage.

    ``runner.run(packed, xs, ys, valid=None)`` advances ``len(xs)`` ticks exactly like
    :func:`sg_reference` (same arguments, same metrics), with stage s on device s.

    Example (with at least two devices; here the mesh mismatch is the point):
        >>> import optax
        >>> from sgjax import nets
        >>> from sgjax.pipeline import make_mesh, sg_pipeline
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
    layouts, sizes = _stage_layouts(pipe, B)

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
            _put_stages([_stage_tree(st, s) for s in range(n)], layouts, sizes, mesh),
            put((shift(h), shift(y), shift(v))),
            put((h, y, v)),
            _put(st.tick, mesh, P()),
        )

    def unpack(pk: PackedSG) -> SGState:
        trees = _get_stages(pk.flat, layouts)
        h, y, v = (_to_host(a) for a in pk.prev)
        outbox = tuple(
            Message(
                jnp.asarray(_crop_h(h[s], net.stages[s].out_shape)),
                jnp.asarray(y[s]),
                jnp.asarray(v[s] > 0.5),
            )
            for s in range(n - 1)
        )
        return _sg_state(trees, outbox, jnp.asarray(_to_host(pk.tick)))

    def forward_branch(s: int) -> Callable:
        def branch(flat: Flat, msg: Message, x: jax.Array):
            theta, opt, phi, sg_opt = _unpack(flat, layouts[s])
            theta, opt, h_out, g_in, loss, acc, ok = _forward_math(
                pipe, s, width, theta, opt, phi, msg, x, sg_opt
            )
            flat = _write(flat, jax.tree.leaves((theta, opt)), layouts[s], 0)
            return flat, h_out, g_in, loss, acc, ok

        return branch

    def sg_branch(s: int) -> Callable:
        def branch(flat: Flat, prev: Message, target: jax.Array):
            if s == n - 1:  # the last stage has the true gradient, no module to train
                return dict(flat), jnp.zeros((), jnp.float32), jnp.ones((), bool)
            theta, opt, phi, sg_opt = _unpack(flat, layouts[s])
            phi, sg_opt, sgl, ok = _sg_math(pipe, s, phi, sg_opt, prev, target)
            start = len(jax.tree.leaves((theta, opt)))
            return _write(flat, jax.tree.leaves((phi, sg_opt)), layouts[s], start), sgl, ok

        return branch

    fwd_branches = [forward_branch(s) for s in range(n)]
    sg_branches = [sg_branch(s) for s in range(n)]

    def exchange(s: jax.Array, out: Message, g_in: jax.Array) -> tuple[Message, jax.Array]:
        return _exchange(n, s, out, g_in)

    def device(flat, inbox, prev, tick, xs, ys, valid):
        s = lax.axis_index(AXIS)
        first = s == 0

        # The tick is reordered, not changed: stage s regresses SG_s onto the target that
        # arrived at the end of the previous tick *first*, then runs its forward, then
        # sends. Stage s's own sequence of operations is the reference's (its SG update
        # still comes before its next forward), but each tick now has one exchange at its
        # end instead of a rendezvous in its middle, so stage s's SG regression overlaps
        # the work of stage s+1 instead of waiting for it. The update still pending at the
        # end of a call is applied after the scan, so calls end in the reference's state.
        def one_tick(carry, inp):
            flat, inbox, prev, pend, pend_target = carry
            x, y, v = inp
            flat, sgl, sg_ok = lax.switch(s, sg_branches, flat, pend, pend_target)
            msg = Message(
                inbox.h,  # stage 0 reads x itself
                jnp.where(first, y, inbox.y),
                jnp.where(first, v.astype(jnp.float32), inbox.valid),
            )
            flat, h_out, g_in, loss, acc, fwd_ok = lax.switch(s, fwd_branches, flat, msg, x)
            out = Message(h_out, msg.y, msg.valid)
            new_inbox, target = exchange(s, out, g_in)
            # the target that just arrived is for `prev` (stage s+1 worked on it this tick)
            return (flat, new_inbox, out, prev, target), (loss, acc, msg.valid, sgl, fwd_ok, sg_ok)

        flat, inbox, prev = jax.tree.map(lambda a: a[0], (flat, inbox, prev))  # device axis
        nothing = prev._replace(valid=jnp.zeros_like(prev.valid))  # no update pending
        carry = (flat, inbox, prev, nothing, jnp.zeros_like(prev.h))
        (flat, inbox, prev, pend, pend_target), (loss, acc, done, sgl, fwd_ok, sg_ok) = lax.scan(
            one_tick, carry, (xs, ys, valid)
        )
        flat, sgl_last, ok_last = lax.switch(s, sg_branches, flat, pend, pend_target)
        # tick t's SG update ran at the start of tick t + 1 (the last one just above)
        sgl = jnp.concatenate([sgl[1:], sgl_last[None]])
        ok = fwd_ok & jnp.concatenate([sg_ok[1:], ok_last[None]])
        add = lambda a: a[None]  # noqa: E731 — the device axis of the outputs
        return (
            jax.tree.map(add, (flat, inbox, prev)),
            tick + xs.shape[0],
            jax.tree.map(add, (loss, acc, done, sgl, ok)),
        )

    spec = P(AXIS)
    mapped = _shard_map(
        device, mesh, (spec, spec, spec, P(), P(), P(), P()), ((spec, spec, spec), P(), spec)
    )

    @jax.jit
    def _run(pk: PackedSG, xs, y_vec, valid):
        (flat, inbox, prev), tick, (loss, acc, done, sgl, ok) = mapped(
            pk.flat, pk.inbox, pk.prev, pk.tick, xs, y_vec, valid
        )
        finished = done[n - 1] > 0.5  # the last stage's view
        metrics = {
            "loss": jnp.where(finished, loss[n - 1], 0.0),
            "accuracy": jnp.where(finished, acc[n - 1], 0.0),
            "done": finished,
            "sg_loss": sgl[: n - 1].T,
            "stage_finite": ok.T,
            "finite": jnp.all(ok, axis=0),
        }
        # Replicated, so that every process can read them (a mesh over several processes).
        return PackedSG(flat, inbox, prev, tick), _replicated(metrics, mesh)

    def run(pk: PackedSG, xs: Any, ys: Any, valid: Any = None):
        return _run(pk, *_global(mesh, *_check_stream(net, B, xs, ys, valid)))

    return MeshRunner(mesh, pack, unpack, run)
