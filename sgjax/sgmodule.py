"""One synthetic-gradient module: an estimator bundled with its optimiser.

Everything in sgjax that trains an SG module goes through this file: the rules
(:func:`sgjax.rules.synthetic_gradients`), the interface's backward pass
(:func:`sgjax.interface.sg_interface`), the device pipeline's stages
(:mod:`sgjax.pipeline.stages`) and ``theory/table2``. An :class:`SGModule` pairs an
estimator (any object with ``init(key, h_shape, c_dim, dtype)`` and ``apply(params, h,
c)``, e.g. :mod:`sgjax.estimators`) with the optax transformation that trains it:

* :meth:`SGModule.init` — parameters (zero output, see :mod:`sgjax.estimators`) and the
  optimiser's state, as an :class:`SGState`;
* :meth:`SGModule.signal` — δ̂ = SG(h, c), the per-example gradient estimate;
* :meth:`SGModule.regress` — :func:`regress`: SG(h, c) against a held target, the
  regression loss and its gradients w.r.t. the parameters and ``h``;
* :meth:`SGModule.update` — one optimiser step from those gradients;
  :meth:`SGModule.step` — regress and update in one call.

:func:`regress` is the only place the SG regression is written. Its loss is
``L_SG = Σ_b ‖SG(h_b, c_b) − t_b‖² / k`` with ``k`` the batch size by default (the batch
mean of the per-example squared error) or the ``scale`` the caller gives (the interface's
``loss_reduction``); the target is stop-gradiented; the residual is formed in the wider
of the output's and the target's dtypes and the cotangent cast back to the output's.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from sgjax import estimators
    >>> sg = SGModule(estimators.linear(), optax.sgd(0.5))
    >>> state = sg.init(jax.random.key(0), (2,), 3)
    >>> h, c = jnp.ones((4, 2)), jnp.zeros((4, 3))
    >>> state, reg = sg.step(state, h, c, jnp.ones((4, 2)))  # regress onto t = 1
    >>> float(reg.loss)  # the zero module against t = 1 in 2 units: ‖1 − 0‖² = 2
    2.0
    >>> # one SGD step of 0.5 on mean_b ‖hA + C − 1‖²: A and C each move by 0.5 · 2 = 1
    >>> sg.signal(state.params, h, c)[0].tolist()  # h A + C = (1 + 1) + 1
    [3.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any


class Regression(NamedTuple):
    """One SG module regressed onto its target: what :func:`regress` returns.

    Attributes:
        s: the module's output SG(h, c), per example.
        loss: ``Σ_b ‖t_b − s_b‖² / k`` (``k`` = the batch size by default: the batch mean).
        grad_params: ∂L_SG/∂θ, for the module's optimiser.
        grad_h: ∂L_SG/∂h (times ``k`` it is the per-example ∂ℓ_SG,b/∂h_b that SG + prop
            adds to the signal).
    """

    s: jax.Array
    loss: jax.Array
    grad_params: Params
    grad_h: jax.Array


def wider_float(*dtypes: Any) -> Any:
    """The widest of floating ``dtypes`` (the first of equal width): what the regression
    computes its residual in. Unlike ``jnp.result_type`` it does not depend on the
    dtype-promotion mode (under ``jax_numpy_dtype_promotion="strict"`` float32 and float64
    have no implicit promotion), and it never widens bfloat16 + float16 to float32.

    Example:
        >>> import jax.numpy as jnp
        >>> wider_float(jnp.float32, jnp.bfloat16), wider_float(jnp.bfloat16, jnp.float32)
        (dtype('float32'), dtype('float32'))
    """
    out = np.dtype(dtypes[0])
    for d in dtypes[1:]:
        d = np.dtype(d)
        if jnp.finfo(d).bits > jnp.finfo(out).bits:
            out = d
    return out


def regress(
    estimator: Any,
    theta: Params,
    h: jax.Array,
    c: jax.Array,
    target: jax.Array,
    *,
    scale: float | None = None,
) -> Regression:
    """The SG regression, the one place it is written: SG(h, c) against a held target.

    Args:
        estimator: an estimator (anything with ``apply(params, h, c)``) or a bare
            ``apply`` function.
        theta: the module's parameters.
        h: the activation, batch first.
        c: the context the module is conditioned on (one-hot labels), batch first.
        target: the per-example gradient the module should predict; stop-gradiented.
        scale: ``k`` of ``L_SG = Σ_b ‖s_b − t_b‖² / k``; default the batch size.

    One VJP gives the gradients w.r.t. the module's parameters and w.r.t. ``h``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import estimators
        >>> sg = estimators.linear()
        >>> theta = sg.init(jax.random.key(0), (2,), 3)
        >>> r = regress(sg, theta, jnp.ones((4, 2)), jnp.zeros((4, 3)), jnp.ones((4, 2)))
        >>> float(r.loss)  # zero-initialised module, target 1 in 2 units: ‖1 − 0‖² = 2
        2.0
    """
    apply: Callable = getattr(estimator, "apply", estimator)
    t = jax.lax.stop_gradient(target)
    s, module_vjp = jax.vjp(lambda th, hh: apply(th, hh, c), theta, h)
    wide = wider_float(s.dtype, t.dtype)
    r = s.astype(wide) - t.astype(wide)
    batch = h.shape[0]
    per_example = jnp.sum(jnp.square(r).reshape(batch, -1), axis=-1)
    if scale is None:
        loss = jnp.mean(per_example)
        cot = 2.0 * r / batch
    else:
        loss = jnp.sum(per_example) / scale
        cot = 2.0 * r / scale
    # d/dθ and d/dh of L_SG in one VJP.
    g_theta, g_h = module_vjp(cot.astype(s.dtype))
    return Regression(s, loss, g_theta, g_h)


class SGState(NamedTuple):
    """An SG module's trained state: its parameters and its optimiser's state."""

    params: Params
    opt_state: Any


class SGModule(NamedTuple):
    """An SG module: ``estimator`` (``init``/``apply``) trained by ``optimizer`` (optax).

    A NamedTuple of an estimator and a transformation, so it is hashable and can be a
    static argument of ``jax.jit``; the state lives outside, in :class:`SGState`.
    """

    estimator: Any
    optimizer: optax.GradientTransformation

    def init(
        self, key: jax.Array, h_shape: Sequence[int], c_dim: int, dtype: Any = jnp.float32
    ) -> SGState:
        """Fresh parameters (zero output) for activations of per-example shape ``h_shape``
        and contexts of width ``c_dim``, and the optimiser's state for them."""
        params = self.estimator.init(key, h_shape, c_dim, dtype)
        return SGState(params, self.optimizer.init(params))

    def signal(self, params: Params, h: jax.Array, c: jax.Array) -> jax.Array:
        """δ̂ = SG(h, c): the module's estimate of the per-example ∂ℓ_b/∂h_b."""
        return self.estimator.apply(params, h, c)

    def regress(
        self,
        params: Params,
        h: jax.Array,
        c: jax.Array,
        target: jax.Array,
        *,
        scale: float | None = None,
    ) -> Regression:
        """:func:`regress` with this module's estimator."""
        # the module's global: patching sgmodule.regress reaches every user
        return regress(self.estimator, params, h, c, target, scale=scale)

    def update(self, state: SGState, grad_params: Params) -> SGState:
        """One step of the module's optimiser from the regression gradients."""
        updates, opt_state = self.optimizer.update(grad_params, state.opt_state, state.params)
        return SGState(optax.apply_updates(state.params, updates), opt_state)

    def step(
        self, state: SGState, h: jax.Array, c: jax.Array, target: jax.Array
    ) -> tuple[SGState, Regression]:
        """Regress onto ``target`` and update: the new state and the regression."""
        reg = self.regress(state.params, h, c, target)
        return self.update(state, reg.grad_params), reg
