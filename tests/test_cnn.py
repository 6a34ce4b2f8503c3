"""Convolutional stages and the convolutional SG module (issue 13, item 4).

References are independent of the code under test: numpy loops for the convolutions and
the pooling, ``jax.grad`` of the whole loss for backprop, closed-form exact SG modules for
the rule on conv activations. Tiny images and channels keep the CPU time small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import estimators, losses, nets, rules, train


def _np_conv_same_or_valid(h, K, stride, padding):
    """Cross-correlation, NHWC × HWIO, by loops (SAME: output ceil(n/s), pad split low-first
    as in XLA: low = total // 2)."""
    b, H, W, _ = h.shape
    kh, kw, _, co = K.shape
    sh, sw = stride
    if padding == "SAME":
        oh, ow = -(-H // sh), -(-W // sw)
        ph = max((oh - 1) * sh + kh - H, 0)
        pw = max((ow - 1) * sw + kw - W, 0)
        h = np.pad(h, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    out = np.zeros((b, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = h[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, K)
    return out


def _np_pool(a, size, kind):
    b, H, W, C = a.shape
    ph, pw = size
    a = a[:, : H // ph * ph, : W // pw * pw, :].reshape(b, H // ph, ph, W // pw, pw, C)
    return a.max(axis=(2, 4)) if kind == "max" else a.mean(axis=(2, 4))


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding="SAME", pool="max", activation="relu"),
        dict(kernel_size=(2, 3), padding="VALID", stride=(1, 2), pool="avg", activation="tanh"),
        dict(kernel_size=3, padding="SAME", stride=2, pool=None, activation="identity"),
    ],
)
def test_conv_stage_matches_a_numpy_reference(kw):
    rng = np.random.default_rng(0)
    stage = nets.conv2d((7, 6, 2), 3, **kw)
    theta = stage.init(jax.random.key(1))
    theta = {**theta, "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
    h = rng.normal(size=(2, 7, 6, 2)).astype(np.float32)
    got = np.asarray(stage.apply(theta, jnp.asarray(h)))
    stride = kw.get("stride", 1)
    stride = (stride, stride) if isinstance(stride, int) else stride
    a = _np_conv_same_or_valid(h, np.asarray(theta["W"]), stride, kw["padding"])
    a = a + np.asarray(theta["b"])
    a = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "identity": lambda v: v}[
        kw["activation"]
    ](a)
    if kw["pool"]:
        a = _np_pool(a, (2, 2), kw["pool"])
    assert got.shape == (2, *stage.out_shape) == a.shape
    np.testing.assert_allclose(got, a, rtol=1e-5, atol=1e-5)


def test_conv_shapes_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match=r"conv2d: `in_shape` must be a per-example NHWC"):
        nets.conv2d((28, 28), 4)
    with pytest.raises(ValueError, match=r"`kernel_size`.*VALID|does not fit the input 2x2"):
        nets.conv2d((2, 2, 1), 4, 3, padding="VALID")
    with pytest.raises(ValueError, match=r"`pool_size` \(4, 4\) is larger"):
        nets.conv2d((3, 3, 1), 4, pool="max", pool_size=4)
    with pytest.raises(ValueError, match=r"stage 1 outputs shape \(4, 4, 2\) but stage 2"):
        nets.network([nets.conv2d((8, 8, 1), 2, pool="max"), nets.flatten_dense((8, 8, 2), 3)])
    net = nets.cnn((8, 8, 1), (2,), 3)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 8, 8, 1\), got \(4, 64\)"):
        net.apply(net.init(jax.random.key(0)), jnp.zeros((4, 64)))
    with pytest.raises(ValueError, match=r"conv estimator: `h_shape` must be a per-example NHWC"):
        estimators.conv().init(jax.random.key(0), (16,), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        estimators.conv(2)


def _tiny_cnn(norm=None):
    return nets.cnn((6, 6, 1), (2, 3), 4, pool="max", norm=norm)


@pytest.mark.parametrize("norm", [None, "batch"])
def test_backprop_through_conv_stages_equals_jax_grad(norm):
    net = _tiny_cnn(norm)
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, 6, 6, 1)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3, 1])
    out = rules.backprop().gradients((), net, params, x, y, losses.softmax_cross_entropy)
    ref = jax.grad(lambda p: losses.softmax_cross_entropy.fn(net.apply(p, x), y))(params)
    for a, b in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert out.signals[0].shape == (5, 3, 3, 2)  # NHWC signals at the conv boundaries


@pytest.mark.parametrize("use_y", [True, False])
def test_conv_sg_is_zero_at_init(use_y):
    sg = estimators.conv(3, use_y=use_y)
    theta = sg.init(jax.random.key(0), (4, 5, 3), 6)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(theta["out"]))
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 4, 5, 3)), jnp.float32)
    y = jax.nn.one_hot(jnp.array([0, 5, 2]), 6)
    out = sg.apply(theta, h, y)
    assert out.shape == h.shape
    assert float(jnp.abs(out).max()) == 0.0
    # with hidden convolutions only the output layer is zero, and the output still is
    sg2 = estimators.conv(3, hidden=(4,), use_y=use_y)
    theta2 = sg2.init(jax.random.key(0), (4, 5, 3), 6)
    assert float(jnp.abs(theta2["hidden"][0]["K"]).max()) > 0
    assert float(jnp.abs(sg2.apply(theta2, h, y)).max()) == 0.0


def test_conv_sg_matches_a_numpy_reference_with_the_label_as_channels():
    rng = np.random.default_rng(2)
    sg = estimators.conv(3)
    theta = sg.init(jax.random.key(0), (5, 4, 2), 3)
    out = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in theta["out"].items()}
    theta = {**theta, "out": out}
    h = rng.normal(size=(2, 5, 4, 2)).astype(np.float32)
    y = np.array([[1, 0, 0], [0.2, 0.5, 0.3]], np.float32)  # one-hot and a soft label
    tiled = np.broadcast_to(y[:, None, None, :], (2, 5, 4, 3))
    ref = (
        _np_conv_same_or_valid(h, np.asarray(out["K"]), (1, 1), "SAME")
        + _np_conv_same_or_valid(tiled, np.asarray(out["K_y"]), (1, 1), "SAME")
        + np.asarray(out["c"])
    )
    got = np.asarray(sg.apply(theta, jnp.asarray(h), jnp.asarray(y)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_y", [True, False])
def test_conditioned_conv_sg_uses_the_label_after_one_update(use_y):
    sg = estimators.conv(3, use_y=use_y)
    theta = sg.init(jax.random.key(0), (4, 4, 2), 3)
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(6, 4, 4, 2)), jnp.float32)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    y = jax.nn.one_hot(labels, 3)
    target = jnp.asarray(rng.normal(size=(6, 4, 4, 2)), jnp.float32) + labels[
        :, None, None, None
    ].astype(jnp.float32)

    def sg_loss(th):
        return jnp.mean(jnp.sum(jnp.square(sg.apply(th, h, y) - target), axis=(1, 2, 3)))

    theta = jax.tree.map(lambda p, g: p - 0.01 * g, theta, jax.grad(sg_loss)(theta))
    h1 = h[:1]
    a = sg.apply(theta, h1, jax.nn.one_hot(jnp.array([0]), 3))
    b = sg.apply(theta, h1, jax.nn.one_hot(jnp.array([2]), 3))
    diff = float(jnp.abs(a - b).max())
    if use_y:
        assert diff > 1e-3
    else:
        assert diff == 0.0
    assert float(jnp.abs(a).max()) > 0  # the update moved the module at all


@pytest.mark.parametrize("estimator", ["conv", "conv_unconditioned"])
def test_zero_sg_leaves_the_conv_stages_unchanged_after_one_step(estimator):
    net = _tiny_cnn()
    rule = rules.synthetic_gradients(estimator, at="all")
    opt = optax.adam(1e-2)
    state = train.init(jax.random.key(0), net, rule, opt)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 6, 6, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, size=8), jnp.int32)
    new, metrics = jax.jit(train.make_step(net, rule, "xent", opt))(state, (x, y))
    assert bool(metrics["finite"])
    for i in (0, 1):  # the two conv stages below the SG modules
        for a, b in zip(jax.tree.leaves(new.params[i]), jax.tree.leaves(state.params[i])):
            assert np.array_equal(a, b), f"stage {i + 1} moved under a zero SG"
    assert not np.array_equal(new.params[2]["W"], state.params[2]["W"])  # the head trains
    # the top SG module learns from the head's true gradient; the one below bootstraps
    # from the (still zero) module above it, so its target and update are zero
    top, low = new.rule_state.params[-1], new.rule_state.params[0]
    assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(top)) > 0
    assert max(float(jnp.abs(v).max()) for v in jax.tree.leaves(low)) == 0


def test_exact_affine_sg_on_conv_activations_equals_backprop():
    """Linear CNN + MSE: ∂ℓ_b/∂h = (flat(h)W + b − y)Wᵀ, so SG = hA + yB + C with A = WWᵀ,
    B = −Wᵀ, C = bWᵀ is exact (paper.md §6 item 1); the SG rule must then give backprop's
    gradients and a zero SG loss on NHWC activations."""
    with jax.enable_x64(True):
        net = nets.network(
            [
                nets.conv2d((5, 5, 1), 2, 3, "identity", pool="avg", dtype=jnp.float64),
                nets.flatten_dense((2, 2, 2), 3, dtype=jnp.float64),
            ]
        )
        params = net.init(jax.random.key(0))
        rng = np.random.default_rng(5)
        params = (params[0], {**params[1], "b": jnp.asarray(rng.normal(size=3))})
        x = jnp.asarray(rng.normal(size=(6, 5, 5, 1)))
        y = jnp.asarray(rng.normal(size=(6, 3)))  # real regression targets
        W, b = params[1]["W"], params[1]["b"]
        module = {"A": W @ W.T, "B": -W.T, "C": b @ W.T}
        ref = rules.backprop().gradients((), net, params, x, y, losses.mse)
        for targets in ("true", "bootstrap"):
            rule = rules.synthetic_gradients("conditioned", at="all", targets=targets)
            state = rules.RuleState(params=(module,))
            out = rule.gradients(state, net, params, x, y, losses.mse)
            for a, r in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref.grads)):
                np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-14)
            assert float(out.sg_loss[0]) < 1e-24


def test_exact_conv_sg_equals_backprop_when_the_gradient_is_a_label_map():
    """Upper stage p = mean_{pixels}(h) V + c with the linear loss ℓ = −⟨p, y⟩: the true
    ∂ℓ_b/∂h_b is −y_b Vᵀ / (H·W) at every pixel. A conv SG whose label kernel has that as
    its centre tap (all else 0) is exact, so stage 1 must get backprop's gradient."""
    H = W = 4
    lin = losses.Loss(
        "linear",
        lambda p, y: -jnp.mean(jnp.sum(p * losses.as_target(y, p.shape[-1]), -1)),
        lambda p, y: -losses.as_target(y, p.shape[-1], p.dtype),
    )

    def head_init(key):
        return {"V": jax.random.normal(key, (3, 5)), "c": jnp.zeros(5)}

    head = nets.Stage(
        head_init, lambda th, h: h.mean(axis=(1, 2)) @ th["V"] + th["c"], (H, W, 3), (5,)
    )
    net = nets.network([nets.conv2d((H, W, 2), 3, 3, "tanh"), head])
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(4, H, W, 2)), jnp.float32)
    y = jnp.array([0, 4, 2, 1])
    sg = estimators.conv(3)
    theta = sg.init(jax.random.key(0), (H, W, 3), 5)
    K_y = theta["out"]["K_y"].at[1, 1].set(-params[1]["V"].T / (H * W))
    theta = {**theta, "out": {**theta["out"], "K_y": K_y}}
    ref = rules.backprop().gradients((), net, params, x, y, lin)
    out = rules.synthetic_gradients(sg, at="all").gradients(
        rules.RuleState(params=(theta,)), net, params, x, y, lin
    )
    for a, r in zip(jax.tree.leaves(out.grads[0]), jax.tree.leaves(ref.grads[0])):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(ref.grads[0]["W"]).max()) > 1e-3  # a gradient that could differ
    assert float(out.sg_loss[0]) < 1e-10


@pytest.mark.mnist
def test_dni_cnn_smoke(tmp_path, mnist_dir):
    from sgjax.apps.experiments import cnn
    from sgjax.apps.experiments import common as C

    ctx = C.Context(out=tmp_path / "dni-cnn", scale="smoke", data_dir=str(mnist_dir))
    res = cnn.run(ctx)
    assert (ctx.out / "dni_cnn.png").read_bytes()[:4] == b"\x89PNG"
    report = (ctx.out / "report.md").read_text()
    assert "| CNN mnist |" in report and "](dni_cnn.png)" in report
    errs = {m: res["runs"][f"mnist/{m}"]["test_error"] for m in cnn.METHODS}
    assert all(0.0 <= e <= 1.0 for e in errs.values())
    assert errs["backprop"] < 0.8  # 30 steps already beat chance (0.9)
    assert set(res["claims"]) == {
        "mnist: cDNI test error ≤ Bprop + 0.5 pp",
        "mnist: No Bprop worse than every trained variant",
    }
