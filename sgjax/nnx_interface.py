"""Synthetic-gradient interfaces as flax NNX modules that own their SG parameters.

:class:`SGInterface` is :func:`sgjax.interface.sg_interface` as an :class:`flax.nnx.Module`:
it creates its SG module's parameters (any estimator, the conv SG included) as
:class:`SGParam` variables — a subclass of :class:`flax.nnx.Param`, so the standard NNX
training loop trains them with everything else, with no extra code::

    model = Model(nnx.Rngs(0))            # holds SGInterface(...) attributes
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: xent(m(x, y), y))(model)
        opt.update(model, grads)          # the model's DNI gradients and the SGs'

One gradient of the loss gives the model its synthetic gradients and each SG module the
gradient of its regression (see :mod:`sgjax.interface`); ``nnx.split``/``nnx.merge``,
``nnx.state``/``nnx.update`` (NNX checkpointing) and ``nnx.to_pure_dict`` see ordinary
``Param`` leaves, one per array of the estimator's parameter tree (empty sub-trees, such
as the conv SG's ``hidden: []``, are kept by the module, not by the state). Give the SG
modules their own optimiser (learning rate, schedule) with :func:`sgjax.optim.sg_split`,
which finds them by their :class:`SGParam` type.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> sg = SGInterface((5,), 3, rngs=nnx.Rngs(0))
    >>> h, c = jnp.ones((4, 5)), jax.nn.one_hot(jnp.arange(4) % 3, 3)
    >>> bool(jnp.all(sg(h, c) == h))                  # identity forward
    True
    >>> grads = nnx.grad(lambda m: jnp.sum(m(h, c) ** 2))(sg)
    >>> sorted(grads["theta"])                        # the conditioned SG: hA + yB + C
    ['A', 'B', 'C']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sgjax import interface


class SGParam(nnx.Param):
    """A synthetic-gradient module's parameter. A :class:`flax.nnx.Param`, so
    ``wrt=nnx.Param`` trains it; filter on ``SGParam`` to treat the SG modules apart."""


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class SGInterface(nnx.Module):
    """A decoupled (synthetic-gradient) boundary that owns its SG module's parameters.

    Args:
        h_shape: the per-example shape of the activation it sits on (``h.shape[1:]``;
            ``(H, W, C)`` for the conv SG).
        context_dim: the width of the context (the number of classes for cDNI; 0 for an
            unconditioned estimator).
        rngs: the model's :class:`flax.nnx.Rngs` (one ``params`` key is drawn).
        estimator: an :class:`~sgjax.estimators.Estimator`, its name
            (``sgjax.estimators.ESTIMATORS``) or an ``(init, apply)`` pair.
        mode, lam, prop, loss_reduction: as :func:`sgjax.interface.sg_interface`; the
            values given here are the defaults of every call.
        dtype: the SG parameters' dtype.

    Calling it, ``sg(h, context, lam=None, mode=None)``, returns ``h`` (identity forward);
    ``lam`` and ``mode`` override the constructor's for that call (``lam`` may be traced:
    BP(λ) annealing inside ``nnx.jit``). Pass ``context=None`` only to an unconditioned
    estimator: to evaluate a model without labels, skip the interface (it is the identity
    going forward anyway).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> sg = SGInterface((6, 6, 4), 10, estimator="conv", rngs=nnx.Rngs(0))
        >>> sorted(nnx.to_pure_dict(nnx.state(sg, SGParam))["theta"]["out"])
        ['K', 'K_y', 'c']
        >>> sg.sg_params()["hidden"]                      # the empty tree is kept
        []
    """

    def __init__(
        self,
        h_shape: Sequence[int],
        context_dim: int = 0,
        *,
        rngs: nnx.Rngs,
        estimator: Any = "conditioned",
        mode: str = "apply",
        lam: float = 0.0,
        prop: float = 0.0,
        loss_reduction: str | float = "mean",
        dtype: Any = jnp.float32,
    ):
        where = "SGInterface"
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{where}: `rngs` must be an nnx.Rngs, got {type(rngs).__name__}")
        _, needs_context = interface._module_apply(estimator, where)
        if needs_context and int(context_dim) < 1:
            raise ValueError(
                f"{where}: the estimator is conditioned on a context (the labels) but "
                f"`context_dim` is {context_dim!r}; pass the number of classes, or use an "
                "unconditioned estimator such as 'linear'"
            )
        if not isinstance(estimator, str) and not (
            hasattr(estimator, "init") or (isinstance(estimator, tuple) and callable(estimator[0]))
        ):
            raise TypeError(
                f"{where}: `estimator` must be able to create its parameters: an sgjax "
                f"Estimator, its name or an (init, apply) pair; got {type(estimator).__name__}"
            )
        theta = interface.init_sg(
            rngs.params(), h_shape, context_dim, estimator=estimator, dtype=dtype
        )
        self.h_shape = tuple(int(d) for d in h_shape)
        self.context_dim = int(context_dim)
        self.estimator = nnx.static(estimator)
        self.mode, self.lam, self.prop, self.loss_reduction = mode, lam, prop, loss_reduction
        self.theta = nnx.data(jax.tree.map(SGParam, theta))
        # Validate the settings once, now, on a one-example batch (raises naming them).
        h = jax.ShapeDtypeStruct((1, *self.h_shape), dtype)
        c = jax.ShapeDtypeStruct((1, self.context_dim), dtype) if needs_context else None
        jax.eval_shape(
            lambda th, h, c: interface.sg_interface(
                h, th, c, estimator=estimator, mode=mode, lam=lam, prop=prop,
                loss_reduction=loss_reduction,
            ),
            theta, h, c,
        )  # fmt: skip

    def sg_params(self) -> Any:
        """The SG module's parameters as a plain pytree of arrays (the estimator's)."""
        return jax.tree.map(lambda v: v.get_value(), self.theta, is_leaf=_is_var)

    def __call__(
        self,
        h: jax.Array,
        context: Any = None,
        *,
        lam: float | jax.Array | None = None,
        mode: str | None = None,
    ) -> jax.Array:
        return interface.sg_interface(
            h,
            self.sg_params(),
            context,
            estimator=self.estimator,
            mode=self.mode if mode is None else mode,
            lam=self.lam if lam is None else lam,
            prop=self.prop,
            loss_reduction=self.loss_reduction,
        )
