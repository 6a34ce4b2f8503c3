"""Decoupled interfaces for any JAX code: synthetic gradients and synthetic inputs.

The rules of :mod:`sgjax.rules` need the model as a :class:`~sgjax.nets.Network` of
stages. An interface needs nothing of the sort: place it on an activation inside *any*
JAX function — a plain function, a flax linen or NNX module, a ``lax.scan`` body — and
take one ordinary ``jax.grad`` of the loss with respect to (model parameters, interface
parameters).

**Backward interface** (:func:`sg_interface`, DNI, Jaderberg et al. 2017).
``h = sg_interface(h, sg_params, context)`` is the identity in the forward pass. Its
``jax.custom_vjp`` backward, given the cotangent ``g`` arriving from above:

* sends below ``λ·g + (1 − λ)·SG(h, c)`` instead of ``g`` (``lam=0``: DNI, ``lam=1``:
  backprop; BP(λ) of the DNI paper's appendix) — plus ``α ∂L_SG/∂h`` for SG + prop;
* returns to ``sg_params`` the gradient of the regression loss
  ``L_SG = mean_b ‖SG(h_b, c_b) − t_b‖²`` with ``t = stop_grad(g)``, per example;
* returns nothing (a zero cotangent) to ``context``.

So interfaces stacked in one model bootstrap from each other: the cotangent arriving at a
lower interface was made from the synthetic gradient of the one above, exactly as
``rules.synthetic_gradients(targets="bootstrap")`` does; a model with interfaces at the
boundaries of a :func:`sgjax.nets.mlp` takes the same steps as that rule (tested update
for update).

Scale. sgjax's SG modules predict the **per-example** gradient ∂ℓ_b/∂h_b (see
:mod:`sgjax.estimators`). With ``loss_reduction="mean"`` (the default) the loss is taken to
be a mean over the leading (batch) axis of ``h``, so the cotangent is ∂ℓ_b/∂h_b / B: the
target is ``B·g`` and the module's output goes down as ``SG/B``. Use ``"sum"`` for a summed
loss, or a number ``k`` (target ``k·g``, output sent down as ``SG/k``) for anything else.
The SG module's own regression is weighted the same way: each example's ``‖SG − t‖²``
counts ``1/k`` (``"mean"``: the batch mean ``L_SG`` below; ``"sum"``: its sum), so the
module's gradient scales with the loss's as the model's does, and sharding the batch does
not change either (below).

dtypes. ``h`` may be any floating dtype (float32, bfloat16, ...). The module runs in its own
parameters' dtype; the residual ``SG − t`` and its scaling are computed in float32 (or
wider, if an input is wider), and every cotangent is cast back to its primal's dtype.

Modes: ``"apply"`` (default, as above), ``"warm-up"`` (the true ``g`` goes below; the
module trains on it without being used — warm an SG up before switching it on),
``"no-backprop"`` (nothing goes below and the module does not train: the paper's
"No Bprop" baseline).

**Forward interface** (:func:`synthetic_input`, DNI §3.3). A model ``I(source)`` trained to
predict the activation ``h`` that a lower part sends, regressing onto ``stop_grad(h)``, so
that an upper part can run on ``I(source)`` before (or without) the lower one.

Both compose with ``jax.jit``, ``jax.vmap`` (over seeds or models, not examples),
``lax.scan``, ``jax.checkpoint`` (remat) and ``jax.shard_map``. The settings estimator,
mode, α and reduction are static (a new value retraces; one setting, one compile); λ may
be a Python number (static) or a float scalar array — a traced λ (an annealing schedule
computed inside one compiled step) gives bit-for-bit the static λ's gradients with no
retrace; a traced λ cannot raise inside ``jit``: within 1e-6 of [0, 1] (a schedule's
rounding) it is clipped, further outside it turns the signal sent below into NaN instead
of a silently wrong mix.

Data parallel (the model and SG-module gradients both equal the full batch's; tested on 2
and 4 devices, ``tests/test_interface_sharding.py``):

* ``shard_map``, each shard differentiating its *own* batch-mean loss:
  ``loss_reduction="local-mean"``; ``shard_map`` sums the gradients of replicated
  parameters over the shards, so divide by their number;
* ``shard_map`` with the loss ``pmean``-ed over the shards before differentiating:
  ``loss_reduction="global-mean"`` (every cotangent is 1/shards of the local mean's);
* ``shard_map`` with a summed loss ``psum``-ed over the shards: ``"sum"``;
* ``jax.pmap``: each device its own batch-mean loss (or a ``pmean``-ed one: pmap
  differentiates it as the local one) with ``"mean"``, then ``lax.pmean`` the gradients.
* ``jax.jit`` on a batch sharded over devices (``NamedSharding``, no ``shard_map``): the
  program sees the global batch — ``"mean"``, nothing else to do.

Inside ``shard_map`` the default ``"mean"`` is refused (it cannot tell the first two
apart, and the wrong one would scale the SG modules' gradients by the number of shards).

Limits: reverse mode only — forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``,
``jax.linearize`` of a function holding an interface) is refused by JAX ("can't apply
forward-mode autodiff (jvp) to a custom_vjp function"): an SG exists only as a backward
pass. ``h`` must carry the batch on its leading axis: under a ``jax.vmap`` over
*examples* there is none (the per-example h looks like a batch of features) — put the
interface outside that vmap; the error says so when it sees one.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from sgjax import interface
    >>> x, y = jnp.ones((4, 3)), jax.nn.one_hot(jnp.array([0, 1, 2, 1]), 2)
    >>> W1, W2 = jnp.ones((3, 5)) * 0.1, jnp.ones((5, 2)) * 0.1
    >>> sg = interface.init_sg(jax.random.key(0), (5,), 2)    # zero-initialised cDNI
    >>> def loss(W1, W2, sg):
    ...     h = jnp.tanh(x @ W1)
    ...     h = interface.sg_interface(h, sg, y)                 # identity forward
    ...     return jnp.mean(jnp.sum((h @ W2 - y) ** 2, -1))
    >>> gW1, gW2, gsg = jax.grad(loss, argnums=(0, 1, 2))(W1, W2, sg)
    >>> float(jnp.abs(gW1).max())        # the fresh SG sends nothing below
    0.0
    >>> bool(jnp.abs(gsg["B"]).max() > 0)  # ... but starts learning the true gradient
    True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax import estimators as est_lib
from sgjax import sgmodule

Params = Any
ApplyFn = Callable[[Params, jax.Array, Any], jax.Array]

MODES = ("apply", "warm-up", "no-backprop")
FORWARD_MODES = ("train", "synthetic")


# --------------------------------------------------------------------------------------
# Argument handling (all at trace time, before any custom_vjp is entered).


def _module_apply(estimator: Any, where: str) -> tuple[ApplyFn, bool]:
    """``(apply, needs_context)`` from an Estimator, its name, an ``(init, apply)`` pair
    or a bare ``apply(params, h, context)``."""
    if isinstance(estimator, str):
        estimator = est_lib.get(estimator)
    if isinstance(estimator, est_lib.Estimator):
        return estimator.apply, estimator.uses_y
    if isinstance(estimator, tuple) and len(estimator) >= 2 and callable(estimator[1]):
        return estimator[1], False
    if callable(estimator):
        return estimator, False
    raise TypeError(
        f"{where}: `estimator` must be an sgjax Estimator, its name "
        f"({sorted(est_lib.ESTIMATORS)}), an (init, apply) pair or a function "
        f"apply(params, h, context); got {type(estimator).__name__}"
    )


REDUCTIONS = ("mean", "local-mean", "global-mean", "sum")


def _sharded_axes(h: Any) -> tuple[str, ...]:
    """The manual mesh axes (inside ``jax.shard_map``) that ``h`` varies over."""
    mat = getattr(jax.typeof(h), "manual_axis_type", None)
    return tuple(sorted(map(str, getattr(mat, "varying", ()) or ())))


def _scale_of(loss_reduction: Any, batch: int, where: str, axes: tuple[str, ...] = ()) -> float:
    if isinstance(loss_reduction, str):
        if loss_reduction == "mean" and axes:
            raise ValueError(
                f"{where}: inside shard_map (h is split over the mesh axes {list(axes)}) "
                "`loss_reduction='mean'` is ambiguous, and the wrong reading scales the SG "
                "modules' gradients by the number of shards: pass 'local-mean' if each shard "
                "differentiates the mean loss of its own examples (shard_map sums replicated "
                "parameters' gradients over the shards: divide them by their number), or "
                "'global-mean' if the loss is pmean-ed over the shards before differentiating"
            )
        if loss_reduction in ("mean", "local-mean"):
            return float(batch)
        if loss_reduction == "global-mean":
            shards = 1
            for a in axes:
                shards *= int(jax.lax.axis_size(a))
            return float(batch * shards)
        if loss_reduction == "sum":
            return 1.0
    elif isinstance(loss_reduction, int | float) and not isinstance(loss_reduction, bool):
        if loss_reduction > 0:
            return float(loss_reduction)
    raise ValueError(
        f"{where}: `loss_reduction` must be one of {REDUCTIONS} or a number > 0, got "
        f"{loss_reduction!r}"
    )


def _check_h(h: Any, where: str) -> None:
    if not hasattr(h, "shape") or not hasattr(h, "dtype"):
        raise TypeError(f"{where}: `h` must be an array, got {type(h).__name__}")
    if h.ndim < 1:
        raise ValueError(f"{where}: `h` needs a leading batch axis, got shape {tuple(h.shape)}")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        raise TypeError(f"{where}: `h` must have a floating dtype, got {h.dtype}")


def _under_vmap(x: Any) -> bool:
    """Whether ``x`` is being traced by a ``jax.vmap`` (for error messages only)."""
    t = x
    while isinstance(t, jax.core.Tracer):
        if type(t).__name__ == "BatchTracer":
            return True
        t = getattr(t, "primal", None) if hasattr(t, "primal") else getattr(t, "val", None)
    return False


def _vmap_hint(h: Any) -> str:
    if not _under_vmap(h):
        return ""
    return (
        " — h is traced by jax.vmap: under a vmap over *examples* h has no batch axis (its "
        f"per-example shape {tuple(h.shape)} is read as (batch, ...)); put the interface "
        "outside the per-example vmap (a vmap over seeds or models is fine)"
    )


def _check_context(
    context: Any, batch: int, where: str, name: str = "context", h: Any = None
) -> None:
    for leaf in jax.tree.leaves(context):
        shape = tuple(jnp.shape(leaf))
        if not shape or shape[0] != batch:
            raise ValueError(
                f"{where}: `{name}` must have h's batch size {batch} on its leading axis, "
                f"got shape {shape}{_vmap_hint(h)}"
            )


def _check_label_context(context: Any, h: Any, where: str) -> None:
    """The context of an sgjax estimator conditioned on labels: a (batch, k) array."""
    if not (hasattr(context, "shape") and hasattr(context, "dtype")):
        what = type(context).__name__
        if isinstance(context, dict):
            what += f" with keys {sorted(map(str, context))}"
        raise TypeError(
            f"{where}: `context` must be one array, the one-hot labels of shape (batch, k) that "
            f"the estimator is conditioned on; got a {what} — pass that array (e.g. "
            "jax.nn.one_hot(y, k)), or write your own estimator apply(params, h, context) "
            "that reads this structure"
        )
    shape = tuple(context.shape)
    if context.ndim == 1 and jnp.issubdtype(context.dtype, jnp.integer):
        raise TypeError(
            f"{where}: `context` must be a float one-hot of shape (batch, k); got int labels "
            f"of shape {shape} — use jax.nn.one_hot(y, k), k the number of classes the SG "
            "was made for (init_sg(key, h_shape, k))"
        )
    if context.ndim != 2:
        raise ValueError(
            f"{where}: `context` must be the one-hot labels of shape (batch, k), got shape "
            f"{shape}{_vmap_hint(h)}"
        )


def _float_dtype(*dtypes: Any) -> Any:
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return sgmodule.wider_float(jnp.float32, *floats)


# --------------------------------------------------------------------------------------
# The backward interface.


#: How far outside [0, 1] a traced λ may fall by rounding (it is clipped); further: NaN.
_LAM_SLACK = 1e-6


@dataclasses.dataclass(frozen=True)
class _Config:
    apply: ApplyFn
    mode: str
    lam: float | None  # None: λ is data, the `lam` argument of _interface
    prop: float
    scale: float


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interface(h: jax.Array, theta: Params, context: Any, lam: Any, cfg: _Config) -> jax.Array:
    del theta, context, lam, cfg
    return h


def _interface_fwd(h, theta, context, lam, cfg):
    return h, (h, theta, context, lam)


def _interface_bwd(cfg: _Config, res, g):
    h, theta, context, lam = res
    zeros_theta = jax.tree.map(jnp.zeros_like, theta)
    zero_lam = None if lam is None else jnp.zeros_like(lam)  # λ is a setting: no gradient
    if cfg.mode == "no-backprop":
        return jnp.zeros_like(h), zeros_theta, None, zero_lam

    # Per-example target t = scale·g, stop-gradiented (g is a cotangent: no tape to cut,
    # but a stop_gradient keeps it so under higher-order differentiation too), in float32
    # or wider.
    wide = _float_dtype(jax.eval_shape(cfg.apply, theta, h, context).dtype, g.dtype)
    t = jax.lax.stop_gradient(g).astype(wide) * cfg.scale
    # The core's regression (sgjax.sgmodule.regress): d/dθ and d/dh of
    # L_SG = Σ_b ‖s_b − t_b‖² / scale in one VJP: each example weighs what it weighs in the
    # loss (for "mean" the batch mean, as rules.synthetic_gradients), so the module's
    # gradient sums over shards exactly as the model's does.
    reg = sgmodule.regress(cfg.apply, theta, h, context, t, scale=cfg.scale)
    s, g_theta, g_h = reg.s, reg.grad_params, reg.grad_h
    if cfg.mode == "warm-up":
        return g, g_theta, None, zero_lam
    delta = s.astype(wide)
    if cfg.prop:  # α times the per-example ∂ℓ_SG,b/∂h_b
        delta = delta + cfg.prop * cfg.scale * g_h.astype(wide)
    down = jax.lax.stop_gradient(delta) / cfg.scale
    if cfg.lam is None or cfg.lam:
        # One formula for a static and a traced λ (the same float ops, the same bits).
        lam_w = jnp.asarray(cfg.lam if cfg.lam is not None else lam, wide)
        if cfg.lam is None:  # λ as data: a schedule's rounding (1 − 5·0.2 = −1.5e-8) is
            ok = (lam_w >= -_LAM_SLACK) & (lam_w <= 1 + _LAM_SLACK)  # clipped; a λ
            lam_w = jnp.where(ok, jnp.clip(lam_w, 0, 1), jnp.nan)  # truly outside poisons
        down = lam_w * g.astype(wide) + (1.0 - lam_w) * down
    return down.astype(h.dtype), g_theta, None, zero_lam


_interface.defvjp(_interface_fwd, _interface_bwd)


def sg_interface(
    h: jax.Array,
    sg_params: Params,
    context: Any = None,
    *,
    estimator: Any = "conditioned",
    mode: str = "apply",
    lam: float | jax.Array = 0.0,
    prop: float = 0.0,
    loss_reduction: str | float = "mean",
) -> jax.Array:
    """A synthetic-gradient boundary on ``h``: identity forward, SG backward.

    Args:
        h: the activation, with a leading batch axis; any shape, any floating dtype.
        sg_params: the SG module's parameters (from :func:`init_sg` or ``estimator.init``).
        context: what the module is conditioned on (cDNI: the float one-hot labels, shape
            ``(batch, classes)`` — ``jax.nn.one_hot(y, classes)``, not the int labels);
            ``None`` for an unconditioned module. Receives no gradient.
        estimator: an :class:`~sgjax.estimators.Estimator`, its name, a user's
            ``(init, apply)`` pair or a bare ``apply(params, h, context)``; ``apply`` must
            return an array of ``h``'s shape estimating the per-example gradient.
        mode: ``"apply"``, ``"warm-up"`` or ``"no-backprop"`` (see the module docstring).
        lam: λ ∈ [0, 1] of BP(λ): below receives ``λ·g + (1 − λ)·SG`` (``"apply"`` only).
            A Python number is static; a float scalar array (traced or not) is data: an
            annealing schedule inside one compiled step, same gradients, no retrace.
        prop: α ≥ 0 of SG + prop: the signal below is ``SG + α ∂L_SG/∂h`` (per example).
        loss_reduction: ``"mean"`` (the loss is a batch mean, default), ``"sum"``, or the
            factor k turning the cotangent into the per-example gradient the module predicts.
            Inside ``shard_map`` ``"mean"`` is refused as ambiguous: ``"local-mean"`` (each
            shard its own batch mean) or ``"global-mean"`` (a loss ``pmean``-ed over the
            shards; k = the global batch).

    Returns:
        ``h`` itself (the same value; only the backward pass differs).

    Raises (at trace time): ``ValueError`` naming ``mode``, ``lam``, ``prop``, ``context``
    or ``estimator`` when the mode is unknown, λ ∉ [0, 1], α < 0, the context's batch is not
    h's, or the module's output shape is not h's; ``TypeError`` when a label-conditioned
    estimator gets int labels or a dict as its context (the message gives the fix). Not
    supported: forward mode (``jax.jvp``/``jacfwd``) and a ``vmap`` over examples (see the
    module docstring).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> h, c = jnp.ones((2, 3)), jnp.eye(2)
        >>> sg = init_sg(jax.random.key(0), (3,), 2)
        >>> sg = {**sg, "C": jnp.array([1.0, 2.0, 3.0])}   # an SG predicting (1, 2, 3)
        >>> jax.grad(lambda h: jnp.mean(sg_interface(h, sg, c)).sum())(h).tolist()
        [[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]]
        >>> jax.grad(lambda h: sg_interface(h, sg, c, lam=1.0).sum())(h).tolist()  # backprop
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
        >>> sg_interface(h, sg, c, mode="fast")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sg_interface: `mode` must be one of (...), got 'fast'
    """
    where = "sg_interface"
    if mode not in MODES:
        raise ValueError(f"{where}: `mode` must be one of {MODES}, got {mode!r}")
    lam_static, lam_data = _lam(lam, where)
    if isinstance(prop, bool) or not isinstance(prop, int | float) or not prop >= 0.0:
        raise ValueError(f"{where}: `prop` (α) must be a number ≥ 0, got {prop!r}")
    _check_h(h, where)
    apply, needs_context = _module_apply(estimator, where)
    batch = h.shape[0]
    if context is None and needs_context:
        raise ValueError(
            f"{where}: the estimator is conditioned on a context (the labels) but `context` is "
            "None; pass the one-hot labels, or use an unconditioned estimator such as 'linear'"
        )
    if needs_context:
        _check_label_context(context, h, where)
    _check_context(context, batch, where, h=h)
    scale = _scale_of(loss_reduction, batch, where, _sharded_axes(h))
    _check_params(sg_params, where)
    try:
        out = jax.eval_shape(apply, sg_params, h, context)
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{where}: `estimator` cannot be applied to `sg_params` and h of shape "
            f"{tuple(h.shape)} with context {_describe(context)} ({type(err).__name__}: "
            f"{err}); were `sg_params` made for this activation (init_sg(key, h.shape[1:], "
            f"context width))?{_vmap_hint(h)}"
        ) from err
    if getattr(out, "shape", None) != h.shape:
        raise ValueError(
            f"{where}: `estimator` output must have h's shape {tuple(h.shape)} (an SG "
            f"predicts ∂ℓ/∂h), got {getattr(out, 'shape', type(out).__name__)}; were "
            f"`sg_params` made for this activation?{_vmap_hint(h)}"
        )
    cfg = _Config(apply, mode, lam_static, float(prop), scale)
    return _interface(h, sg_params, context, lam_data, cfg)


def _check_params(sg_params: Any, where: str) -> None:
    """The SG parameters must be a pytree of arrays (not, e.g., flax NNX Variables)."""
    # An object converting itself to an array (__jax_array__: a flax NNX Variable) is a
    # pytree node whose leaf is fine, but the estimator would receive the object.
    leaves = jax.tree_util.tree_flatten_with_path(
        sg_params, is_leaf=lambda x: hasattr(x, "__jax_array__")
    )[0]
    for path, leaf in leaves:
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | float | int):
            raise TypeError(
                f"{where}: `sg_params` must be a pytree of arrays; the leaf at "
                f"{jax.tree_util.keystr(path) or '(root)'} is a {type(leaf).__name__}. For "
                "flax NNX variables pass their values (v[...]), or let "
                "sgjax.nnx_interface.SGInterface hold the SG module's parameters"
            )


def _describe(context: Any) -> str:
    if context is None:
        return "None"
    if hasattr(context, "shape") and hasattr(context, "dtype"):
        return f"of shape {tuple(context.shape)} ({context.dtype})"
    return f"a {type(context).__name__}"


def _lam(lam: Any, where: str) -> tuple[float | None, jax.Array | None]:
    """(static λ, None) for a Python number; (None, λ as a float array) for an array."""
    bad = f"{where}: `lam` (λ) must be a number in [0, 1] or a float scalar array"
    if isinstance(lam, bool):
        raise ValueError(f"{bad}, got {lam!r}")
    if isinstance(lam, int | float):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"{bad}, got {lam!r}")
        return float(lam), None
    if hasattr(lam, "shape") and hasattr(lam, "dtype"):
        if tuple(lam.shape) != () or not jnp.issubdtype(lam.dtype, jnp.floating):
            raise ValueError(f"{bad}, got an array of shape {tuple(lam.shape)} ({lam.dtype})")
        if not isinstance(lam, jax.core.Tracer) and not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"{bad}, got {float(lam)!r}")
        return None, jnp.asarray(lam)
    raise ValueError(f"{bad}, got {type(lam).__name__}")


def init_sg(
    key: jax.Array,
    h_shape: Sequence[int],
    context_dim: int = 0,
    *,
    estimator: Any = "conditioned",
    dtype: Any = jnp.float32,
) -> Params:
    """Parameters of an SG module for activations of per-example shape ``h_shape``.

    ``context_dim`` is the width of the context (the number of classes for cDNI).

    Example:
        >>> import jax
        >>> sg = init_sg(jax.random.key(0), (8,), 10)
        >>> {k: v.shape for k, v in sorted(sg.items())}
        {'A': (8, 8), 'B': (10, 8), 'C': (8,)}
    """
    if isinstance(estimator, str):
        estimator = est_lib.get(estimator)
    init = estimator.init if isinstance(estimator, est_lib.Estimator) else estimator[0]
    shape = tuple(int(d) for d in h_shape)
    return init(key, shape, int(context_dim), dtype)


# --------------------------------------------------------------------------------------
# The forward interface: synthetic inputs.


@dataclasses.dataclass(frozen=True)
class _ForwardConfig:
    apply: Callable[[Params, Any], jax.Array]
    mode: str
    has_h: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _forward(h, phi, source, cfg: _ForwardConfig):
    if cfg.mode == "train":
        return h
    return cfg.apply(phi, source)


def _forward_fwd(h, phi, source, cfg):
    return _forward(h, phi, source, cfg), (h, phi, source)


def _forward_bwd(cfg: _ForwardConfig, res, g):
    h, phi, source = res
    if cfg.has_h:
        hh = jax.lax.stop_gradient(h)
        pred, model_vjp = jax.vjp(lambda p: cfg.apply(p, source), phi)
        wide = _float_dtype(pred.dtype, hh.dtype)
        r = pred.astype(wide) - hh.astype(wide)
        # d/dφ of mean_b ‖I(x)_b − h_b‖²
        (g_phi,) = model_vjp((2.0 * r / hh.shape[0]).astype(pred.dtype))
    else:
        g_phi = jax.tree.map(jnp.zeros_like, phi)
    # Below receives the error computed at whichever input the upper part ran on.
    g_h = g.astype(h.dtype) if cfg.has_h else None
    return g_h, g_phi, None


_forward.defvjp(_forward_fwd, _forward_bwd)


def synthetic_input(
    h: jax.Array | None,
    si_params: Params,
    source: Any,
    *,
    model: Any,
    mode: str = "train",
) -> jax.Array:
    """A forward interface: ``I(source)`` learns to stand in for the activation ``h``.

    Args:
        h: the real activation sent by the lower part (leading batch axis), or ``None``
            when it is not available (inference on synthetic inputs alone).
        si_params: parameters of the input model I.
        source: what I reads (typically the network's input x); receives no gradient.
        model: ``apply(si_params, source) -> ĥ`` or an ``(init, apply)`` pair.
        mode: ``"train"`` — returns the real ``h`` (the upper part runs on it; the gradient
            goes to the lower part as usual) while I regresses onto it; ``"synthetic"`` —
            returns ``I(source)``: the upper part runs on the synthetic input, I regresses
            onto ``stop_grad(h)``, and the cotangent arriving at the synthetic input is
            handed to ``h``, so the lower part (or an :func:`sg_interface` on it) still
            receives an error signal.

    In both modes ``si_params`` receive only the gradient of the regression loss
    ``mean_b ‖I(source)_b − stop_grad(h_b)‖²`` (float32 residual), never the task loss's.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = lambda phi, x: x @ phi
        >>> x, h = jnp.eye(2), jnp.array([[1.0, 2.0], [3.0, 4.0]])
        >>> phi = jnp.zeros((2, 2))
        >>> g = jax.grad(lambda phi: synthetic_input(h, phi, x, model=model).sum())(phi)
        >>> g.tolist()   # ∇ of mean ‖xφ − h‖²: (2/B)·xᵀ(xφ − h)
        [[-1.0, -2.0], [-3.0, -4.0]]
    """
    where = "synthetic_input"
    if mode not in FORWARD_MODES:
        raise ValueError(f"{where}: `mode` must be one of {FORWARD_MODES}, got {mode!r}")
    if isinstance(model, tuple) and len(model) >= 2 and callable(model[1]):
        apply = model[1]
    elif callable(model):
        apply = model
    else:
        raise TypeError(
            f"{where}: `model` must be apply(params, source) or an (init, apply) pair, got "
            f"{type(model).__name__}"
        )
    try:
        out = jax.eval_shape(apply, si_params, source)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: `model` cannot be applied to `si_params` and `source` "
            f"({type(err).__name__}: {err})"
        ) from err
    if h is None:
        if mode == "train":
            raise ValueError(f"{where}: mode 'train' needs the real activation `h`, got None")
        # Nothing to regress onto: a stand-in of the right shape, never used as a value.
        h = jnp.zeros(out.shape, out.dtype)
        has_h = False
    else:
        _check_h(h, where)
        has_h = True
        if getattr(out, "shape", None) != h.shape:
            raise ValueError(
                f"{where}: `model` output must have h's shape {tuple(h.shape)}, got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        _check_context(source, h.shape[0], where, "source")
    return _forward(h, si_params, source, _ForwardConfig(apply, mode, has_h))
