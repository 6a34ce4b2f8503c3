"""sgjax.optim.sg_split: the SG modules get their own optax transformation.

Reference: with ``optax.sgd(a)`` for the model and ``optax.sgd(b)`` for the SG modules
every update is ``-a·g`` or ``-b·g``, leaf by leaf — written out here, per container kind
(plain dict, flax linen variables, flax NNX model in ``nnx.Optimizer``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sgjax.interface import init_sg, sg_interface
from sgjax.nnx_interface import SGInterface
from sgjax.optim import sg_split

A, B = 0.1, 7.0  # model and SG learning rates


def _ones_like_grads(tree, seed=0):
    leaves, td = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(td, [jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


def _check(updates, grads, is_sg_path):
    flat_u = jax.tree_util.tree_flatten_with_path(updates)[0]
    flat_g = jax.tree.leaves(grads)
    seen = set()
    for (path, u), g in zip(flat_u, flat_g, strict=True):
        sg = is_sg_path(jax.tree_util.keystr(path))
        seen.add(sg)
        np.testing.assert_allclose(u, -(B if sg else A) * g, rtol=1e-6)
    assert seen == {True, False}


def test_plain_dict():
    k = jax.random.key(0)
    params = {"layers": [{"W": jnp.ones((3, 4))}], "sg": [init_sg(k, (4,), 2) for _ in range(2)]}
    tx = sg_split(optax.sgd(A), optax.sgd(B), params)
    grads = _ones_like_grads(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    _check(updates, grads, lambda p: p.startswith("['sg']"))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x, c):
        x = nn.Dense(4)(x)
        sg = self.param("sg0", lambda key: init_sg(key, (4,), 2))
        return nn.Dense(2)(sg_interface(x, sg, c))


def test_linen_variables():
    v = LinenMLP().init(jax.random.key(0), jnp.ones((1, 3)), jnp.ones((1, 2)))
    tx = sg_split(optax.sgd(A), optax.sgd(B), v)
    grads = _ones_like_grads(v)
    updates, _ = tx.update(grads, tx.init(v), v)
    _check(updates, grads, lambda p: "['sg0']" in p)


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 2, (3, 3), rngs=rngs)
        self.sg = SGInterface((4, 4, 2), 2, estimator="conv", rngs=rngs)  # holds `hidden: []`
        self.out = nnx.Linear(32, 2, rngs=rngs)

    def __call__(self, x, c):
        h = self.sg(self.conv(x), c)
        return self.out(h.reshape(h.shape[0], -1))


def test_nnx_optimizer():
    model = NNXModel(nnx.Rngs(0))
    opt = nnx.Optimizer(model, sg_split(optax.sgd(A), optax.sgd(B), model), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 1))
    c = jax.nn.one_hot(jnp.array([0, 1, 1]), 2)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    grads = nnx.grad(lambda m: jnp.sum(m(x, c) ** 2))(model)
    opt.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    delta = jax.tree.map(lambda a, b: a - b, after, before)
    _check(delta, nnx.to_pure_dict(grads), lambda p: p.startswith("['sg']"))


def test_nothing_found_or_everything_found_is_refused():
    with pytest.raises(ValueError, match=r"found no SG parameter .* 'sg<digits>'"):
        sg_split(optax.sgd(A), optax.sgd(B), {"W": jnp.ones(2), "sgd_momentum": jnp.ones(2)})
    with pytest.raises(ValueError, match="nothing is left for `tx`"):
        sg_split(optax.sgd(A), optax.sgd(B), {"sg": jnp.ones(2)})
    with pytest.raises(ValueError, match="no SGParam variable"):
        sg_split(optax.sgd(A), optax.sgd(B), nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    tx = sg_split(optax.sgd(A), optax.sgd(B), {"W": jnp.ones(2), "dni": jnp.ones(2)}, is_sg="dni")
    with pytest.raises(ValueError, match="parameter V was not in the tree"):
        tx.init({"V": jnp.ones(2), "dni": jnp.ones(2)})
