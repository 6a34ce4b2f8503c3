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

:func:`train_sequence` loops over the windows of one batch of sequences rather than going
through :func:`sgjax.train.loop`: a window step's input is a slice of a sequence whose
carried state comes from the previous window (not a fresh batch from an iterator), a
refused update does not end the run (it is reported at the end of the sequence through
``check_step``, while ``train.loop`` stops at the first non-finite step), and the first
and last windows of a sequence carry their own flags (no SG target at the zero state,
no injection past the end).

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

The package's other modules: :mod:`sgjax.recurrent.harness` (the model, the harness and
its options, the training state, the shape checks; every name re-exported here) and
:mod:`sgjax.recurrent.reference` (full BPTT on the whole sequence: the true boundary
gradients, the SG cosine diagnostic, the validation evaluator).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import estimators as est_lib
from sgjax import train as train_lib
from sgjax.recurrent.harness import (
    LOSSES,
    METHODS,
    Harness,
    Model,
    Params,
    TrainState,
    Window,
    WindowOut,
    check_sequence,
    check_sg_params,
    check_window,
    flat_state,
    harness,
    init,
    init_params,
    initial_carry,
    state_sg_interface,
    unflat_state,
)

__all__ = [
    "CLIP_ADVICE",
    "GAMMA_ADVICE",
    "LOSSES",
    "METHODS",
    "Harness",
    "Model",
    "TrainState",
    "Window",
    "WindowOut",
    "WindowStep",
    "check_sequence",
    "check_sg_params",
    "check_window",
    "count_bad_labels",
    "flat_state",
    "harness",
    "init",
    "init_params",
    "initial_carry",
    "make_step",
    "make_window_step",
    "sg_input",
    "state_sg_interface",
    "step_loss",
    "train_sequence",
    "unflat_state",
    "unroll",
    "window_grads",
    "window_loss",
    "windows",
]


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


def _same_norm_noise(key: jax.Array, d: jax.Array) -> jax.Array:
    """A random direction per row (uniform on the sphere) with the row norms of ``d``."""
    z = jax.random.normal(key, d.shape, d.dtype)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), jnp.finfo(d.dtype).tiny)
    return z * jnp.linalg.norm(d, axis=-1, keepdims=True)


def window_grads(
    h: Harness,
    params: Params,
    sg_params: Params,
    carry: Any,
    win: Window,
    delta_next: jax.Array | None = None,
    sg_target: Params = None,
    noise_key: jax.Array | None = None,
) -> WindowOut:
    """Gradients of one window (see the module docstring); pure, jit-able.

    ``delta_next`` replaces ``SG(s_T, c_T)`` as the injected per-example gradient (an
    oracle, for tests); it is still multiplied by ``win.inject``. ``sg_target``: the SG
    parameters to inject (a target network; default ``sg_params``). ``noise_key``: inject
    a random direction drawn from it with the injected SG's per-example norm instead (the
    control of :attr:`Harness.inject_noise`; :func:`make_step` passes it).
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
            if noise_key is not None:
                d = _same_norm_noise(noise_key, d)
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
        noise_key = None
        if h.inject_noise is not None:  # the control: a fresh direction every update
            noise_key = jax.random.fold_in(jax.random.key(h.inject_noise), state.step)
        out = window_grads(
            h,
            state.params,
            state.sg_params,
            state.carry,
            win,
            sg_target=state.sg_target,
            noise_key=noise_key,
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


# ---------------------------------------------------------------------------- sequences


GAMMA_ADVICE = (
    "recurrent DNI with decay γ = 1 (the harness default) on a stream that does not end "
    "(`last=False`): with γ = 1 the SG regresses onto the sum of all future gradients, which "
    "an endless stream does not bound, and the linear SG on the LSTM state feeds back on "
    "itself (DNI-8 on Tiny Shakespeare, 3M characters: 4 of 5 seeds collapsed above the "
    "bigram level, docs/results/dni-rnn-lm). Pass `core.harness(..., decay=0.5, "
    "inject_clip=0.1)` (0 of 5 collapsed) — the clip at 1 or at 0.1; finite sequences (Copy, "
    "`last=True`) may keep γ = 1."
)
CLIP_ADVICE = (
    "recurrent DNI with an unclipped injected SG (`inject_clip=0`) on a stream that does not "
    "end (`last=False`): with γ = 0.5 alone 1 of 5 seeds of DNI-8 on Tiny Shakespeare "
    "collapsed (3M characters, docs/results/dni-rnn-lm); clipping the injected SG per "
    "example (`core.harness(..., inject_clip=0.1)`; norm 1 too) collapsed none and kept BPTT's "
    "BPC (0.1: 2.519 at LSTM 128, 2.283 at LSTM 256)."
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
