"""The stabilising options of the recurrent harness, each against a hand-written reference.

One window of an LSTM (state ``[h, c]``) in float64, from a random carried state and with
a random SG module (so every option changes something). The reference computes the
window's loss with a Python loop over the steps, the injected term ``⟨d, s_T⟩ / B`` with
``d`` built by hand for each option, and takes ``jax.grad``; the bootstrapped target is
``B ×`` the gradient at the window's first state, the SG's gradient that of the hand-written
regression ``mean_b ‖SG(input(s_0)) − target‖²``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax.recurrent import cells, core

B, T, I, O, H = 3, 3, 4, 5, 4  # batch, window, input, output widths; LSTM hidden
S = 2 * H


def _model() -> core.Model:
    return core.Model(cells.lstm(H), I, O, "xent")


def _ref_loss(model, p, s, x, y):
    total = 0.0
    for t in range(x.shape[0]):
        s, out = model.cell.apply(p["cell"], s, x[t])
        logits = out @ p["out"]["W"] + p["out"]["b"]
        logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        total = total + jnp.mean(-logp[jnp.arange(B), y[t]])
    return total, s


def _case(seed: int, k: int):
    r = np.random.default_rng(seed)
    model = _model()
    p = core.init_params(model, jax.random.key(seed), jnp.float64)
    theta = {
        "A": jnp.asarray(r.normal(size=(k, k)) * 0.5),
        "C": jnp.asarray(r.normal(size=(k,)) * 0.5),
    }
    s0 = jnp.asarray(r.normal(size=(B, S)) * 2.0)  # a large |c|: tanh and the clip matter
    x = jnp.asarray(r.normal(size=(T, B, I)))
    y = jnp.asarray(r.integers(0, O, size=(T, B)))
    one, c = jnp.ones(()), jnp.zeros((B, 1))
    win = core.Window(x, y, jnp.ones((T, B)), c, c, one, one)
    return model, p, theta, s0, x, y, win


def _reference(
    model, p, theta, s0, x, y, *, k, squash=False, clip=0.0, scale=1.0, inj=None, noise=None
):
    """(param grads, target, SG grads) by hand for one window with injection scale ``scale``
    (``noise``: a ``(B, k)`` direction injected instead, with each row's SG norm)."""
    inj = theta if inj is None else inj
    read = (lambda v: jnp.tanh(v)) if squash else (lambda v: v)

    def d_of(sT):
        d = (read(sT[:, :k]) @ inj["A"] + inj["C"]) * scale
        if clip:
            n = jnp.linalg.norm(d, axis=-1, keepdims=True)
            d = d * jnp.minimum(1.0, clip / n)
        if noise is not None:
            for b in range(B):  # row by row: the direction of noise, the length of d
                unit = noise[b] / jnp.sqrt(jnp.sum(noise[b] ** 2))
                d = d.at[b].set(unit * jnp.sqrt(jnp.sum(d[b] ** 2)))
        return d

    def total(params, s):
        loss, sT = _ref_loss(model, params, s, x, y)
        d = jax.lax.stop_gradient(d_of(sT))
        return loss + jnp.sum(d * sT[:, :k]) / B

    g_params, g_s = jax.grad(total, argnums=(0, 1))(p, s0)
    target = B * g_s[:, :k]

    def regression(th):
        return jnp.mean(jnp.sum((read(s0[:, :k]) @ th["A"] + th["C"] - target) ** 2, -1))

    return g_params, target, jax.grad(regression)(theta)


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"sg_dims": H},
        {"sg_squash": True},
        {"inject_clip": 0.05},
        {"sg_dims": H, "sg_squash": True, "inject_clip": 0.05, "decay": 0.5},
    ],
    ids=["plain", "sg-on-h", "tanh-input", "clip", "all"],
)
def test_window_gradients_match_the_hand_written_reference(opts):
    with jax.enable_x64(True):
        k = opts.get("sg_dims", 0) or S
        model, p, theta, s0, x, y, win = _case(1, k)
        h = core.harness(model, window=T, method="dni", **opts)
        # both sides jitted: one compile each rather than ~80 small eager programs
        out = jax.jit(lambda *a: core.window_grads(h, *a))(p, theta, s0, win)
        ref = functools.partial(
            _reference,
            model,
            k=k,
            squash=opts.get("sg_squash", False),
            clip=opts.get("inject_clip", 0.0),
            scale=opts.get("decay", 1.0),
        )
        g, target, g_theta = jax.jit(ref)(p, theta, s0, x, y)
        _close(out.grads, g)
        np.testing.assert_allclose(out.target, target, rtol=1e-9, atol=1e-12)
        _close(out.sg_grads, g_theta)
        assert out.target.shape == (B, k)


def test_the_clip_binds_some_rows_and_spares_others():
    # a clip limit between the rows' norms: a clip that scales every row, or none, fails
    with jax.enable_x64(True):
        model, p, theta, s0, x, y, win = _case(1, S)
        _, sT = _ref_loss(model, p, s0, x, y)
        norms = np.sort(np.asarray(jnp.linalg.norm(sT @ theta["A"] + theta["C"], axis=-1)))
        limit = float(0.5 * (norms[0] + norms[-1]))
        assert norms[0] < limit < norms[-1]
        h = core.harness(model, window=T, method="dni", inject_clip=limit)
        out = core.window_grads(h, p, theta, s0, win)
        g, target, _ = _reference(model, p, theta, s0, x, y, k=S, clip=limit)
        _close(out.grads, g)
        np.testing.assert_allclose(out.target, target, rtol=1e-9, atol=1e-12)


def test_warmup_ramps_the_injected_sg_from_zero():
    with jax.enable_x64(True):
        model, p, theta, s0, x, y, win = _case(2, S)
        h = core.harness(model, window=T, method="dni", warmup=4)
        opt = optax.sgd(0.0)  # no parameter moves: only the ramp changes between steps
        state = core.init(h, jax.random.key(0), opt, dtype=jnp.float64)
        state = state._replace(params=p, sg_params=theta, carry=s0)
        step = jax.jit(core.make_step(h, opt))
        for n, scale in ((0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)):
            st = state._replace(step=jnp.asarray(n, jnp.int32))
            out = core.window_grads(h, p, theta, s0, win._replace(inject=jnp.asarray(scale)))
            _, target, _ = _reference(model, p, theta, s0, x, y, k=S, scale=scale)
            np.testing.assert_allclose(out.target, target, rtol=1e-9, atol=1e-12)
            # the step applies the same ramp: its SG loss is that of this target
            _, met = step(st, win)
            want = jnp.mean(jnp.sum((s0 @ theta["A"] + theta["C"] - target) ** 2, -1))
            np.testing.assert_allclose(met["sg_loss"], want, rtol=1e-9)


def test_target_network_is_injected_and_follows_slowly():
    with jax.enable_x64(True):
        model, p, theta, s0, x, y, win = _case(3, S)
        tau = 0.25
        h = core.harness(model, window=T, method="dni", target_tau=tau)
        opt = optax.sgd(0.1)
        state = core.init(h, jax.random.key(0), opt, dtype=jnp.float64)
        slow = jax.tree.map(lambda a: 0.5 * a, theta)
        state = state._replace(params=p, sg_params=theta, carry=s0, sg_target=slow)
        new, _ = jax.jit(core.make_step(h, opt))(state, win)
        # the target network was injected (and bootstrapped from), θ was regressed
        g, _, g_theta = _reference(model, p, theta, s0, x, y, k=S, inj=slow)
        want_params = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
        _close(new.params, want_params)
        want_theta = jax.tree.map(lambda a, b: a - 0.1 * b, theta, g_theta)
        _close(new.sg_params, want_theta)
        # θ̄ ← θ̄ + τ (θ_new − θ̄)
        _close(new.sg_target, jax.tree.map(lambda s, t: s + tau * (t - s), slow, want_theta))


def test_the_noise_control_injects_a_fresh_direction_of_the_sgs_norm():
    """``inject_noise``: the model is trained with a random direction of the (clipped) SG's
    per-example norm in place of the SG, drawn from ``fold_in(key(seed), step)``; the SG
    still regresses onto the bootstrapped target of that window. Planted: the noise
    ignored, its norm not matched to the SG's, or the same draw every step → red."""
    with jax.enable_x64(True):
        model, p, theta, s0, x, y, win = _case(4, S)
        seed, lr, clip = 7, 0.1, 0.5
        h = core.harness(model, window=T, method="dni", inject_clip=clip, inject_noise=seed)
        opt = optax.sgd(lr)
        state = core.init(h, jax.random.key(0), opt, dtype=jnp.float64)
        state = state._replace(params=p, sg_params=theta, carry=s0)
        step = jax.jit(core.make_step(h, opt))
        moved = []
        for n in (0, 5):
            new, _ = step(state._replace(step=jnp.asarray(n, jnp.int32)), win)
            z = jax.random.normal(jax.random.fold_in(jax.random.key(seed), n), (B, S))
            g, _, g_theta = _reference(model, p, theta, s0, x, y, k=S, clip=clip, noise=z)
            _close(new.params, jax.tree.map(lambda a, b: a - lr * b, p, g))
            _close(new.sg_params, jax.tree.map(lambda a, b: a - lr * b, theta, g_theta))
            moved.append(new.params)
        plain, _, _ = _reference(model, p, theta, s0, x, y, k=S, clip=clip)
        assert _max_diff(moved[0], moved[1]) > 1e-6  # a fresh direction at every step
        assert _max_diff(moved[0], jax.tree.map(lambda a, b: a - lr * b, p, plain)) > 1e-6


def _max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_a_fresh_target_network_starts_as_the_sg():
    h = core.harness(_model(), window=T, method="dni", target_tau=0.1)
    st = core.init(h, jax.random.key(0), optax.sgd(0.1), batch=B)
    _close(st.sg_target, st.sg_params)
    plain = core.init(core.harness(_model(), window=T), jax.random.key(0), optax.sgd(0.1))
    assert plain.sg_target is None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sg_dims": S + 1}, r"`sg_dims` must be an int in \[0, state_dim=8\]"),
        ({"sg_dims": -1}, r"`sg_dims`"),
        ({"inject_clip": -1.0}, r"`inject_clip` must be ≥ 0"),
        ({"warmup": 1.5}, r"`warmup` must be an int ≥ 0"),
        ({"target_tau": 2.0}, r"`target_tau` must be in \[0, 1\]"),
        ({"inject_noise": 1.5}, r"`inject_noise` must be None \(inject the SG\) or an int"),
        ({"inject_noise": True}, r"`inject_noise` must be None"),
        ({"inject_noise": 0, "method": "bptt"}, r"`inject_noise` replaces the injected SG"),
    ],
)
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        core.harness(_model(), window=T, **kw)


def test_an_sg_of_the_whole_state_is_refused_for_sg_dims():
    h = core.harness(_model(), window=T, method="dni", sg_dims=H)
    whole = core.init(core.harness(_model(), window=T), jax.random.key(0), optax.sgd(0.1))
    with pytest.raises(ValueError, match=rf"`sg_params`: .*sg_dims {H}"):
        core.check_sg_params(h, whole.sg_params)
