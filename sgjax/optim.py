"""Give synthetic-gradient modules their own optax transformation, in one call.

The SG modules often want their own learning rate or schedule (the CLI's ``--sg-lr``).
:func:`sg_split` returns one :class:`optax.GradientTransformation` that applies ``tx`` to
the model's parameters and ``sg_tx`` to the SG modules', wherever they live:

* an :class:`flax.nnx.Module` (or its ``nnx.State``): the SG parameters are the
  :class:`sgjax.nnx_interface.SGParam` variables (what :class:`~sgjax.nnx_interface.SGInterface`
  creates) — use the result as ``nnx.Optimizer(model, sg_split(...), wrt=nnx.Param)``;
* a plain pytree or a flax linen variable tree: the SG parameters are the leaves under a
  key named ``sg`` or ``sg`` followed by digits or ``_…`` (``v["sg"][0]``,
  ``self.param("sg0", ...)``, ``"sg_conv"``), or those chosen by ``is_sg``.

The labels are fixed from the tree given here, by path; a tree of another structure
passed to ``init``/``update`` later is refused naming the unknown path.

Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {"W": jnp.ones(2), "sg": [{"A": jnp.ones(2)}]}
    >>> tx = sg_split(optax.sgd(0.1), optax.sgd(1.0), params)
    >>> updates, _ = tx.update({"W": jnp.ones(2), "sg": [{"A": jnp.ones(2)}]}, tx.init(params))
    >>> updates["W"].tolist(), updates["sg"][0]["A"].tolist()
    ([-0.10000000149011612, -0.10000000149011612], [-1.0, -1.0])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from sgjax.nnx_interface import SGParam

_SG_KEY = re.compile(r"sg(\d+|_.*)?")


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return [(tuple(_key_name(k) for k in path), leaf) for path, leaf in leaves]


def _default_is_sg(path: tuple[str, ...]) -> bool:
    return any(_SG_KEY.fullmatch(k) for k in path)


def sg_split(
    tx: optax.GradientTransformation,
    sg_tx: optax.GradientTransformation,
    params: Any,
    *,
    is_sg: Callable[[tuple[str, ...]], bool] | str | None = None,
) -> optax.GradientTransformation:
    """``tx`` for the model's parameters, ``sg_tx`` for the SG modules' (see module docs).

    Args:
        tx: the model's optax transformation.
        sg_tx: the SG modules' (e.g. ``optax.adam(3e-4)``, or one with a schedule).
        params: the parameters — a pytree, a linen variable dict, an ``nnx.Module`` or an
            ``nnx.State`` — from which the split is fixed.
        is_sg: for a plain or linen tree: a key name (the leaves under a key of that exact
            name are the SG's) or a predicate on the path (a tuple of key names as
            strings). Default: keys ``sg``, ``sg0``, ``sg1``…, ``sg_…``. For NNX the SG
            parameters are found by their type (:class:`~sgjax.nnx_interface.SGParam`) and
            ``is_sg`` must be ``None``.

    Raises:
        ValueError: no SG parameter (or no model parameter) was found in ``params``.
    """
    where = "sg_split"
    if isinstance(params, nnx.Module):
        params = nnx.state(params)
    found = _paths(params)
    has_vars = any(isinstance(leaf, nnx.Variable) for _, leaf in found)
    if has_vars:
        if is_sg is not None:
            raise ValueError(
                f"{where}: for NNX the SG parameters are the SGParam variables; `is_sg` must "
                f"be None, got {is_sg!r}"
            )
        labels = {p: "sg" if isinstance(v, SGParam) else "model" for p, v in found}
        how = "no SGParam variable (create SG modules with sgjax.nnx_interface.SGInterface)"
    else:
        pred: Callable[[tuple[str, ...]], bool]
        if is_sg is None:
            pred = _default_is_sg
            how = "no key named 'sg', 'sg<digits>' or 'sg_…' (pass is_sg=)"
        elif isinstance(is_sg, str):
            name = is_sg
            pred = lambda path: name in path  # noqa: E731
            how = f"no key named {is_sg!r}"
        elif callable(is_sg):
            pred, how = is_sg, "no path for which `is_sg` is true"
        else:
            raise TypeError(
                f"{where}: `is_sg` must be a key name, a predicate on paths or None, got "
                f"{type(is_sg).__name__}"
            )
        labels = {p: "sg" if pred(p) else "model" for p, _ in found}
    n_sg = sum(v == "sg" for v in labels.values())
    if n_sg == 0:
        raise ValueError(f"{where}: found no SG parameter in `params`: {how}")
    if n_sg == len(labels):
        raise ValueError(
            f"{where}: every parameter in `params` was taken for an SG module's; nothing "
            "is left for `tx` — check `is_sg`"
        )

    def label_fn(tree: Any) -> Any:
        def one(path: Any, _leaf: Any) -> str:
            key = tuple(_key_name(k) for k in path)
            if key not in labels:
                raise ValueError(
                    f"{where}: parameter {'/'.join(key)} was not in the tree given to "
                    "sg_split; build the transformation from the parameters you train"
                )
            return labels[key]

        return jax.tree_util.tree_map_with_path(
            one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )

    return optax.multi_transform({"model": tx, "sg": sg_tx}, label_fn)
