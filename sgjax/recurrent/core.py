"""Truncated BPTT over windows of T steps, with a synthetic gradient at each window boundary.

The mechanism (Jaderberg et al. 2017, §3.1; design.md "Recurrent DNI"). A sequence of L
steps is cut into K = ⌈L/T⌉ windows. Window k starts from the carried state s_k
(stop-gradiented: nothing flows back into window k − 1), runs the cell over its T steps
with ``lax.scan`` and ends in s_{k+1}. With ℓ_k the window's loss (sum over its steps of
the per-step loss, mean over the batch), one jitted *window step* takes the gradient of

    ℓ_k + ⟨stop_grad(SG(s_{k+1}, c_{k+1})), s_{k+1}⟩ / B

with respect to the model and updates it. The second term *injects* the boundary SG —
the module's estimate of the per-example gradient of all future windows' loss with
respect to s_{k+1} — at the window's end, so the window is trained as if it saw the
future. The carried state s_k passes through a **backward interface**: identity forward;
its backward receives the cotangent g arriving at s_k (the window loss's gradient plus
the injected SG of the next boundary backpropagated through the window — the DNI
paper's bootstrapped target, scaled ×B to per-example units) and hands the SG module the
gradient of ``mean_b ‖SG(s_k, c_k)_b − stop_grad(B·g_b)‖²`` (the regression loss of
:func:`sgjax.rules.synthetic_gradients`). One ``jax.grad`` gives both.

====================  ================================  ===========================
method                injected at the window end        SG trained
====================  ================================  ===========================
``bptt``              nothing (plain truncated BPTT)    —
``dni``               SG(s_{k+1}, c_{k+1})              onto the bootstrapped target
``dni_aux``           as ``dni``; every in-window       as ``dni``
                      state also predicts that SG
                      (auxiliary loss into the core)
====================  ================================  ===========================

Full BPTT is ``bptt`` with ``window`` equal to the (padded) sequence length — the same
harness. Conditioned DNI (cDNI) passes a per-step context (``ctx``, width
``context_dim``) to the SG module; the boundary k reads the context of step kT.

Conventions: ``x`` is time-major ``(L, B, in_dim)``; ``y`` is ``(L, B)`` integer classes
(``loss="xent"``) or ``(L, B, out_dim)`` bits (``loss="bits"``); ``m`` is a ``(L, B)``
0/1 mask on the per-step loss. The first boundary of a fresh sequence (the initial zero
state, which no parameter produced) does not train the SG (``sg_weight`` 0), and the
last window of a finite sequence injects nothing (``inject`` 0): there is no future.

The window step (:func:`make_step`) is pure, like :func:`sgjax.train.make_step`:
``step(state, window) -> (state, metrics)``, the carried state in ``state.carry``. Inside
``jit`` it refuses (returns the state unchanged, carry and step counter included) an update
whose loss, gradients, new parameters or new carry are not finite (``metrics["finite"]``
false) and a window whose unmasked labels lie outside the classes (``metrics
["bad_labels"]`` > 0); :func:`sgjax.train.check_step` raises on both. Shapes are checked
when it is traced. The carried state may be any pytree (see :mod:`sgjax.recurrent.cells`).

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from sgjax.recurrent import cells, core
    >>> model = core.Model(cells.vanilla(8), in_dim=3, out_dim=3, loss="xent")
    >>> h = core.harness(model, window=4, method="dni")
    >>> state = core.init(h, jax.random.key(0), optax.sgd(0.1), batch=2)
    >>> step = jax.jit(core.make_step(h, optax.sgd(0.1)))
    >>> x = jnp.ones((12, 2, 3)); y = jnp.zeros((12, 2), int)
    >>> for win in core.windows(h, x, y):  # three windows, one compilation
    ...     state, metrics = step(state, win)
    >>> int(state.step), bool(metrics["finite"]), int(metrics["bad_labels"])
    (3, True, 0)

Size: over 600 lines (the harness and its stabilising options, the window, the pure step,
the shape checks, the sequence driver and the full-BPTT references). The references
(:func:`boundary_states_and_gradients`, :func:`sg_cosines`, :func:`make_evaluator`) depend
on the window and the checks and nothing depends on them, so they are the piece to move
into a module of their own; the checks use :func:`initial_carry` and the harness, which
keeps them here until the harness has its own module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import estimators as est_lib
from sgjax import interface
from sgjax import train as train_lib
from sgjax.recurrent.cells import Cell

Params = Any
METHODS = ("bptt", "dni", "dni_aux")
LOSSES = ("xent", "bits")


class Model(NamedTuple):
    """A cell with a linear readout and a per-step loss (``"xent"`` or ``"bits"``)."""

    cell: Cell
    in_dim: int
    out_dim: int
    loss: str = "xent"


class Harness(NamedTuple):
    """What a window step needs: the model, the window length T, the method, the SG."""

    model: Model
    window: int
    method: str
    sg: est_lib.Estimator | None
    context_dim: int
    aux_weight: float
    decay: float = 1.0
    sg_dims: int = 0
    sg_squash: bool = False
    inject_clip: float = 0.0
    warmup: int = 0
    target_tau: float = 0.0

    @property
    def sg_width(self) -> int:
        """How many leading entries of the flat state the SG reads and predicts."""
        return self.sg_dims or self.model.cell.state_dim


class Window(NamedTuple):
    """One window's data: ``x (T,B,I)``, ``y``, ``m (T,B)``, contexts of its two
    boundaries ``c0``/``c1`` ``(B, max(context_dim, 1))``, and the scalars ``inject`` (1:
    inject the SG at the end) and ``sg_weight`` (1: train the SG at the start)."""

    x: Any
    y: Any
    m: Any
    c0: Any
    c1: Any
    inject: Any
    sg_weight: Any


class WindowOut(NamedTuple):
    """:func:`window_grads`' result. ``target`` is the bootstrapped per-example target at
    the window's first state; ``sg_start`` the SG's prediction there."""

    grads: Params
    sg_grads: Params
    s_end: Any
    target: jax.Array
    sg_start: jax.Array
    loss: jax.Array
    sg_loss: jax.Array
    aux_loss: jax.Array


class TrainState(NamedTuple):
    """Parameters and optimiser states of the model and the SG, the number of applied
    window updates, ``carry``: the recurrent state carried into the next window (any
    pytree of ``(batch, ...)`` arrays; ``None`` until a batch size is known), and
    ``sg_target``: the slowly updated copy of the SG that is injected (``None`` unless the
    harness has ``target_tau > 0``)."""

    params: Params
    sg_params: Params
    opt_state: Any
    sg_opt_state: Any
    step: jax.Array
    carry: Any = None
    sg_target: Params = None


# ------------------------------------------------------------------------- construction


def harness(
    model: Model,
    *,
    window: int,
    method: str = "dni",
    sg: str | est_lib.Estimator | None = None,
    context_dim: int = 0,
    aux_weight: float = 0.1,
    decay: float = 1.0,
    sg_dims: int = 0,
    sg_squash: bool = False,
    inject_clip: float = 0.0,
    warmup: int = 0,
    target_tau: float = 0.0,
) -> Harness:
    """Validate and bundle the choices of a truncated-BPTT run.

    Args:
        model: the :class:`Model`.
        window: T ≥ 1, the truncation length.
        method: ``"bptt"``, ``"dni"`` or ``"dni_aux"``.
        sg: the boundary SG module (default ``"linear"``, ``hA + C``; with
            ``context_dim > 0`` default ``"conditioned"``, ``hA + cB + C`` — cDNI).
            Ignored for ``bptt``.
        context_dim: width of the per-step context the SG reads (0: none).
        aux_weight: weight of the DNI+Aux auxiliary loss.
        decay: γ ∈ (0, 1], multiplying the injected SG. γ = 1 (the default, the paper's
            bootstrapping) makes the SG estimate the gradient of all future loss; γ < 1
            makes it estimate the γ-discounted sum over future windows (the target is
            the window's gradient plus γ × the next SG backpropagated), which stays
            bounded on an endless stream (see the report of ``dni-rnn``).
        sg_dims: the SG reads and predicts only the first ``sg_dims`` entries of the
            (flat) state; the rest of the boundary state gets no synthetic gradient
            (0, the default: the whole state). For the built-in LSTM (state ``[h, c]``)
            ``sg_dims=hidden`` is an SG on h alone: nothing pushes the unbounded cell
            state c directly.
        sg_squash: the SG reads ``tanh`` of the state (a bounded input) instead of the
            state; it still predicts the gradient with respect to the state.
        inject_clip: > 0 clips the injected SG to this ℓ2 norm per example (0: no clip).
        warmup: the injected SG (and with it the bootstrap) is scaled by
            ``min(1, step / warmup)``: it ramps in over the first ``warmup`` window
            updates while the SG learns (0: no warm-up).
        target_tau: > 0 injects (and bootstraps from) a slowly updated copy of the SG
            module, ``θ̄ ← θ̄ + τ (θ − θ̄)`` after every update (a target network); the
            regression still trains θ (0: inject θ itself).

    Example:
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.lstm(4), 2, 2), window=3, method="dni_aux")
        >>> h.sg.name, h.window
        ('linear', 3)
    """
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a sgjax.recurrent.core.Model, got {type(model)}")
    if model.loss not in LOSSES:
        raise ValueError(f"`model.loss` must be one of {LOSSES}, got {model.loss!r}")
    if not isinstance(window, int | np.integer) or isinstance(window, bool) or window < 1:
        raise ValueError(f"`window` (T) must be an int ≥ 1, got {window!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    if not isinstance(context_dim, int) or context_dim < 0:
        raise ValueError(f"`context_dim` must be an int ≥ 0, got {context_dim!r}")
    if not aux_weight >= 0:
        raise ValueError(f"`aux_weight` must be ≥ 0, got {aux_weight!r}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"`decay` (γ) must be in (0, 1], got {decay!r}")
    S = model.cell.state_dim
    if (
        not isinstance(sg_dims, int | np.integer)
        or isinstance(sg_dims, bool)
        or not (0 <= sg_dims <= S)
    ):
        raise ValueError(
            f"`sg_dims` must be an int in [0, state_dim={S}] (0: the whole state), got {sg_dims!r}"
        )
    if not inject_clip >= 0:
        raise ValueError(f"`inject_clip` must be ≥ 0 (0: no clip), got {inject_clip!r}")
    if not isinstance(warmup, int | np.integer) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"`warmup` must be an int ≥ 0 (window updates), got {warmup!r}")
    if not 0.0 <= target_tau <= 1.0:
        raise ValueError(
            f"`target_tau` must be in [0, 1] (0: no target network), got {target_tau!r}"
        )
    estimator = None
    if method != "bptt":
        estimator = est_lib.get(sg or ("conditioned" if context_dim else "linear"))
    return Harness(
        model,
        int(window),
        method,
        estimator,
        context_dim,
        float(aux_weight),
        float(decay),
        int(sg_dims),
        bool(sg_squash),
        float(inject_clip),
        int(warmup),
        float(target_tau),
    )


def init_params(
    model: Model, key: jax.Array, dtype=jnp.float32, aux: bool = False, aux_dim: int = 0
) -> Params:
    """Cell parameters, a Glorot readout, and (``aux``) a zero-initialised aux head from the
    state to the SG's ``aux_dim`` outputs (default: the whole state)."""
    kc, ko = jax.random.split(key)
    H, S = model.cell.out_dim, model.cell.state_dim
    params = {
        "cell": model.cell.init(kc, model.in_dim, dtype),
        "out": {
            "W": jax.nn.initializers.glorot_uniform()(ko, (H, model.out_dim), dtype),
            "b": jnp.zeros((model.out_dim,), dtype),
        },
    }
    if aux:
        A = aux_dim or S
        params["aux"] = {"W": jnp.zeros((S, A), dtype), "b": jnp.zeros((A,), dtype)}
    return params


def init(
    h: Harness,
    key: jax.Array,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
    dtype=jnp.float32,
    *,
    batch: int | None = None,
) -> TrainState:
    """A fresh :class:`TrainState` (the SG module zero-initialised, as every estimator is),
    with the initial carry of ``batch`` sequences if ``batch`` is given (else ``None``).

    Example:
        >>> import jax, optax
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.vanilla(4), 2, 2), window=2)
        >>> sorted(init(h, jax.random.key(0), optax.sgd(0.1)).sg_params)
        ['A', 'C']
    """
    km, ks = jax.random.split(key)
    params = init_params(h.model, km, dtype, aux=h.method == "dni_aux", aux_dim=h.sg_width)
    sg_params = None
    if h.sg is not None:
        sg_params = h.sg.init(ks, (h.sg_width,), max(h.context_dim, 1), dtype)
    sg_opt = sg_optimizer or optimizer
    return TrainState(
        params,
        sg_params,
        optimizer.init(params),
        sg_opt.init(sg_params) if sg_params is not None else None,
        jnp.zeros((), jnp.int32),
        None if batch is None else initial_carry(h, batch, dtype),
        sg_params if h.target_tau > 0 and sg_params is not None else None,
    )


def initial_carry(h: Harness, batch: int, dtype=jnp.float32) -> Any:
    """The cell's initial state for ``batch`` sequences: ``cell.init_state(batch, dtype)``,
    or the zero ``(batch, state_dim)`` array for a cell without one."""
    if not isinstance(batch, int | np.integer) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"`batch` must be an int ≥ 1, got {batch!r}")
    cell = h.model.cell
    if cell.init_state is not None:
        return cell.init_state(int(batch), dtype)
    return jnp.zeros((batch, cell.state_dim), dtype)


def flat_state(s: Any) -> jax.Array:
    """A state pytree as one ``(batch, state_dim)`` array: its leaves, each flattened per
    example, concatenated in ``jax.tree`` order (an array state is returned as it is)."""
    leaves = jax.tree.leaves(s)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 2:
        return leaves[0]
    return jnp.concatenate([jnp.reshape(v, (jnp.shape(v)[0], -1)) for v in leaves], axis=-1)


def unflat_state(like: Any, flat: jax.Array) -> Any:
    """Inverse of :func:`flat_state`: ``flat`` cut back into the structure of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 2:
        return jax.tree.unflatten(treedef, [flat])
    out, at = [], 0
    for v in leaves:
        width = int(np.prod(jnp.shape(v)[1:], dtype=np.int64))
        out.append(jnp.reshape(flat[:, at : at + width], jnp.shape(v)))
        at += width
    return jax.tree.unflatten(treedef, out)


def state_sg_interface(s: Any, sg_params: Params, context: Any = None, **kwargs: Any) -> Any:
    """:func:`sgjax.interface.sg_interface` on a state pytree (an ``(h, c)`` tuple): the SG
    module reads and predicts the gradient of :func:`flat_state` ``(s)``; each leaf
    receives its part. Keyword arguments go to ``sg_interface``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import estimators
        >>> s = (jnp.ones((2, 1)), jnp.ones((2, 2)))
        >>> th = {"A": jnp.zeros((3, 3)), "C": jnp.array([1.0, 2.0, 3.0])}
        >>> g = jax.grad(lambda s: jnp.sum(state_sg_interface(s, th, None,
        ...     estimator=estimators.linear())[0]))(s)
        >>> g[0].tolist(), g[1].tolist()  # SG (1, 2, 3) per example, over a batch of 2
        ([[0.5], [0.5]], [[1.0, 1.5], [1.0, 1.5]])
    """
    flat = interface.sg_interface(flat_state(s), sg_params, context, **kwargs)
    return unflat_state(s, flat)


# ------------------------------------------------------------------------------ forward


def step_loss(loss: str, logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example loss of one step, ``(B,)``: softmax cross-entropy (``xent``, integer
    ``y``) or the summed sigmoid cross-entropy of ``out_dim`` bits (``bits``), in nats."""
    if loss == "xent":  # (labels are clipped: an out-of-range one must be masked or refused)
        logp = jax.nn.log_softmax(logits, axis=-1)
        yi = jnp.clip(y.astype(jnp.int32), 0, logits.shape[-1] - 1)
        return -jnp.take_along_axis(logp, yi[:, None], axis=-1)[:, 0]
    y = y.astype(logits.dtype)
    return jnp.sum(jax.nn.softplus(logits) - y * logits, axis=-1)


def unroll(
    model: Model, params: Params, s0: Any, x: jax.Array, y: jax.Array, m: jax.Array
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """``lax.scan`` of the cell over a window: ``(s_T, states (T, …), losses (T,B),
    logits (T,B,O))``; losses already multiplied by the mask."""
    W, b = params["out"]["W"], params["out"]["b"]

    def body(s, inp):
        xt, yt, mt = inp
        s, out = model.cell.apply(params["cell"], s, xt)
        logits = out @ W + b
        return s, (s, step_loss(model.loss, logits, yt) * mt, logits)

    s_T, (states, losses, logits) = jax.lax.scan(body, s0, (x, y, m))
    return s_T, states, losses, logits


def window_loss(
    model: Model, params: Params, s0: Any, x: jax.Array, y: jax.Array, m: jax.Array
) -> tuple[jax.Array, tuple[Any, Any]]:
    """ℓ = Σ_t mean_b m_tb ℓ_tb over the window, with ``(s_T, states)``."""
    s_T, states, losses, _ = unroll(model, params, s0, x, y, m)
    return jnp.sum(losses) / x.shape[1], (s_T, states)


# ---------------------------------------------------------------------------- the window


def sg_input(h: Harness, flat: jax.Array) -> jax.Array:
    """What the boundary SG reads of a flat ``(batch, state_dim)`` state: its first
    :attr:`Harness.sg_width` entries, through ``tanh`` if ``h.sg_squash``."""
    v = flat[:, : h.sg_width]
    return jnp.tanh(v) if h.sg_squash else v


def _clip_rows(d: jax.Array, limit: float) -> jax.Array:
    norm = jnp.linalg.norm(d, axis=-1, keepdims=True)
    return d * jnp.minimum(1.0, limit / jnp.maximum(norm, jnp.finfo(d.dtype).tiny))


def window_grads(
    h: Harness,
    params: Params,
    sg_params: Params,
    carry: Any,
    win: Window,
    delta_next: jax.Array | None = None,
    sg_target: Params = None,
) -> WindowOut:
    """Gradients of one window (see the module docstring); pure, jit-able.

    ``delta_next`` replaces ``SG(s_T, c_T)`` as the injected per-example gradient (an
    oracle, for tests); it is still multiplied by ``win.inject``. ``sg_target``: the SG
    parameters to inject (a target network; default ``sg_params``).
    The carry may be any pytree of the cell's state; the SG, ``delta_next``, ``target``
    and ``sg_start`` live on the first :attr:`Harness.sg_width` entries of its
    :func:`flat_state` ``(batch, state_dim)``.

    The SG's regression is :func:`sgjax.estimators.regress` (the one place an SG is
    regressed): SG(s_k, c_k) onto the cotangent arriving at the window's first state
    (the bootstrapped target, ×B to per-example units).
    """
    model = h.model
    flat0 = flat_state(carry)
    batch = flat0.shape[0]
    k = h.sg_width
    sg = h.sg if h.sg is not None else est_lib.linear()  # (unused without an SG)
    uses_sg = h.sg is not None
    theta_inject = sg_params if sg_target is None else sg_target

    def surrogate(params, eps):
        s = jax.lax.stop_gradient(flat0) + eps  # ∂/∂eps: the cotangent arriving at s_k
        loss, (s_T, states) = window_loss(
            model, params, unflat_state(carry, s), win.x, win.y, win.m
        )
        total, aux_loss = loss, jnp.zeros((), loss.dtype)
        if uses_sg or delta_next is not None:
            f_T = flat_state(s_T)[:, :k]
            if delta_next is not None:
                d = delta_next
            else:
                d = sg.apply(theta_inject, sg_input(h, flat_state(s_T)), win.c1)
            d = jax.lax.stop_gradient(d) * (win.inject * h.decay)
            if h.inject_clip > 0:
                d = _clip_rows(d, h.inject_clip)
            total = total + jnp.sum(d * f_T) / batch
            if h.method == "dni_aux":
                st = jax.vmap(flat_state)(states)
                pred = st @ params["aux"]["W"] + params["aux"]["b"]
                aux_loss = jnp.mean(jnp.sum(jnp.square(pred - d[None]), axis=-1))
                total = total + h.aux_weight * aux_loss
        return total, (loss, s_T, aux_loss)

    eps = jnp.zeros_like(flat0)
    grad_fn = jax.grad(surrogate, argnums=(0, 1), has_aux=True)
    (g_params, g_eps), (loss, s_T, aux_loss) = grad_fn(params, eps)
    target = g_eps[:, :k] * batch
    if uses_sg:
        reg = est_lib.regress(sg, sg_params, sg_input(h, flat0), win.c0, target)
        # the first boundary of a fresh sequence (no parameter made it) does not train the SG
        g_theta = jax.tree.map(lambda a: (a * win.sg_weight).astype(a.dtype), reg.grad_params)
        sg_start, sg_loss = reg.s, reg.loss
    else:
        g_theta = None
        sg_start = jnp.zeros_like(target)
        sg_loss = jnp.zeros((), loss.dtype)
    return WindowOut(g_params, g_theta, s_T, target, sg_start, loss, sg_loss, aux_loss)


WindowStep = Callable[[TrainState, Window], tuple[TrainState, dict]]
"""The type of a window step: ``step(state, window) -> (state, metrics)``."""


def _finite(*trees: Any) -> jax.Array:
    ok = jnp.ones((), bool)
    for leaf in jax.tree.leaves(trees):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def count_bad_labels(h: Harness, y: Any, m: Any) -> jax.Array:
    """How many unmasked targets of a window are out of range: integer classes outside
    ``[0, out_dim)`` (``loss="xent"``), bits outside ``[0, 1]`` (``loss="bits"``).
    Masked steps (``m == 0``, padding) may hold anything."""
    y, live = jnp.asarray(y), jnp.asarray(m) != 0
    if h.model.loss == "xent":
        bad = (y < 0) | (y >= h.model.out_dim)
    else:
        bad = jnp.any(~((y >= 0) & (y <= 1)), axis=-1)
    return jnp.sum(bad & live, dtype=jnp.int32)


def make_step(
    h: Harness,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
) -> WindowStep:
    """The pure window step ``step(state, window) -> (state, metrics)`` of ``h`` (model
    with ``optimizer``, SG with ``sg_optimizer``, default the same); jit it, vmap it.

    It trains on one :class:`Window` from ``state.carry`` and returns the state with the
    window's last state as the new ``carry``. Shapes (the carry against the window, the
    SG module against the state) are checked when it is traced: ``ValueError`` naming
    the argument. The update is refused — the state returned unchanged, carry and
    ``step`` included — when the loss, a gradient, a new parameter, optimiser state or
    the new carry is not finite, or an unmasked target is out of range.

    Metrics: ``loss`` (nats, summed over the window's steps, mean over the batch),
    ``count`` (unmasked steps), ``sg_loss``, ``aux_loss``, ``finite``, ``bad_labels``
    (see :func:`count_bad_labels`). :func:`sgjax.train.check_step` raises on a refusal.
    Example: see the module docstring.
    """
    sg_opt = sg_optimizer or optimizer

    def step(state: TrainState, win: Window) -> tuple[TrainState, dict]:
        check_window(h, state.carry, win)
        flat = flat_state(state.carry)
        check_sg_params(h, state.sg_params, flat.shape[0], flat.dtype)
        bad_labels = count_bad_labels(h, win.y, win.m)
        if h.warmup > 0:  # the injected SG ramps in while the SG learns
            ramp = jnp.minimum(1.0, state.step.astype(win.x.dtype) / h.warmup)
            win = win._replace(inject=win.inject * ramp)
        out = window_grads(
            h, state.params, state.sg_params, state.carry, win, sg_target=state.sg_target
        )
        upd, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, upd)
        sg_params, sg_opt_state = state.sg_params, state.sg_opt_state
        if h.sg is not None:
            sg_upd, sg_opt_state = sg_opt.update(out.sg_grads, sg_opt_state, sg_params)
            sg_params = optax.apply_updates(sg_params, sg_upd)
        s_end = jax.lax.stop_gradient(out.s_end)
        sg_target = state.sg_target
        if sg_target is not None:  # the target network follows the SG slowly
            sg_target = optax.incremental_update(sg_params, sg_target, h.target_tau)
        new = TrainState(
            params, sg_params, opt_state, sg_opt_state, state.step + 1, s_end, sg_target
        )
        finite = jnp.isfinite(out.loss) & _finite(out.grads, out.sg_grads, new)
        apply = finite & (bad_labels == 0)
        # a select per leaf, as in sgjax.train.make_step (XLA fuses it into the update)
        new = jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, state)
        metrics = {
            "loss": out.loss,
            "count": jnp.sum(win.m),
            "sg_loss": out.sg_loss,
            "aux_loss": out.aux_loss,
            "finite": finite,
            "bad_labels": bad_labels,
        }
        return new, metrics

    return step


def make_window_step(
    h: Harness,
    optimizer: optax.GradientTransformation,
    sg_optimizer: optax.GradientTransformation | None = None,
) -> WindowStep:
    """``jax.jit(make_step(h, optimizer, sg_optimizer))``: the jitted pure window step."""
    return jax.jit(make_step(h, optimizer, sg_optimizer))


# ------------------------------------------------------------------------------ checking


def check_sg_params(h: Harness, sg_params: Params, batch: int = 1, dtype=jnp.float32) -> None:
    """Raise ``ValueError`` unless the SG module maps what it reads of a state (``(batch,
    sg_width)``, see :func:`sg_input`) to an array of the same shape with these parameters."""
    if h.sg is None:
        return
    S = h.sg_width
    what = f"state_dim {S}" if not h.sg_dims else f"sg_dims {S}"
    s = jax.ShapeDtypeStruct((batch, S), dtype)
    c = jax.ShapeDtypeStruct((batch, max(h.context_dim, 1)), dtype)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), sg_params
    )
    try:
        out = jax.eval_shape(h.sg.apply, abstract, s, c)
    except Exception as e:  # re-raised with the shapes that matter
        raise ValueError(
            f"`sg_params`: the SG module {h.sg.name!r} cannot be applied to the cell's state "
            f"({what} of cell {h.model.cell.name!r}, context width "
            f"{max(h.context_dim, 1)}): {type(e).__name__}: {e}. Initialise it with "
            "`core.init(h, ...)` for this harness."
        ) from None
    if tuple(out.shape) != (batch, S):
        raise ValueError(
            f"`sg_params`: the SG module {h.sg.name!r} returns shape {tuple(out.shape)} for a "
            f"state of shape {(batch, S)} (cell {h.model.cell.name!r}, {what}); a "
            "synthetic gradient must have the state's shape."
        )


def check_window(h: Harness, carry: Any, win: Window) -> None:
    """Shape checks of one window and the carry it starts from (``ValueError`` naming the
    argument); works on traced arrays."""
    T, I = h.window, h.model.in_dim
    if np.ndim(win.x) != 3 or np.shape(win.x)[::2] != (T, I):
        raise ValueError(f"`x` window: expected shape (T={T}, batch, {I}), got {np.shape(win.x)}")
    B = np.shape(win.x)[1]
    if carry is None:
        raise ValueError(
            "`carry` (state.carry) is None: start from `core.init(..., batch=B)` or "
            "`state._replace(carry=core.initial_carry(h, B))`"
        )
    want = jax.eval_shape(lambda: initial_carry(h, B))
    got_leaves, got_def = jax.tree.flatten(carry)
    want_leaves, want_def = jax.tree.flatten(want)
    if str(got_def) != str(want_def):  # (PyTreeDef has no typed __ne__)
        raise ValueError(
            f"`carry`: expected the structure of the cell's state {want_def} (cell "
            f"{h.model.cell.name!r}), got {got_def}"
        )
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        name = "`carry`" if len(want_leaves) == 1 else f"`carry` leaf {i}"
        if np.ndim(g) >= 1 and np.shape(g)[0] != B and np.shape(g)[1:] == w.shape[1:]:
            raise ValueError(
                f"{name}: batch {np.shape(g)[0]}, but the window's `x` has batch {B}; a "
                "carry belongs to the batch of streams that produced it (start a batch of "
                f"another size from `core.initial_carry(h, {B})`)"
            )
        if np.shape(g) != w.shape:
            raise ValueError(
                f"{name}: expected shape {w.shape} (batch {B}, cell {h.model.cell.name!r} with "
                f"state_dim {h.model.cell.state_dim}), got {np.shape(g)}"
            )
    width = sum(int(np.prod(w.shape[1:], dtype=np.int64)) for w in want_leaves)
    if width != h.model.cell.state_dim:
        raise ValueError(
            f"cell {h.model.cell.name!r}: its `init_state` has {width} numbers per example, "
            f"but its `state_dim` is {h.model.cell.state_dim}"
        )
    y_shape = (T, B) if h.model.loss == "xent" else (T, B, h.model.out_dim)
    if np.shape(win.y) != y_shape:
        raise ValueError(f"`y` window: expected shape {y_shape}, got {np.shape(win.y)}")
    if np.shape(win.m) != (T, B):
        raise ValueError(f"`m` window: expected shape {(T, B)}, got {np.shape(win.m)}")
    C = max(h.context_dim, 1)
    for name in ("c0", "c1"):
        if np.shape(getattr(win, name)) != (B, C):
            raise ValueError(
                f"`{name}`: expected shape (B={B}, {C}), got {np.shape(getattr(win, name))}"
            )


def check_sequence(
    h: Harness, x: Any, y: Any, m: Any = None, ctx: Any = None, *, pad: bool = True
) -> tuple[int, int]:
    """Validate a time-major sequence for ``h``; returns ``(L, B)``.

    Example:
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.vanilla(2), 3, 3), window=5)
        >>> check_sequence(h, np.zeros((4, 2, 3)), np.zeros((4, 2), int))
        Traceback (most recent call last):
        ...
        ValueError: `window` (T=5) is longer than the sequence (`x` has length 4)
    """
    I = h.model.in_dim
    if np.ndim(x) != 3:
        raise ValueError(
            f"`x`: expected a time-major (length, batch, {I}) array, got {np.shape(x)}"
        )
    L, B, feat = np.shape(x)
    if feat != I:
        raise ValueError(f"`x`: expected {I} features (model.in_dim) on the last axis, got {feat}")
    if L < 1 or B < 1:
        raise ValueError(f"`x`: length and batch must be ≥ 1, got shape {np.shape(x)}")
    if h.window > L:
        raise ValueError(
            f"`window` (T={h.window}) is longer than the sequence (`x` has length {L})"
        )
    if not pad and L % h.window:
        raise ValueError(f"`x`: length {L} is not a multiple of `window` (T={h.window})")
    y_shape = (L, B) if h.model.loss == "xent" else (L, B, h.model.out_dim)
    if np.shape(y) != y_shape:
        raise ValueError(
            f"`y`: expected shape {y_shape} (loss {h.model.loss!r}), got {np.shape(y)}"
        )
    if m is not None and np.shape(m) != (L, B):
        raise ValueError(f"`m`: expected shape {(L, B)}, got {np.shape(m)}")
    if h.context_dim:
        if ctx is None or np.shape(ctx) != (L, B, h.context_dim):
            got = None if ctx is None else np.shape(ctx)
            raise ValueError(
                f"`ctx`: the harness has context_dim={h.context_dim}, so a context of shape "
                f"{(L, B, h.context_dim)} is required, got {got}"
            )
    elif ctx is not None:
        raise ValueError("`ctx`: given, but the harness has context_dim=0")
    return L, B


# ---------------------------------------------------------------------------- sequences


GAMMA_ADVICE = (
    "recurrent DNI with decay γ = 1 (the harness default) on a stream that does not end "
    "(`last=False`): with γ = 1 the SG regresses onto the sum of all future gradients, which "
    "an endless stream does not bound, and the linear SG on the LSTM state feeds back on "
    "itself (DNI-8 on Tiny Shakespeare, 3M characters: 4 of 5 seeds collapsed above the "
    "bigram level, docs/results/dni-rnn-lm). Pass `core.harness(..., decay=0.5, "
    "inject_clip=1.0)` (0 of 5 collapsed); finite sequences (Copy, `last=True`) may keep γ = 1."
)
CLIP_ADVICE = (
    "recurrent DNI with an unclipped injected SG (`inject_clip=0`) on a stream that does not "
    "end (`last=False`): with γ = 0.5 alone 1 of 5 seeds of DNI-8 on Tiny Shakespeare "
    "collapsed (3M characters, docs/results/dni-rnn-lm); clipping the injected SG to norm 1 "
    "per example (`core.harness(..., inject_clip=1.0)`) collapsed none and kept BPTT's BPC."
)


def windows(
    h: Harness,
    x: Any,
    y: Any,
    m: Any = None,
    ctx: Any = None,
    *,
    first: bool = True,
    last: bool = True,
    next_ctx: Any = None,
) -> list[Window]:
    """Cut a sequence into padded windows (numpy, so slicing costs no dispatch).

    ``first``: the sequence starts from an initial state (its first boundary does not
    train the SG). ``last``: nothing follows it (its last window injects no SG).
    ``next_ctx`` ``(B, context_dim)``: context of the boundary after the sequence.

    Warns (``UserWarning``) when a DNI harness meets a sequence that goes on
    (``last=False``, an endless stream such as a character LM) with γ = 1 (``decay=1.0``,
    the default; :data:`GAMMA_ADVICE`) or without a clip on the injected SG
    (:data:`CLIP_ADVICE`): both collapsed on some seeds of the LM.
    """
    L, B = check_sequence(h, x, y, m, ctx)
    if not last and h.sg is not None and h.decay >= 1.0:
        warnings.warn(GAMMA_ADVICE, UserWarning, stacklevel=2)
    elif not last and h.sg is not None and h.inject_clip == 0:
        warnings.warn(CLIP_ADVICE, UserWarning, stacklevel=2)
    T = h.window
    K = -(-L // T)
    P = K * T - L
    x = np.asarray(x)
    y = np.asarray(y)
    m = np.ones((L, B), x.dtype) if m is None else np.asarray(m, x.dtype)
    C = max(h.context_dim, 1)
    c = np.zeros((L, B, C), x.dtype) if ctx is None else np.asarray(ctx, x.dtype)
    if P:
        x = np.concatenate([x, np.zeros((P, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros((P, *y.shape[1:]), y.dtype)])
        m = np.concatenate([m, np.zeros((P, B), m.dtype)])
    tail = np.zeros((B, C), x.dtype) if next_ctx is None else np.asarray(next_ctx, x.dtype)
    out = []
    for k in range(K):
        sl = slice(k * T, (k + 1) * T)
        c1 = c[(k + 1) * T] if (k + 1) * T < L else tail
        out.append(
            Window(
                x[sl],
                y[sl],
                m[sl],
                c[k * T],
                c1,
                np.asarray(0.0 if (last and k == K - 1) else 1.0, x.dtype),
                np.asarray(0.0 if (first and k == 0) else 1.0, x.dtype),
            )
        )
    return out


def train_sequence(
    h: Harness,
    step: WindowStep,
    state: TrainState,
    x: Any,
    y: Any,
    m: Any = None,
    *,
    ctx: Any = None,
    carry: Any = None,
    first: bool = True,
    last: bool = True,
    next_ctx: Any = None,
    check: bool = True,
) -> tuple[TrainState, Any, dict]:
    """Train on one batch of sequences window by window (one update per window) with the
    window step ``step`` (from :func:`make_window_step`).

    The sequence starts from ``carry`` (the cell's initial state if ``None``; it replaces
    ``state.carry``). Returns the state, the carried state after the last window (also
    ``state.carry``), and metrics summed over windows (``loss`` in nats summed over steps
    and averaged over the batch, ``count`` the number of unmasked steps,
    ``sg_loss``/``aux_loss``/``bad_labels`` summed, ``finite`` of all windows). With
    ``check`` (default), :func:`sgjax.train.check_step` raises at the end of the sequence
    if a window's update was refused (one device sync per sequence).

    Example:
        >>> import jax, optax
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.vanilla(4), 3, 3), window=2, method="dni")
        >>> step = make_window_step(h, optax.sgd(0.1))
        >>> state = init(h, jax.random.key(0), optax.sgd(0.1))
        >>> x, y = np.zeros((4, 2, 3), np.float32), np.array([[0, 1]] * 3 + [[0, 3]])
        >>> train_sequence(h, step, state, x, y)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sgjax.train.BadLabelsError: 1 label(s) of the batch lie outside the network's classes; ...
    """
    wins = windows(h, x, y, m, ctx, first=first, last=last, next_ctx=next_ctx)
    B = np.shape(x)[1]
    dtype = jax.tree.leaves(state.params)[0].dtype
    state = state._replace(carry=initial_carry(h, B, dtype) if carry is None else carry)
    total: dict = {}
    for win in wins:
        state, metrics = step(state, win)
        for k, v in metrics.items():
            total[k] = v if k not in total else (total[k] + v if k != "finite" else total[k] & v)
    if check:
        train_lib.check_step(total)
    return state, state.carry, total


# --------------------------------------------------------------- full-BPTT references


def _padded(h: Harness, x, y, m):
    L, B = np.shape(x)[:2]
    T = h.window
    K = -(-L // T)
    P = K * T - L
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    m = jnp.ones((L, B), x.dtype) if m is None else jnp.asarray(m, x.dtype)
    if P:
        x = jnp.concatenate([x, jnp.zeros((P, *x.shape[1:]), x.dtype)])
        y = jnp.concatenate([y, jnp.zeros((P, *y.shape[1:]), y.dtype)])
        m = jnp.concatenate([m, jnp.zeros((P, B), m.dtype)])
    r = lambda a: a.reshape((K, T, *a.shape[1:]))  # noqa: E731
    return r(x), r(y), r(m), K


def boundary_states_and_gradients(
    h: Harness, params: Params, x: Any, y: Any, m: Any = None, carry: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Full BPTT on the whole sequence: ``(loss, states s_k (K,B,S), true per-example
    ∂(loss of steps ≥ kT)/∂s_k (K,B,S))`` at every window start k = 0..K−1 (states as
    :func:`flat_state`).

    The gradient of the loss of the steps from kT on with respect to s_k is what an exact
    boundary SG would output; this is the reference for the SG cosine diagnostic (and the
    oracle of the tests). It needs the whole sequence at once (memory O(L)).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.vanilla(3), 2, 2), window=2, method="bptt")
        >>> p = init_params(h.model, jax.random.key(0))
        >>> _, s, g = boundary_states_and_gradients(h, p, jnp.ones((6, 4, 2)),
        ...                                         jnp.zeros((6, 4), int))
        >>> s.shape, g.shape
        ((3, 4, 3), (3, 4, 3))
    """
    xs, ys, ms, K = _padded(h, x, y, m)
    B = xs.shape[2]
    s0 = initial_carry(h, B, xs.dtype) if carry is None else carry

    def total(eps):
        def body(s, inp):
            xw, yw, mw, e = inp
            f = flat_state(s) + e
            loss, (s_T, _) = window_loss(h.model, params, unflat_state(s, f), xw, yw, mw)
            return s_T, (loss, f)

        _, (losses, starts) = jax.lax.scan(body, s0, (xs, ys, ms, eps))
        return jnp.sum(losses), starts

    eps = jnp.zeros((K, B, h.model.cell.state_dim), xs.dtype)
    (loss, starts), g = jax.value_and_grad(total, has_aux=True)(eps)
    return loss, starts, g * B


def sg_cosines(
    h: Harness,
    params: Params,
    sg_params: Params,
    x: Any,
    y: Any,
    m: Any = None,
    ctx: Any = None,
    carry: Any = None,
) -> jax.Array:
    """Per boundary k = 1..K−1: mean over the batch of cos(SG(s_k, c_k), true ∂L_{≥k}/∂s_k).

    Diagnostic only (full BPTT on the same batch). Examples whose true gradient is zero
    count as cosine 0.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from sgjax.recurrent import cells
        >>> h = harness(Model(cells.vanilla(3), 2, 2), window=2)
        >>> st = init(h, jax.random.key(0), optax.sgd(0.1))
        >>> sg_cosines(h, st.params, st.sg_params, jnp.ones((6, 4, 2)),
        ...            jnp.zeros((6, 4), int)).tolist()  # the zero SG: cosine 0
        [0.0, 0.0]
    """
    if h.sg is None:
        raise ValueError("sg_cosines: the harness has no SG module (method 'bptt')")
    check_sequence(h, x, y, m, ctx)
    return _sg_cosines(h, params, sg_params, x, y, m, ctx, carry)


@jax.jit(static_argnums=0)
def _sg_cosines(h: Harness, params, sg_params, x, y, m, ctx, carry) -> jax.Array:
    L, B = x.shape[:2]
    _, starts, g = boundary_states_and_gradients(h, params, x, y, m, carry)
    K = starts.shape[0]
    C = max(h.context_dim, 1)
    c = jnp.zeros((L, B, C), starts.dtype) if ctx is None else jnp.asarray(ctx, starts.dtype)
    cs = c[jnp.arange(K) * h.window]
    sg = h.sg
    assert sg is not None
    pred = jax.vmap(lambda s, ck: sg.apply(sg_params, sg_input(h, s), ck))(starts, cs)
    g = g[..., : h.sg_width]
    num = jnp.sum(pred * g, axis=-1)
    den = jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(g, axis=-1)
    cos = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.mean(cos, axis=-1)[1:]


def make_evaluator(model: Model) -> Callable:
    """A jitted ``(params, carry, x, y, m) -> (loss_sum, count, carry)`` over a chunk (no
    gradient): loss in nats summed over the unmasked steps and examples."""

    @jax.jit
    def evaluate(params, carry, x, y, m):
        s_T, _, losses, _ = unroll(model, params, carry, x, y, m)
        return jnp.sum(losses), jnp.sum(m), s_T

    return evaluate
