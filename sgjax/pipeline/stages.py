"""The per-stage work of a tick, shared by the reference loop and the mesh runners.

:func:`_stage_vjp` is one stage's forward and the VJP of its error signal (both
pipelines); :class:`SGPipeline` / :func:`sg_pipeline` configure the SG pipeline,
:class:`SGState` / :func:`init_sg` hold its per-stage state, and :func:`_stage_update`
(steps 2–4 of a tick) and :func:`_sg_update` (step 6) are what a stage does in a tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax.infra.config import OptimizerConfig
from sgjax.nets import Network
from sgjax.pipeline.mesh import _check_count
from sgjax.pipeline.packing import _where
from sgjax.sgmodule import SGModule
from sgjax.sgmodule import SGState as ModuleState

Params = Any


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
    are per example), the input gradient (zeros on stage 0: nothing consumes the gradient
    of the network's input, so it is not computed — a fifth of stage 0's work for an
    MLP), and the loss and accuracy (zero but on the last stage).
    """
    if s == 0:
        h_out, vjp_theta = jax.vjp(lambda th: net.stages[0].apply(th, h), theta)

        def vjp(d: jax.Array) -> tuple[Params, jax.Array]:
            return vjp_theta(d)[0], jnp.zeros_like(h)
    else:
        h_out, vjp = jax.vjp(net.stages[s].apply, theta, h)
    if s == net.depth - 1:
        delta = loss.output_grad(h_out, y)
        value, acc = loss.fn(h_out, y), loss_lib.accuracy(h_out, y)
    else:
        delta = signal(h_out)
        value = acc = jnp.zeros((), h_out.dtype)
    g_theta, g_in = vjp(lax.stop_gradient(delta).astype(h_out.dtype))
    return h_out, g_theta, lax.stop_gradient(g_in), value, acc


class Lead(NamedTuple):
    """An SG module's optimiser state when the pipeline leads it (:func:`leading`):
    the optimiser's own state and the last change applied to the module (a regression
    that is skipped — an empty slot, a non-finite update — leaves both as they were)."""

    inner: Any
    last: Any


def leading(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` that also keeps the last update it returned (:class:`Lead`), so that
    a stage can use its SG module one regression step ahead: φ + (φ − φ_prev).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = leading(optax.sgd(0.5))
        >>> u, st = opt.update(jnp.ones(2), opt.init(jnp.zeros(2)))
        >>> st.last.tolist()
        [-0.5, -0.5]
    """

    def init(params: Any) -> Lead:
        return Lead(optimizer.init(params), jax.tree.map(jnp.zeros_like, params))

    def update(grads: Any, state: Lead, params: Any = None) -> tuple[Any, Lead]:
        updates, inner = optimizer.update(grads, state.inner, params)
        return updates, Lead(inner, updates)

    return optax.GradientTransformation(init, update)


class SGPipeline(NamedTuple):
    """What the SG pipeline trains and how: built by :func:`sg_pipeline`.

    ``sg`` is the core's :class:`~sgjax.sgmodule.SGModule` (estimator and optimiser) of
    every stage's SG module: the pipeline regresses and updates its modules with the
    same code as :func:`sgjax.rules.synthetic_gradients`. With ``lead`` (the default),
    stage s uses its module one regression step ahead, φ + (φ − φ_prev) (see
    :func:`sg_pipeline`)."""

    net: Network
    loss: loss_lib.Loss
    optimizer: optax.GradientTransformation
    sg: SGModule
    lead: bool = True

    @property
    def estimator(self) -> est_lib.Estimator:
        """The SG modules' estimator (``sg.estimator``)."""
        return self.sg.estimator


def sg_pipeline(
    net: Network,
    loss: loss_lib.Loss | str = "xent",
    optimizer: optax.GradientTransformation | None = None,
    sg_optimizer: optax.GradientTransformation | None = None,
    *,
    estimator: str | est_lib.Estimator = "conditioned",
    lead: bool = True,
) -> SGPipeline:
    """Configure an SG pipeline: one SG module at the output of every stage but the last.

    Args:
        net: the network; stage s runs on device s.
        loss: a :class:`~sgjax.losses.Loss` or its name.
        optimizer: optax transformation of every stage (default
            :class:`~sgjax.infra.config.OptimizerConfig`'s: Adam at 1e-3).
        sg_optimizer: optax transformation of the SG modules (default: ``optimizer``).
        estimator: the SG module (default: label-conditioned linear, zero-initialised).
        lead: stage s trains with its SG module extrapolated one regression step ahead,
            φ + (φ − φ_prev) (the last change its optimiser applied, :func:`leading`).
            In the pipeline SG_s regresses on micro-batch t − 1 only after stage s has
            used it for micro-batch t — one step later than sequential DNI — and that
            lag alone collapsed learning on MNIST 784-1024×5-10 (test accuracy 0.37
            after 1,000 micro-batches against 0.96 for sequential SG, seed 0; see
            docs/results/pipeline-stability). The extrapolation needs nothing from the
            current tick, so the stages stay update-unlocked. ``False``: the module as
            last regressed. A frozen module (no change) is used as it is either way.

    Example:
        >>> from sgjax import nets
        >>> sg_pipeline(nets.mlp([4, 8, 2])).estimator.name
        'conditioned'
    """
    if not isinstance(net, Network):
        raise TypeError(f"sg_pipeline: `net` must be a sgjax.nets.Network, got {type(net)}")
    optimizer = OptimizerConfig().build() if optimizer is None else optimizer
    sg_opt = optimizer if sg_optimizer is None else sg_optimizer
    module = SGModule(est_lib.get(estimator), leading(sg_opt) if lead else sg_opt)
    return SGPipeline(net, loss_lib.get(loss), optimizer, module, bool(lead))


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
    modules = tuple(
        pipe.sg.init(keys[s], net.stages[s].out_shape, net.out_dim, dtype) for s in hidden
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
        sg_params=tuple(m.params for m in modules),
        sg_opt_state=tuple(m.opt_state for m in modules),
        outbox=outbox,
        tick=jnp.zeros((), jnp.int32),
    )


def _all_finite(tree: Any) -> jax.Array:
    """Whether every value of every leaf is finite (one reduction per leaf)."""
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        total = total + jnp.sum(x * 0, dtype=jnp.float32)  # NaN iff some x is NaN or ±inf
    return total == 0


def _stage_update(
    pipe: SGPipeline, s: int, theta: Params, opt: Any, phi: Params, msg: Message, sg_opt: Any = ()
) -> tuple[Params, Any, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Steps 2–4 of a tick on stage s: forward, signal, immediate update of θ_s.

    The signal is SG_s with parameters ``phi`` — led one step ahead by the last change in
    ``sg_opt`` when ``pipe.lead``. The non-finite guard of the single-device step
    (:func:`sgjax.train.make_step`), per stage: an update whose loss (last stage),
    gradient or new parameters are not finite is not applied, and the last output,
    ``ok``, is False (it is True on an empty slot).
    """
    if isinstance(sg_opt, Lead):  # pipe.lead: its SG optimiser keeps the last change
        phi = jax.tree.map(lambda p, d: p + d.astype(p.dtype), phi, sg_opt.last)
    h_out, g_theta, g_in, loss, acc = _stage_vjp(
        pipe.net, pipe.loss, s, theta, msg.h, msg.y, lambda h: pipe.sg.signal(phi, h, msg.y)
    )
    g_theta = jax.tree.map(lambda g: g / msg.h.shape[0], g_theta)  # batch-mean loss
    updates, new_opt = pipe.optimizer.update(g_theta, opt, theta)
    new_theta = optax.apply_updates(theta, updates)
    finite = jnp.isfinite(loss) & _all_finite((g_theta, new_theta))
    theta, opt = _where(msg.valid & finite, (new_theta, new_opt), (theta, opt))
    return theta, opt, h_out, g_in, loss, acc, finite | ~msg.valid


def _sg_update(
    pipe: SGPipeline, phi: Params, sg_opt: Any, prev: Message, target: jax.Array
) -> tuple[Params, Any, jax.Array, jax.Array]:
    """Step 6: regress SG_s at last tick's (h, y) onto the target stage s+1 returned and
    update it (:meth:`sgjax.sgmodule.SGModule.step`; not applied when non-finite; the
    last output says whether it was finite)."""
    new, reg = pipe.sg.step(ModuleState(phi, sg_opt), prev.h, prev.y, target)
    value, g, new_phi, new_opt = reg.loss, reg.grad_params, new.params, new.opt_state
    finite = jnp.isfinite(value) & _all_finite((g, new_phi))  # the guard, as for θ_s
    phi, sg_opt = _where(prev.valid & finite, (new_phi, new_opt), (phi, sg_opt))
    return phi, sg_opt, jnp.where(prev.valid, value, 0.0), finite | ~prev.valid


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
