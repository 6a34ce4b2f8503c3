"""Recurrent DNI (sgjax.recurrent): window mechanics against independent references.

References are written here with plain Python loops over time steps (no ``lax.scan``, no
harness code): the full-BPTT gradient and the exact future gradient at every boundary
(``jax.grad`` of explicitly written losses), truncated BPTT as a loop of per-window
``jax.grad`` calls, and the bootstrapped target as ``vjp`` of the next window's states
applied to the next SG plus the window loss's own gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgjax import estimators
from sgjax.apps import cli
from sgjax.apps.experiments import rnn as experiment
from sgjax.recurrent import cells, core, reference, tasks

B, T, K, I, O = 3, 3, 3, 4, 5  # batch, window, windows, input and output widths
L = T * K


def _data(seed: int, dtype=jnp.float64, length: int = L):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(length, B, I)), dtype)
    y = jnp.asarray(r.integers(0, O, size=(length, B)))
    m = jnp.asarray(r.random((length, B)) < 0.8, dtype)  # a mask with holes
    return x, y, m


def _model(cell: str) -> core.Model:
    return core.Model(cells.get(cell, 6), I, O, "xent")


# ------------------------------------------------------------------ hand-written references


def _ref_step(model, p, s, xt, yt, mt):
    s, out = model.cell.apply(p["cell"], s, xt)
    logits = out @ p["out"]["W"] + p["out"]["b"]
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    nll = -logp[jnp.arange(xt.shape[0]), yt]
    return s, jnp.sum(nll * mt) / xt.shape[0]


def _ref_loss_from(model, p, s, x, y, m, start, stop):
    """Σ_{t=start}^{stop-1} mean_b m ℓ from state s at step start (Python loop)."""
    total = 0.0
    for t in range(start, stop):
        s, lt = _ref_step(model, p, s, x[t], y[t], m[t])
        total = total + lt
    return total, s


def _zero(model):
    return jnp.zeros((B, model.cell.state_dim))


def _ref_states(model, p, x, y, m):
    s = jnp.zeros((B, model.cell.state_dim), x.dtype)
    starts = []
    for k in range(K):
        starts.append(s)
        _, s = _ref_loss_from(model, p, s, x, y, m, k * T, (k + 1) * T)
    return starts


def _oracle(model, p, x, y, m):
    """B · ∂(loss of steps ≥ kT)/∂s_k at every boundary k (per-example true gradient)."""

    @jax.jit
    def grads(p, x, y, m):
        starts = _ref_states(model, p, x, y, m)
        return [
            B
            * jax.grad(lambda s, k=k: _ref_loss_from(model, p, s, x, y, m, k * T, L)[0])(starts[k])
            for k in range(K)
        ]

    return grads(p, x, y, m)


_window_grads = jax.jit(core.window_grads, static_argnums=0)


def _windows(h, x, y, m, *, last=True):
    return core.windows(h, np.asarray(x), np.asarray(y), np.asarray(m), last=last)


# ------------------------------------------------------------------------- equivalences


def test_exact_oracle_sg_makes_dni_equal_full_bptt():
    with jax.enable_x64(True):
        model = _model("lstm")
        h = core.harness(model, window=T, method="dni")
        p = core.init_params(model, jax.random.key(1), jnp.float64)
        theta = h.sg.init(jax.random.key(2), (model.cell.state_dim,), 1, jnp.float64)
        x, y, m = _data(0)
        full = jax.jit(jax.grad(lambda p: _ref_loss_from(model, p, _zero(model), x, y, m, 0, L)[0]))
        g_ref = full(p)
        oracle = _oracle(model, p, x, y, m)
        carry = jnp.zeros((B, model.cell.state_dim))
        g_sum = None
        for k, win in enumerate(_windows(h, x, y, m)):
            nxt = oracle[k + 1] if k + 1 < K else jnp.zeros_like(carry)
            out = _window_grads(h, p, theta, carry, win, nxt)
            if k >= 1:  # the bootstrapped target with an exact SG is the exact gradient
                np.testing.assert_allclose(out.target, oracle[k], rtol=1e-10, atol=1e-12)
            g_sum = out.grads if g_sum is None else jax.tree.map(jnp.add, g_sum, out.grads)
            carry = out.s_end
        for a, b in zip(jax.tree.leaves(g_sum), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        # the exact SG matters: without it (truncated BPTT) the gradients differ
        carry, g_tr = jnp.zeros_like(carry), None
        for win in _windows(h, x, y, m):
            out = _window_grads(h, p, theta, carry, win, jnp.zeros_like(carry))
            g_tr = out.grads if g_tr is None else jax.tree.map(jnp.add, g_tr, out.grads)
            carry = out.s_end
        gap = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(g_tr), jax.tree.leaves(g_ref))
        )
        assert gap > 1e-4
        # the full-BPTT reference of the library (diagnostics) gives the same oracle
        _, _, g = jax.jit(reference.boundary_states_and_gradients, static_argnums=0)(h, p, x, y, m)
        for k in range(K):
            np.testing.assert_allclose(g[k], oracle[k], rtol=1e-10, atol=1e-12)
        # ... and the cosine diagnostic equals the hand-computed one, for a random SG
        theta = {
            "A": jax.random.normal(jax.random.key(4), (12, 12), jnp.float64),
            "C": jax.random.normal(jax.random.key(5), (12,), jnp.float64),
        }
        cos = reference.sg_cosines(h, p, theta, x, y, m)
        ref_starts = jax.jit(_ref_states, static_argnums=0)(model, p, x, y, m)
        for k in range(1, K):
            sg = ref_starts[k] @ theta["A"] + theta["C"]
            c = jnp.sum(sg * oracle[k], -1) / (
                jnp.linalg.norm(sg, axis=-1) * jnp.linalg.norm(oracle[k], axis=-1)
            )
            np.testing.assert_allclose(cos[k - 1], jnp.mean(c), rtol=1e-9)


def _truncated_bptt_reference(model, p, seqs, lr):
    @jax.jit
    def run(p, seqs):
        for x, y, m in seqs:
            s = jnp.zeros((B, model.cell.state_dim), x.dtype)
            for k in range(K):

                def wl(p, s=s, k=k, x=x, y=y, m=m):
                    return _ref_loss_from(model, p, s, x, y, m, k * T, (k + 1) * T)

                g, s_next = jax.grad(lambda p: wl(p)[0])(p), wl(p)[1]
                p = jax.tree.map(lambda a, b: a - lr * b, p, g)
                s = jax.lax.stop_gradient(s_next)
        return p

    return run(p, seqs)


@pytest.mark.parametrize("method", ["dni_aux"])
def test_sg_held_at_zero_equals_truncated_bptt(method):
    with jax.enable_x64(True):
        model = _model("lstm")
        h = core.harness(model, window=T, method=method)
        opt = optax.sgd(0.3)
        state = core.init(h, jax.random.key(6), opt, optax.set_to_zero(), jnp.float64)
        step = core.make_window_step(h, opt, optax.set_to_zero())
        seqs = [_data(10), _data(11)]
        p_ref = _truncated_bptt_reference(model, state.params, seqs, 0.3)
        for x, y, m in seqs:
            state, _, _ = core.train_sequence(h, step, state, x, y, m)
        assert float(jnp.max(jnp.abs(state.sg_params["A"]))) == 0.0
        for key in ("cell", "out"):
            for a, b in zip(jax.tree.leaves(state.params[key]), jax.tree.leaves(p_ref[key])):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dni"])
def test_zero_initialised_sg_first_step_is_truncated_bptt_exactly(method):
    model = _model("vanilla")
    opt = optax.adam(1e-2)
    x, y, m = _data(20, jnp.float32)
    outs = {}
    for meth in ("bptt", method):
        h = core.harness(model, window=T, method=meth)
        state = core.init(h, jax.random.key(7), opt)
        step = core.make_window_step(h, opt)
        if h.sg is None:
            win = _windows(h, x, y, m, last=False)[1]
        else:
            with pytest.warns(UserWarning, match=r"decay γ = 1 .* stream that does not end"):
                win = _windows(h, x, y, m, last=False)[1]  # a middle window: it injects SG(s_T)
        carry = jax.random.normal(jax.random.key(8), (B, model.cell.state_dim))
        outs[meth] = step(state._replace(carry=carry), win)[0]
    for key in ("cell", "out"):
        for a, b in zip(
            jax.tree.leaves(outs["bptt"].params[key]), jax.tree.leaves(outs[method].params[key])
        ):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    # ... while the SG module did learn from its first target
    assert float(jnp.max(jnp.abs(outs[method].sg_params["C"]))) > 0


def test_bootstrapped_targets_two_windows_by_hand():
    with jax.enable_x64(True):
        model = _model("vanilla")
        sg = estimators.linear()
        h = core.harness(model, window=T, method="dni", sg=sg)
        p = core.init_params(model, jax.random.key(9), jnp.float64)
        S = model.cell.state_dim
        theta = {
            "A": 0.3 * jax.random.normal(jax.random.key(10), (S, S), jnp.float64),
            "C": 0.3 * jax.random.normal(jax.random.key(11), (S,), jnp.float64),
        }
        x, y, m = _data(30, length=2 * T)
        # by hand: window 1 from s0 = 0, window 2 from s1; the sequence goes on after s2
        s0 = jnp.zeros((B, S))

        @jax.jit  # (one compile rather than ~100 eager programs)
        def by_hand(p, theta, s0):
            _, s1 = _ref_loss_from(model, p, s0, x, y, m, 0, T)

            def w2(s):  # the second window, from s
                return _ref_loss_from(model, p, s, x, y, m, T, 2 * T)

            _, s2 = w2(s1)
            _, states_vjp = jax.vjp(lambda s: w2(s)[1], s1)
            target1 = B * jax.grad(lambda s: w2(s)[0])(s1)
            target1 = target1 + states_vjp(s2 @ theta["A"] + theta["C"])[0]
            _, s1_vjp = jax.vjp(lambda s: _ref_loss_from(model, p, s, x, y, m, 0, T)[1], s0)
            target0 = B * jax.grad(lambda s: _ref_loss_from(model, p, s, x, y, m, 0, T)[0])(s0)
            return s1, target0 + s1_vjp(s1 @ theta["A"] + theta["C"])[0], target1

        s1, target0, target1 = by_hand(p, theta, s0)

        def regression(th, s, t):
            return jnp.mean(jnp.sum((s @ th["A"] + th["C"] - t) ** 2, -1))

        with pytest.warns(UserWarning, match=r"decay γ = 1 .* stream that does not end"):
            wins = core.windows(h, np.asarray(x), np.asarray(y), np.asarray(m), last=False)
        grads = jax.jit(lambda *a: core.window_grads(h, *a))
        out0 = grads(p, theta, s0, wins[0])
        out1 = grads(p, theta, out0.s_end, wins[1])
        np.testing.assert_allclose(out0.s_end, s1, rtol=1e-12)
        np.testing.assert_allclose(out0.target, target0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out1.target, target1, rtol=1e-10, atol=1e-12)
        g1 = jax.grad(regression)(theta, s1, target1)
        for key in theta:
            np.testing.assert_allclose(out1.sg_grads[key], g1[key], rtol=1e-10, atol=1e-12)
            # the first boundary of a fresh sequence (s0 = 0) does not train the SG
            assert float(jnp.max(jnp.abs(out0.sg_grads[key]))) == 0.0
        np.testing.assert_allclose(out1.sg_loss, regression(theta, s1, target1), rtol=1e-10)


# ------------------------------------------------------------------------- compilation


def test_window_step_compiles_once_across_windows_and_lengths():
    model = _model("lstm")
    h = core.harness(model, window=T, method="dni_aux")
    opt = optax.adam(1e-3)
    state = core.init(h, jax.random.key(0), opt)
    traces = []
    pure = core.make_step(h, opt)
    step = jax.jit(lambda s, w: (traces.append(1), pure(s, w))[1])
    carry = None
    for length in (L, L + 2, 2 * L - 1):  # lengths in one bucket: padded to multiples of T
        x, y, m = _data(length, jnp.float32, length)
        state, carry, met = core.train_sequence(h, step, state, x, y, m)
        assert bool(met["finite"])
    state, carry, _ = core.train_sequence(h, step, state, x, y, m, carry=carry, first=False)
    assert len(traces) == 1


# ------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument():
    model = _model("lstm")
    with pytest.raises(ValueError, match=r"`window` \(T\) must be an int ≥ 1, got 0"):
        core.harness(model, window=0)
    h = core.harness(model, window=T, method="dni")
    opt = optax.sgd(0.1)
    state = core.init(h, jax.random.key(0), opt)
    step = core.make_window_step(h, opt)
    x, y, m = _data(0, jnp.float32)
    with pytest.raises(ValueError, match=r"`window` \(T=3\) is longer than the sequence"):
        core.train_sequence(h, step, state, x[:2], y[:2], m[:2])
    with pytest.raises(ValueError, match=r"`x`: expected 4 features .* got 2"):
        core.train_sequence(h, step, state, x[..., :2], y, m)
    with pytest.raises(ValueError, match=r"`x`: expected a time-major"):
        core.train_sequence(h, step, state, x[:, 0], y, m)
    with pytest.raises(ValueError, match=r"`y`: expected shape \(9, 3\)"):
        core.train_sequence(h, step, state, x, y[:, :2], m)
    with pytest.raises(ValueError, match=r"`m`: expected shape"):
        core.train_sequence(h, step, state, x, y, m[:4])
    # SG module made for another cell (state width 8, not 12)
    other = core.harness(core.Model(cells.lstm(4), I, O), window=T, method="dni")
    wrong = state._replace(sg_params=core.init(other, jax.random.key(0), opt).sg_params)
    with pytest.raises(ValueError, match=r"`sg_params`: .*state_dim 12"):
        core.train_sequence(h, step, wrong, x, y, m)
    # an SG module whose output is not the state's shape
    bad = estimators.Estimator(
        lambda k, shape, c, dtype=jnp.float32: {"C": jnp.zeros((5,), dtype)},
        lambda th, s, c: jnp.broadcast_to(th["C"], (s.shape[0], 5)),
        "bad",
        False,
        False,
    )
    hb = core.harness(model, window=T, method="dni", sg=bad)
    with pytest.raises(ValueError, match=r"returns shape \(3, 5\) for a state of shape \(3, 12\)"):
        core.train_sequence(
            hb, core.make_window_step(hb, opt), core.init(hb, jax.random.key(0), opt), x, y, m
        )
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        core.harness(model, window=T, method="sg")
    with pytest.raises(ValueError, match=r"`ctx`: the harness has context_dim=2"):
        hc = core.harness(model, window=T, method="dni", context_dim=2)
        core.windows(hc, x, y, m)


def test_cdni_boundaries_read_the_context_of_their_step():
    model = _model("vanilla")
    h = core.harness(model, window=T, method="dni", context_dim=2)
    assert h.sg.name == "conditioned"
    x, y, m = _data(0, jnp.float32)
    ctx = np.arange(L * B * 2, dtype=np.float32).reshape(L, B, 2)
    tail = np.full((B, 2), -1.0, np.float32)
    with pytest.warns(UserWarning, match=r"decay γ = 1 .* stream that does not end"):
        wins = core.windows(h, x, y, m, ctx, last=False, next_ctx=tail)
    for k, w in enumerate(wins):
        np.testing.assert_array_equal(w.c0, ctx[k * T])
        np.testing.assert_array_equal(w.c1, ctx[(k + 1) * T] if k + 1 < K else tail)
    assert [float(w.inject) for w in wins] == [1.0, 1.0, 1.0]
    assert [float(w.sg_weight) for w in wins] == [0.0, 1.0, 1.0]


# ------------------------------------------------------------------------- tasks


def test_copy_task_targets_are_the_inputs_after_the_delimiter():
    x, y, m = tasks.copy_batch(np.random.default_rng(0), 4, 3, bits=5)
    np.testing.assert_array_equal(y[5:], x[:4, :, :5])
    assert x[4, :, 5].tolist() == [1, 1, 1] and m.sum(0).tolist() == [4, 4, 4]
    x, y, m = tasks.repeat_copy_batch(np.random.default_rng(0), 2, 3, 2, bits=3)
    np.testing.assert_array_equal(y[3:9, :, :3], np.tile(x[:2, :, :3], (3, 1, 1)))
    np.testing.assert_allclose(x[2, :, 4], 0.3)


def test_curriculum_alternates_n_and_repeats():
    c = tasks.Curriculum("repeat_copy", threshold=0.5, patience=1)
    levels = []
    for _ in range(4):
        c.update(0.1)
        levels.append((c.n, c.repeats))
    assert levels == [(2, 1), (2, 2), (3, 2), (3, 3)] and c.solved == 6
    c.update(0.9)
    assert (c.n, c.repeats) == (3, 3)


def test_tinyshakespeare_split_and_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"looked in: .*input.txt.*never downloads"):
        tasks.load_tinyshakespeare(tmp_path)
    (tmp_path / "input.txt").write_text("abcab\n" * 10)
    d = tasks.load_tinyshakespeare(tmp_path)
    assert d.vocab == "\nabc" and len(d.train) == 54 and len(d.valid) == 6
    assert "".join(d.vocab[i] for i in d.valid) == "abcab\n"


# ------------------------------------------------------------------------- the experiment


def test_reproduce_dni_rnn_smoke(tmp_path, capsys, tinyshakespeare_path):
    out = tmp_path / "dni-rnn"
    rc = cli.main(["reproduce", "dni-rnn", "--scale", "smoke", "--out", str(out), "--no-progress"])
    assert rc == 0 and "dni-rnn:" in capsys.readouterr().out
    for f in ("report.md", "results.json", "length_solved.png", "bpc_curves.png", "sg_cosine.png"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "| BPTT-T |" in report and "held" in report
    res = experiment.run(experiment.C.Context(out=out, scale="smoke"))  # resumes: no training
    assert {v["verdict"] for v in res["claims"].values()} <= {"held", "not held", "inconclusive"}
    bpc = res["summary"]["lm"]["dni/T2"]["values"][0]
    assert 0 < bpc < 10
