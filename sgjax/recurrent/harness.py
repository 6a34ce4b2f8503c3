"""The recurrent harness: the model, the window, the training state and their checks.

:class:`Model` (a cell, a linear readout, a per-step loss), :class:`Harness` (what a
window step needs: the model, the window length T, the method, the boundary SG and its
stabilising options, built by :func:`harness`), :class:`Window` (one window's data),
:class:`TrainState`, initialisation (:func:`init`, :func:`initial_carry`), a state pytree
as one flat array and back (:func:`flat_state`, :func:`unflat_state`,
:func:`state_sg_interface`), and the shape checks of an SG module, a window and a
sequence (``ValueError`` naming the argument). The window step itself is
:mod:`sgjax.recurrent.core`, which re-exports every name here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import estimators as est_lib
from sgjax import interface
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
    inject_noise: int | None = None

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
    inject_noise: int | None = None,
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
        inject_noise: a control for what the injected SG does, not a training method:
            an int seeds a random direction, drawn afresh for every window update and
            example, injected in place of the SG with the SG's own per-example norm (after
            γ and the clip); the SG module still trains as usual, and only its norm reaches
            the model (None, the default: inject the SG).

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
    if inject_noise is not None and (
        not isinstance(inject_noise, int | np.integer) or isinstance(inject_noise, bool)
    ):
        raise ValueError(
            f"`inject_noise` must be None (inject the SG) or an int seed, got {inject_noise!r}"
        )
    if inject_noise is not None and method == "bptt":
        raise ValueError("`inject_noise` replaces the injected SG: method 'bptt' injects none")
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
        None if inject_noise is None else int(inject_noise),
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


# ------------------------------------------------------------------------------ checking


def check_sg_params(h: Harness, sg_params: Params, batch: int = 1, dtype=jnp.float32) -> None:
    """Raise ``ValueError`` unless the SG module maps what it reads of a state (``(batch,
    sg_width)``, see :func:`sgjax.recurrent.core.sg_input`) to an array of the same shape
    with these parameters."""
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
