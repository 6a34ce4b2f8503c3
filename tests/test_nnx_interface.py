"""sgjax.nnx_interface.SGInterface in the standard flax NNX training loop.

The reference is the dict API: the same model written as a pure function of plain
pytrees with :func:`sgjax.interface.sg_interface` (itself tested against the rules and
against ``jax.grad`` in ``test_interface.py``), trained with plain optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sgjax.interface import sg_interface
from sgjax.nnx_interface import SGInterface, SGParam

B, K = 6, 4  # batch, classes


class CNN(nnx.Module):
    """conv -> SG (conv estimator, SG + prop) -> flatten -> dense -> SG (cDNI) -> dense."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.sg_conv = SGInterface((5, 5, 3), K, estimator="conv", prop=0.1, rngs=rngs)
        self.dense = nnx.Linear(75, 8, rngs=rngs)
        self.sg_dense = SGInterface((8,), K, rngs=rngs)
        self.out = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x, y):
        c = jax.nn.one_hot(y, K)
        h = self.sg_conv(nnx.relu(self.conv(x)), c)
        h = self.sg_dense(jnp.tanh(self.dense(h.reshape(h.shape[0], -1))), c)
        return self.out(h)


def pure_cnn(p, x, y):
    """The dict API: the same model over a plain dict of arrays."""
    c = jax.nn.one_hot(y, K)
    h = jax.lax.conv_general_dilated(
        x, p["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    theta = {"hidden": [], **p["sg_conv"]["theta"]}  # nnx.to_pure_dict drops empty lists
    h = sg_interface(jax.nn.relu(h + p["conv"]["bias"]), theta, c, estimator="conv", prop=0.1)
    h = jnp.tanh(h.reshape(h.shape[0], -1) @ p["dense"]["kernel"] + p["dense"]["bias"])
    h = sg_interface(h, p["sg_dense"]["theta"], c)
    return h @ p["out"]["kernel"] + p["out"]["bias"]


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _model_with_live_sgs(seed=0):
    """A CNN whose SG modules are not zero, so every term of the backward pass counts."""
    model = CNN(nnx.Rngs(seed))
    state = nnx.state(model, SGParam)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    noisy = [0.3 * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(tree, noisy))
    return model


def _data(seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (B, 5, 5, 2)), jax.random.randint(ky, (B,), 0, K)


def _max_rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return max(
        float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-30))
        for u, v in zip(la, lb)
    )


def test_gradients_equal_the_dict_api():
    model, (x, y) = _model_with_live_sgs(), _data()
    grads = nnx.grad(lambda m: xent(m(x, y), y))(model)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    want = jax.grad(lambda p: xent(pure_cnn(p, x, y), y))(pure)
    got = nnx.to_pure_dict(grads)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(got["sg_conv"]))
    err = _max_rel(got, want)
    print(f"NNX vs dict API gradients: max relative difference {err:.2g}")
    assert err < 1e-6


def test_the_standard_nnx_loop_takes_the_dict_api_steps():
    """nnx.Optimizer(wrt=nnx.Param) + nnx.jit + nnx.value_and_grad, 4 Adam steps, against
    optax on the plain dict: the same parameters (the conv SG's tree holds an empty list)."""
    model, (x, y) = _model_with_live_sgs(), _data()
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.adam(1e-2)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss, grads = nnx.value_and_grad(lambda m: xent(m(x, y), y))(model)
        opt.update(model, grads)
        return loss

    @jax.jit
    def pure_step(p, s, x, y):
        loss, g = jax.value_and_grad(lambda p: xent(pure_cnn(p, x, y), y))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    s = tx.init(pure)
    for _ in range(4):
        loss = step(model, opt, x, y)
        pure, s, want = pure_step(pure, s, x, y)
        np.testing.assert_allclose(loss, want, rtol=1e-6)
    err = _max_rel(nnx.to_pure_dict(nnx.state(model, nnx.Param)), pure)
    print(f"after 4 Adam steps: max relative parameter difference {err:.2g}")
    assert err < 1e-5
    assert model.sg_conv.sg_params()["hidden"] == []


def test_split_merge_and_state_round_trip():
    """nnx.split/merge and the NNX checkpoint path (state -> pure dict -> a fresh model)."""
    model, (x, y) = _model_with_live_sgs(), _data()
    graphdef, state = nnx.split(model)
    again = nnx.merge(graphdef, state)
    g1 = nnx.to_pure_dict(nnx.grad(lambda m: xent(m(x, y), y))(again))
    g0 = nnx.to_pure_dict(nnx.grad(lambda m: xent(m(x, y), y))(model))
    assert _max_rel(g1, g0) == 0.0
    saved = nnx.to_pure_dict(nnx.state(model))  # what a checkpointer writes
    fresh = CNN(nnx.Rngs(7))
    restored = nnx.state(fresh)
    nnx.replace_by_pure_dict(restored, saved)
    nnx.update(fresh, restored)
    assert _max_rel(fresh.sg_conv.sg_params(), model.sg_conv.sg_params()) == 0.0
    assert isinstance(fresh.sg_conv.theta["out"]["K"], SGParam)


def test_a_traced_lam_in_the_module():
    model, (x, y) = _model_with_live_sgs(), _data()

    def grads(model, lam):
        def loss(m):
            c = jax.nn.one_hot(y, K)
            h = m.sg_conv(nnx.relu(m.conv(x)), c, lam=lam)
            return xent(m.out(jnp.tanh(m.dense(h.reshape(B, -1)))), y)

        return nnx.to_pure_dict(nnx.grad(loss)(model))

    got = nnx.jit(grads)(model, jnp.float32(0.5))
    assert _max_rel(got, grads(model, 0.5)) < 1e-6
    assert _max_rel(got["conv"], grads(model, 0.0)["conv"]) > 1e-3  # λ reaches the conv


def test_settings_are_checked_at_construction():
    with pytest.raises(ValueError, match="`context_dim` is 0"):
        SGInterface((8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`lam` \(λ\)"):
        SGInterface((8,), 3, lam=2.0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="create its parameters"):
        SGInterface((8,), 3, estimator=lambda th, h, c: h, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="NHWC"):
        SGInterface((8,), 3, estimator="conv", rngs=nnx.Rngs(0))


def test_orbax_checkpoint_round_trip(tmp_path):
    """flax's NNX checkpoint recipe: save nnx.state with orbax, restore into an abstract
    model (nnx.eval_shape), merge. The restored model takes the same gradients."""
    import orbax.checkpoint as ocp

    model, (x, y) = _model_with_live_sgs(), _data()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", nnx.state(model))
        ckpt.wait_until_finished()
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CNN(nnx.Rngs(7))))
        restored = nnx.merge(graphdef, ckpt.restore(tmp_path / "state", abstract))
    g0 = nnx.to_pure_dict(nnx.grad(lambda m: xent(m(x, y), y))(model))
    g1 = nnx.to_pure_dict(nnx.grad(lambda m: xent(m(x, y), y))(restored))
    assert _max_rel(g1, g0) == 0.0
    assert restored.sg_conv.sg_params()["hidden"] == []


def _user_pair():
    """A user's own (init, apply) module: SG(h) = h·w (per feature), w zero-initialised."""
    init = lambda key, shape, k, dtype=jnp.float32: {"w": jnp.zeros(shape[-1:], dtype)}  # noqa: E731
    return init, lambda th, h, c: h * th["w"]


@pytest.mark.parametrize(
    "name", [*sorted(n for n in __import__("sgjax").estimators.ESTIMATORS if n != "mlp"),
             "mlp-8", "user"],
)  # fmt: skip
def test_every_estimator_equals_the_dict_api(name):
    """Any estimator in SGInterface (registry ones; mlp with a small hidden layer; a user's
    pair): the gradients of a live module equal sg_interface's on the plain tree."""
    from sgjax import estimators

    est = {"mlp-8": estimators.mlp((8,)), "user": _user_pair()}.get(name, name)
    shape = (4, 4, 2) if str(name).startswith("conv") else (6,)
    sg = SGInterface(shape, K, estimator=est, rngs=nnx.Rngs(0))
    leaves, tree = jax.tree.flatten(nnx.state(sg, SGParam))
    keys = jax.random.split(jax.random.key(5), len(leaves))
    nnx.update(sg, jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, v.shape)
                                             for k, v in zip(keys, leaves)]))  # fmt: skip
    h = jax.random.normal(jax.random.key(6), (B, *shape))
    c = jax.nn.one_hot(jnp.arange(B) % K, K)
    w = jax.random.normal(jax.random.key(7), h.shape)  # a loss whose gradient is not uniform
    got = nnx.grad(lambda m, h: jnp.sum(jnp.tanh(m(h, c) * w)), argnums=(0, 1))(sg, h)
    theta = sg.sg_params()
    want = jax.grad(lambda th, h: jnp.sum(jnp.tanh(sg_interface(h, th, c, estimator=est) * w)),
                    argnums=(0, 1))(theta, h)  # fmt: skip
    assert _max_rel(nnx.to_pure_dict(got[0])["theta"], {k: v for k, v in want[0].items()
                                                        if jax.tree.leaves(v)}) == 0.0  # fmt: skip
    assert _max_rel(got[1], want[1]) == 0.0
    assert float(jnp.abs(got[1]).max()) > 0  # the live module sends a signal below


def test_nnx_variables_passed_as_sg_params_name_the_fix():
    """Before SGInterface, per-leaf nnx.Params in a module reached the estimator and failed
    inside it ("Triggering __jax_array__() during abstractification"), reported as
    sg_params made for another activation."""

    class PerLeaf(nnx.Module):
        def __init__(self):
            theta = SGInterface((5, 5, 3), K, estimator="conv", rngs=nnx.Rngs(0)).sg_params()
            self.sg = nnx.data(jax.tree.map(nnx.Param, theta))

        def __call__(self, h):
            return sg_interface(h, self.sg, jnp.eye(B, K), estimator="conv")

    with pytest.raises(TypeError, match=r"leaf at \['out'\]\['K'\] is a Param.*SGInterface"):
        PerLeaf()(jnp.ones((B, 5, 5, 3)))
