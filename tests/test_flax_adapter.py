"""The flax NNX adapter equals the pure-function path on the same parameters.

Each test builds one model twice — as flax NNX modules through
:mod:`sgjax.flax_adapter`, and as pure sgjax stages — from the *same* parameter values,
trains both with the same rule, optimiser and batches, and compares losses and final
parameters. Both paths run the same float32 operations in the same order, so they agree
to rounding: tolerance rtol = 1e-5, atol = 1e-6 (float32) on parameters after training,
and 1e-6 relative on single-step gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_trees_close

from sgjax import estimators, flax_adapter, losses, nets, rules, train
from sgjax.infra.data import digits

RTOL, ATOL = 1e-5, 1e-6  # float32 after several optimiser steps
STEPS = 6


@pytest.fixture(scope="module")
def data():
    ds = digits()
    return ds.x_train[:256], ds.y_train[:256]


def _nnx_mlp(sizes, seed=0):
    rngs = nnx.Rngs(seed)
    blocks: list = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        blocks += [nnx.Linear(a, b, rngs=rngs), nnx.relu]
    blocks.append(nnx.Linear(sizes[-2], sizes[-1], rngs=rngs))
    return blocks


def _as_dense(params):
    return tuple({"W": p["kernel"], "b": p["bias"]} for p in params)


def _conv_stage(in_shape, features, *, flatten_in=False, flatten=False):
    """A pure conv + ReLU stage with nnx.Conv's conventions (NHWC, HWIO, SAME)."""
    H, W, C = in_shape

    def apply(theta, h):
        if flatten_in:
            h = h.reshape(h.shape[0], H, W, C)
        a = jax.lax.conv_general_dilated(
            h, theta["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        a = jax.nn.relu(a + theta["bias"])
        return a.reshape(a.shape[0], -1) if flatten else a

    out = (H * W * features,) if flatten else (H, W, features)
    shape_in = (H * W * C,) if flatten_in else tuple(in_shape)

    def init(key):  # the tests pass the NNX parameters; this only fixes shapes and dtype
        return {"kernel": jnp.zeros((3, 3, C, features)), "bias": jnp.zeros((features,))}

    return nets.Stage(init, apply, shape_in, out, None, "conv")


def _train(net, params, rule, x, y, *, key=1):
    opt = optax.adam(1e-2)
    state = train.init(jax.random.key(key), net, rule, opt)
    state = state._replace(params=params, opt_state=opt.init(params))
    step = jax.jit(train.make_step(net, rule, losses.softmax_cross_entropy, opt))
    data = train.batches(x, y, 32, seed=0)
    history = []
    for _ in range(STEPS):
        state, m = step(state, tuple(map(jnp.asarray, next(data))))
        history.append(float(m["loss"]))
    return state, np.array(history)


_assert_trees_close = functools.partial(assert_trees_close, rtol=RTOL, atol=ATOL)


def _moved(before, after):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(before, after))


RULES = {
    "backprop": rules.backprop,
    "sg": rules.synthetic_gradients,
    "sg-middle-true": lambda: rules.synthetic_gradients(at="middle", targets="true"),
    "dfa": rules.direct_feedback_alignment,
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_nnx_mlp_trains_like_pure_mlp(data, name):
    x, y = data
    blocks = _nnx_mlp([64, 32, 32, 10])
    net, params = flax_adapter.network_from_nnx(blocks, x[:1])
    pure = nets.mlp([64, 32, 32, 10])
    assert [s.out_shape for s in net.stages] == [s.out_shape for s in pure.stages]
    rule = RULES[name]()
    s_nnx, l_nnx = _train(net, params, rule, x, y)
    s_pure, l_pure = _train(pure, _as_dense(params), rule, x, y)
    np.testing.assert_allclose(l_nnx, l_pure, rtol=RTOL)
    _assert_trees_close(_as_dense(s_nnx.params), s_pure.params)
    _assert_trees_close(s_nnx.rule_state.params, s_pure.rule_state.params, allow_empty=True)
    # The comparison means something only if the lowest stage actually trained.
    assert _moved(jax.tree.leaves(params[0]), jax.tree.leaves(s_nnx.params[0])) > 1e-3


def test_nnx_mlp_single_step_gradients_equal(data):
    x, y = (jnp.asarray(a[:16]) for a in data)
    blocks = _nnx_mlp([64, 16, 16, 10], seed=3)
    net, params = flax_adapter.network_from_nnx(blocks, x)
    pure = nets.mlp([64, 16, 16, 10])
    rule = rules.synthetic_gradients()
    state = rule.init(jax.random.key(0), net)
    # Non-zero SG parameters, so that every stage receives a signal on this one step.
    state = state._replace(
        params=jax.tree.map(
            lambda a: 0.1 * jax.random.normal(jax.random.key(a.size), a.shape), state.params
        )
    )
    out_n = rule.gradients(state, net, params, x, y, losses.softmax_cross_entropy)
    out_p = rule.gradients(state, pure, _as_dense(params), x, y, losses.softmax_cross_entropy)
    for g_n, g_p in zip(_as_dense(out_n.grads), out_p.grads):
        for k in ("W", "b"):
            np.testing.assert_allclose(g_n[k], g_p[k], rtol=1e-6, atol=1e-7)
    _assert_trees_close(out_n.rule_grads, out_p.rule_grads)


def _nnx_cnn(seed=0):
    rngs = nnx.Rngs(seed)
    return [
        lambda x: x.reshape(x.shape[0], 8, 8, 1),
        nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs),
        nnx.relu,
        nnx.Conv(4, 4, kernel_size=(3, 3), rngs=rngs),
        nnx.relu,
        lambda a: a.reshape(a.shape[0], -1),
        nnx.Linear(8 * 8 * 4, 10, rngs=rngs),
    ]


def _flatten_then(stage, in_shape):
    """``stage`` with a flatten in front of it (where the adapter now puts a flatten)."""
    return stage._replace(
        apply=lambda theta, h: stage.apply(theta, h.reshape(h.shape[0], -1)),
        in_shape=tuple(in_shape),
    )


def _pure_cnn():
    return nets.network(
        [
            _conv_stage((8, 8, 1), 4, flatten_in=True),
            _conv_stage((8, 8, 4), 4),
            _flatten_then(nets.dense(256, 10, "identity"), (8, 8, 4)),
        ]
    )


@pytest.mark.parametrize("name", ["backprop", "sg"])
def test_nnx_cnn_trains_like_pure_cnn(data, name):
    x, y = data
    net, params = flax_adapter.network_from_nnx(_nnx_cnn(), x[:1])
    # the flatten joins the Linear: the boundary keeps the conv's (H, W, C)
    assert [s.out_shape for s in net.stages] == [(8, 8, 4), (8, 8, 4), (10,)]
    pure = _pure_cnn()
    pure_params = (params[0], params[1], _as_dense(params[2:])[0])
    rule = RULES[name]()
    s_nnx, l_nnx = _train(net, params, rule, x, y)
    s_pure, l_pure = _train(pure, pure_params, rule, x, y)
    np.testing.assert_allclose(l_nnx, l_pure, rtol=RTOL)
    _assert_trees_close(s_nnx.params[:2], s_pure.params[:2])
    _assert_trees_close(_as_dense(s_nnx.params[2:]), s_pure.params[2:])
    _assert_trees_close(s_nnx.rule_state.params, s_pure.rule_state.params, allow_empty=True)
    assert _moved(jax.tree.leaves(params[0]), jax.tree.leaves(s_nnx.params[0])) > 1e-3


def test_feedback_alignment_on_nnx_linear_equals_pure(data):
    x, y = data
    blocks = _nnx_mlp([64, 24, 24, 10], seed=5)
    net, params = flax_adapter.network_from_nnx(blocks, x[:1])
    pure = nets.mlp([64, 24, 24, 10])
    B = rules.feedback_alignment().init(jax.random.key(9), pure).fixed
    rule = rules.feedback_alignment(B=B)
    s_nnx, l_nnx = _train(net, params, rule, x, y)
    s_pure, l_pure = _train(pure, _as_dense(params), rule, x, y)
    np.testing.assert_allclose(l_nnx, l_pure, rtol=RTOL)
    _assert_trees_close(_as_dense(s_nnx.params), s_pure.params)


def test_feedback_alignment_on_conv_block_is_a_clear_error(data):
    net, _ = flax_adapter.network_from_nnx(_nnx_cnn(), data[0][:1])
    with pytest.raises(TypeError, match="feedback_apply"):
        rules.feedback_alignment().init(jax.random.key(0), net)


class _ConditionedSG(nnx.Module):
    """SG(h, y) = hA + yB + C as an NNX module, zero-initialised."""

    def __init__(self, h_shape, y_dim, rngs):
        (d,) = h_shape
        zeros = nnx.initializers.zeros
        self.A = nnx.Linear(d, d, use_bias=False, kernel_init=zeros, rngs=rngs)
        self.B = nnx.Linear(y_dim, d, kernel_init=zeros, rngs=rngs)  # its bias is C

    def __call__(self, h, y):
        return self.A(h) + self.B(y)


def test_nnx_estimator_equals_builtin_conditioned(data):
    x, y = data
    blocks = _nnx_mlp([64, 32, 32, 10], seed=2)
    net, params = flax_adapter.network_from_nnx(blocks, x[:1])
    rule_nnx = rules.synthetic_gradients(flax_adapter.estimator_from_nnx(_ConditionedSG))
    rule_ref = rules.synthetic_gradients(estimators.conditioned())
    s_nnx, l_nnx = _train(net, params, rule_nnx, x, y)
    s_ref, l_ref = _train(net, params, rule_ref, x, y)
    np.testing.assert_allclose(l_nnx, l_ref, rtol=RTOL)
    _assert_trees_close(s_nnx.params, s_ref.params)
    for m_nnx, m_ref in zip(s_nnx.rule_state.params, s_ref.rule_state.params):
        np.testing.assert_allclose(m_nnx["A"]["kernel"], m_ref["A"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(m_nnx["B"]["kernel"], m_ref["B"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(m_nnx["B"]["bias"], m_ref["C"], rtol=RTOL, atol=ATOL)
        assert float(jnp.abs(m_ref["A"]).max()) > 0  # the SG modules did learn


def test_nonzero_nnx_estimator_is_rejected():
    class Bad(nnx.Module):
        def __init__(self, h_shape, y_dim, rngs):
            self.out = nnx.Linear(h_shape[0] + y_dim, h_shape[0], rngs=rngs)

        def __call__(self, h, y):
            return self.out(jnp.concatenate([h, y], -1))

    with pytest.raises(ValueError, match="output exactly zero"):
        flax_adapter.estimator_from_nnx(Bad).init(jax.random.key(0), (4,), 3)


def test_update_nnx_writes_trained_params_back(data):
    x, y = data
    blocks = _nnx_mlp([64, 16, 10], seed=4)
    net, params = flax_adapter.network_from_nnx(blocks, x[:1])
    state, _ = _train(net, params, rules.synthetic_gradients(), x, y)
    flax_adapter.update_nnx(blocks, state.params)
    h = jnp.asarray(x[:8])
    for b in blocks:
        h = b(h)
    np.testing.assert_allclose(h, net.apply(state.params, jnp.asarray(x[:8])), rtol=1e-6)


def test_batchnorm_in_train_mode_is_a_clear_error():
    rngs = nnx.Rngs(0)
    blocks = [nnx.Linear(4, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)]
    with pytest.raises(ValueError, match="non-parameter state"):
        flax_adapter.network_from_nnx(blocks, jnp.ones((2, 4)))
    for b in blocks:  # in eval mode the running averages are constants: accepted
        b.eval()
    net, _ = flax_adapter.network_from_nnx(blocks, jnp.ones((2, 4)))
    assert net.depth == 2


def test_bad_blocks_are_type_errors():
    with pytest.raises(TypeError, match=r"nnx\.Module or a callable"):
        flax_adapter.network_from_nnx([nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 3], jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="sequence of flax NNX modules"):
        flax_adapter.network_from_nnx("linear", jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="example_input"):
        flax_adapter.network_from_nnx([nnx.Linear(2, 2, rngs=nnx.Rngs(0))], [1.0, 2.0])


class _TanhDense(nnx.Module):
    """A user block with its own FA path: ``feedback(B, h)`` as in sgjax.nets.dense."""

    def __init__(self, a, b, rngs):
        self.lin = nnx.Linear(a, b, rngs=rngs)

    def __call__(self, h):
        return jnp.tanh(self.lin(h))

    def feedback(self, B, h):
        hB = h @ B.T
        a = jax.lax.stop_gradient(h) @ self.lin.kernel[...] + (hB - jax.lax.stop_gradient(hB))
        return jnp.tanh(a + self.lin.bias[...])


def test_feedback_method_of_a_user_block_is_used(data):
    x, y = (jnp.asarray(a[:16]) for a in data)
    rngs = nnx.Rngs(6)
    blocks = [_TanhDense(64, 16, rngs), _TanhDense(16, 16, rngs), nnx.Linear(16, 10, rngs=rngs)]
    net, params = flax_adapter.network_from_nnx(blocks, x)
    pure = nets.mlp([64, 16, 16, 10], "tanh")
    pure_params = tuple({"W": p["lin"]["kernel"], "b": p["lin"]["bias"]} for p in params[:2])
    pure_params += _as_dense(params[2:])
    B = rules.feedback_alignment().init(jax.random.key(9), pure).fixed
    rule = rules.feedback_alignment(B=B)
    out_n = rule.gradients(rule.init(None, net), net, params, x, y, "xent")
    out_p = rule.gradients(rule.init(None, pure), pure, pure_params, x, y, "xent")
    for s_n, s_p in zip(out_n.signals, out_p.signals):
        np.testing.assert_allclose(s_n, s_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out_n.grads[0]["lin"]["kernel"], out_p.grads[0]["W"], atol=1e-7)


# --------------------------------------------------------------------------------------
# SG modules that fit the boundaries: conv SG at conv boundaries, a warning where a dense
# SG would dwarf the network.


def _conv_net(hw=16, *, flatten_in_block=False):
    r = nnx.Rngs(0)
    conv, flat = nnx.Conv(1, 4, (3, 3), rngs=r), (lambda a: a.reshape(a.shape[0], -1))
    head = [nnx.Linear(hw * hw * 4, 12, rngs=r), nnx.relu, nnx.Linear(12, 10, rngs=r)]
    if flatten_in_block:  # the flatten inside the conv's block: a flat boundary
        return [nnx.Sequential(conv, nnx.relu, flat), *head]
    return nnx.Sequential(conv, nnx.relu, flat, *head)


def test_a_dense_sg_dwarfing_the_network_is_named(recwarn):
    x = jnp.zeros((1, 16, 16, 1))
    d, k = 16 * 16 * 4, 10
    n_net = (9 * 4 + 4) + (d * 12 + 12) + (12 * 10 + 10)
    n_sg = d * d + d * k + d  # A, B, C of hA + yB + C, counted here by hand
    ratio = f"{n_sg / n_net:.0f}x"
    msg = rf"boundary 1 .* flat vector of {d}: .* {n_sg:,} parameters, {ratio} .* {n_net:,}"
    with pytest.warns(UserWarning, match=msg):
        flax_adapter.network_from_nnx(_conv_net(flatten_in_block=True), x)
    net, _ = flax_adapter.network_from_nnx(_conv_net(), x)  # the spatial boundary: silent
    assert [s.out_shape for s in net.stages] == [(16, 16, 4), (12,), (10,)]
    assert not [w for w in recwarn if "dwarf" in str(w.message) or "flat vector" in str(w.message)]


def test_estimator_per_boundary_puts_the_conv_sg_at_conv_boundaries():
    x = jax.random.normal(jax.random.key(0), (5, 16, 16, 1))
    net, params = flax_adapter.network_from_nnx(_conv_net(), x[:1])
    small = estimators.mlp((16,))
    est = flax_adapter.estimator_per_boundary(net, {2: small})
    rule = rules.synthetic_gradients(est)
    mods = rule.init(jax.random.key(1), net).params
    refs = {1: estimators.conv(), 2: small}
    hs = net.hidden(params, x)
    y = jax.nn.one_hot(jnp.arange(5) % 10, 10)
    for b, theta in zip((1, 2), mods):
        ref = refs[b]
        want = ref.init(jax.random.key(b), net.stages[b - 1].out_shape, 10)
        assert jax.tree.structure(theta) == jax.tree.structure(want)
        theta = jax.tree.map(lambda v: v + 0.1, theta)  # non-zero: the output is compared
        np.testing.assert_allclose(est.apply(theta, hs[b], y), ref.apply(theta, hs[b], y))
    n_sg = sum(v.size for v in jax.tree.leaves(mods))
    assert n_sg < sum(v.size for v in jax.tree.leaves(params))


def test_estimator_per_boundary_refuses_what_it_cannot_tell_apart():
    net = nets.mlp([6, 8, 8, 3])  # boundaries 1 and 2 are both (8,)
    with pytest.raises(ValueError, match=r"boundaries 1 and 2 share the per-example shape \(8,\)"):
        flax_adapter.estimator_per_boundary(net, {2: "mlp"})
    with pytest.raises(ValueError, match=r"boundaries must be in 1..3, got \[7\]"):
        flax_adapter.estimator_per_boundary(net, {7: "mlp"})


def test_estimator_per_boundary_names_a_module_that_dwarfs_the_network():
    net, params = flax_adapter.network_from_nnx(_conv_net(), jnp.zeros((1, 16, 16, 1)))
    n_net = sum(v.size for v in jax.tree.leaves(params))
    w = 1024  # estimators.mlp()'s default hidden widths (1024, 1024), on [h, y] of 12 + 10
    n_sg = (22 * w + w) + (w * w + w) + (w * 12 + 12)
    est = flax_adapter.estimator_per_boundary(net, {2: "mlp"})
    with pytest.warns(UserWarning, match=rf"mlp SG at boundary 2 .* {n_sg:,} parameters, "
                      rf"{n_sg / n_net:.0f}x the network's {n_net:,}"):  # fmt: skip
        est.init(jax.random.key(0), (12,), 10)
