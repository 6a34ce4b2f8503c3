"""The recurrent window step keeps the core's contract (issue 24, item 4).

* pure ``step(state, window) -> (state, metrics)``, jit- and vmap-able, the carry in
  ``state.carry``;
* a non-finite update and out-of-range labels are refused inside ``jit`` (the state comes
  back unchanged) and reported through ``finite`` / ``bad_labels`` and ``train.check_step``;
* the carried state may be any pytree: an ``(h, c)`` tuple LSTM gives exactly the gradients
  of the built-in LSTM, whose state is the one array ``[h, c]``;
* clear errors: a carry of another batch size, an empty / tiny / non-ASCII text; the γ = 1
  warning on a stream that does not end.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import trees_equal as _same

from sgjax import interface, train
from sgjax.recurrent import cells, core, reference, tasks

B, T, I, O = 2, 2, 3, 3


@pytest.fixture(scope="module")
def setup():
    h = core.harness(core.Model(cells.vanilla(4), I, O), window=T, method="dni", decay=0.5)
    opt = optax.adam(1e-2)
    step = jax.jit(core.make_step(h, opt))
    return h, opt, step


def _seq(seed: int, length: int = 2 * T):
    r = np.random.default_rng(seed)
    x = r.normal(size=(length, B, I)).astype(np.float32)
    y = r.integers(0, O, size=(length, B))
    return x, y


# ------------------------------------------------------------------------- refusals


def test_a_nonfinite_window_is_refused_inside_jit(setup):
    h, opt, step = setup
    state = core.init(h, jax.random.key(0), opt, batch=B)
    x, y = _seq(0)
    w0, w1 = core.windows(h, x, y)
    state, met = step(state, w0)
    assert bool(met["finite"]) and int(state.step) == 1
    bad = w1._replace(x=w1.x.copy())
    bad.x[1, 0, 0] = np.nan  # one NaN in the input
    new, met = step(state, bad)
    assert not bool(met["finite"]) and int(met["bad_labels"]) == 0
    assert _same(new, state)  # params, SG, optimiser states, step and carry: unchanged
    with pytest.raises(train.NonFiniteLossError):
        train.check_step(met)
    new, met = step(state, w1)  # the clean window is applied
    assert bool(met["finite"]) and int(new.step) == 2 and not _same(new.params, state.params)
    x[3, 1, 2] = np.inf
    with pytest.raises(train.NonFiniteLossError):
        core.train_sequence(h, step, state, x, y)


def test_out_of_range_labels_are_refused_unless_masked(setup):
    h, opt, step = setup
    state = core.init(h, jax.random.key(1), opt, batch=B)
    x, y = _seq(1, T)
    for label in (-1, O):
        yb = y.copy()
        yb[1, 0] = label
        (win,) = core.windows(h, x, yb)
        new, met = step(state, win)
        assert int(met["bad_labels"]) == 1, label
        assert _same(new, state), label
        with pytest.raises(train.BadLabelsError, match="1 label"):
            train.check_step(met)
    # masked steps (padding) may hold anything: the same update as with valid labels there
    m = np.ones((T, B), np.float32)
    m[0, 1] = m[1, 0] = 0.0
    y_any, y_ok = y.copy(), y.copy()
    y_any[0, 1], y_any[1, 0] = O + 5, -1
    y_ok[0, 1] = y_ok[1, 0] = 0
    new_any, met = step(state, core.windows(h, x, y_any, m)[0])
    new_ok, _ = step(state, core.windows(h, x, y_ok, m)[0])
    assert int(met["bad_labels"]) == 0 and bool(met["finite"]) and int(new_any.step) == 1
    assert _same(new_any, new_ok)
    # bits targets: outside [0, 1] where unmasked
    hb = core.harness(core.Model(cells.vanilla(4), I, 2, "bits"), window=T, method="bptt")
    yb = np.zeros((T, B, 2), np.float32)
    yb[0, 0, 1], yb[1, 1, 0] = 2.0, -0.5
    assert int(core.count_bad_labels(hb, yb, np.ones((T, B)))) == 2
    assert int(core.count_bad_labels(hb, yb, np.array([[1.0, 1.0], [1.0, 0.0]]))) == 1


def test_the_step_vmaps_over_seeds_and_refuses_per_seed(setup):
    h, opt, step = setup
    states = [core.init(h, jax.random.key(s), opt, batch=B) for s in (2, 3)]
    x, y = _seq(2)
    win = core.windows(h, x, y)[0]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    xs = np.stack([win.x, win.x])
    xs[1, 0, 1, 2] = np.nan  # seed index 1 sees a NaN
    wins = jax.tree.map(lambda a: jnp.stack([a, a]), win)._replace(x=xs)
    new, met = jax.jit(jax.vmap(core.make_step(h, opt)))(stacked, wins)
    assert np.asarray(met["finite"]).tolist() == [True, False]
    one, _ = step(states[0], win)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(one)):
        np.testing.assert_allclose(np.asarray(a)[0], b, rtol=1e-6, atol=1e-7)
    assert _same(jax.tree.map(lambda a: a[1], new), states[1])
    with pytest.raises(train.NonFiniteLossError, match="seed index 1"):
        train.check_step(met)


# ------------------------------------------------------------------------- pytree state


def _tuple_lstm(hidden: int) -> cells.Cell:
    """An LSTM of one's own with an ``(h, c)`` tuple state, written here."""
    flat = cells.lstm(hidden)

    def apply(p, s, x):
        h, c = s
        z = x @ p["Wx"] + h @ p["Wh"] + p["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    def init_state(batch, dtype):
        return (jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, hidden), dtype))

    return cells.Cell(flat.init, apply, 2 * hidden, hidden, "tuple-lstm", init_state)


def test_an_h_c_tuple_state_gives_the_flat_lstms_gradients():
    with jax.enable_x64(True):
        H = 3
        hs = {
            name: core.harness(
                core.Model(cell, I, O), window=T, method="dni_aux", decay=0.5, inject_clip=1.0
            )
            for name, cell in (("flat", cells.lstm(H)), ("tuple", _tuple_lstm(H)))
        }
        p = core.init_params(hs["flat"].model, jax.random.key(4), jnp.float64, aux=True)
        p["aux"]["W"] = 0.1 * jax.random.normal(jax.random.key(5), (2 * H, 2 * H), jnp.float64)
        theta = {  # an SG that mixes h and c, so the order of the leaves matters
            "A": 0.3 * jax.random.normal(jax.random.key(6), (2 * H, 2 * H), jnp.float64),
            "C": 0.3 * jax.random.normal(jax.random.key(7), (2 * H,), jnp.float64),
        }
        x, y = _seq(4, 2 * T)
        x = x.astype(np.float64)
        grads = jax.jit(core.window_grads, static_argnums=0)
        outs = {}
        for name, h in hs.items():
            carry = core.initial_carry(h, B, jnp.float64)
            res = []
            for win in core.windows(h, x, y, last=False):
                out = grads(h, p, theta, carry, win)
                res.append(out)
                carry = out.s_end
            outs[name] = res
        assert isinstance(outs["tuple"][0].s_end, tuple)
        for a, b in zip(outs["flat"], outs["tuple"]):
            np.testing.assert_allclose(a.s_end, jnp.concatenate(b.s_end, -1), rtol=1e-12)
            for u, v in zip(
                jax.tree.leaves(a._replace(s_end=0)), jax.tree.leaves(b._replace(s_end=0))
            ):
                np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-13)
        # the full-BPTT reference (SG diagnostics) reads a tuple state the same way
        refs = [
            jax.jit(reference.boundary_states_and_gradients, static_argnums=0)(h, p, x, y)
            for h in hs.values()
        ]
        for u, v in zip(*refs):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-13)


def test_a_tuple_state_trains_through_the_step_and_the_interface():
    h = core.harness(core.Model(_tuple_lstm(3), I, O), window=T, method="dni", decay=0.5)
    opt = optax.sgd(0.1)
    state = core.init(h, jax.random.key(8), opt, batch=B)
    x, y = _seq(8, 3 * T)
    state, carry, met = core.train_sequence(h, jax.jit(core.make_step(h, opt)), state, x, y)
    assert int(state.step) == 3 and bool(met["finite"])
    assert isinstance(carry, tuple) and [a.shape for a in carry] == [(B, 3), (B, 3)]
    # sg_interface on the tuple: each leaf gets its part of the flat SG's gradient
    th = {"A": jnp.zeros((6, 6)), "C": jnp.arange(6.0)}
    s = (jnp.ones((B, 3)), 2 * jnp.ones((B, 3)))
    est = h.sg

    def loss_tuple(s):
        return jnp.sum(core.state_sg_interface(s, th, None, estimator=est)[1] ** 2)

    def loss_flat(f):
        return jnp.sum(interface.sg_interface(f, th, None, estimator=est)[:, 3:] ** 2)

    g_tuple = jax.grad(loss_tuple)(s)
    g_flat = jax.grad(loss_flat)(jnp.concatenate(s, -1))
    np.testing.assert_array_equal(jnp.concatenate(g_tuple, -1), g_flat)
    np.testing.assert_array_equal(g_flat, jnp.broadcast_to(jnp.arange(6.0) / B, (B, 6)))


# ------------------------------------------------------------------------- errors


def test_a_carry_of_another_batch_size_is_named(setup):
    h, opt, step = setup
    state = core.init(h, jax.random.key(9), opt, batch=3)  # three streams
    x, y = _seq(9)  # two streams
    win = core.windows(h, x, y)[0]
    msg = r"`carry`: batch 3, but the window's `x` has batch 2.*initial_carry\(h, 2\)"
    with pytest.raises(ValueError, match=msg):
        step(state, win)
    with pytest.raises(ValueError, match=msg):
        core.train_sequence(h, step, state, x, y, carry=state.carry)
    with pytest.raises(ValueError, match=r"`carry` \(state.carry\) is None"):
        step(state._replace(carry=None), win)
    ht = core.harness(core.Model(_tuple_lstm(2), I, O), window=T, method="bptt")
    st = core.init(ht, jax.random.key(0), opt, batch=B)
    with pytest.raises(ValueError, match=r"`carry` leaf 1: batch 3, but the window's `x` has"):
        core.make_step(ht, opt)(st._replace(carry=(st.carry[0], jnp.zeros((3, 2)))), win)
    with pytest.raises(ValueError, match=r"`carry`: expected the structure of the cell's state"):
        core.make_step(ht, opt)(st._replace(carry=jnp.zeros((B, 4))), win)


def test_empty_tiny_and_non_ascii_texts(tmp_path):
    f = tmp_path / "input.txt"
    for text in ("", "abcdefghij"):  # empty; 10 characters, one short of the minimum
        f.write_text(text)
        with pytest.raises(ValueError, match=rf"{f}: {len(text)} characters; .* at least 11"):
            tasks.load_tinyshakespeare(tmp_path)
    f.write_text("abcdefghijk")
    d = tasks.load_tinyshakespeare(tmp_path)
    assert (len(d.train), len(d.valid), d.encoding) == (9, 2, "ascii")
    text = "né à la mer\n" * 3
    f.write_bytes(text.encode("utf-8"))
    with pytest.warns(UserWarning, match=rf"{f}: not ASCII .* offset 1\); read as UTF-8: 36 ch"):
        d = tasks.load_tinyshakespeare(tmp_path)
    assert d.encoding == "utf-8" and d.vocab == "".join(sorted(set(text)))
    assert "".join(d.vocab[i] for i in np.concatenate([d.train, d.valid])) == text
    f.write_bytes(b"abc\xff" + b"d" * 40)
    with pytest.raises(
        ValueError, match=rf"{f}: not ASCII and not valid UTF-8: byte 0xff at byte offset 3"
    ):
        tasks.load_tinyshakespeare(tmp_path)


def test_gamma_one_on_a_stream_that_goes_on_warns():
    model = core.Model(cells.vanilla(2), I, O)
    x, y = _seq(10)
    with pytest.warns(UserWarning, match=r"decay γ = 1 .* does not end .* decay=0.5"):
        core.windows(core.harness(model, window=T, method="dni"), x, y, last=False)
    quiet = [
        (core.harness(model, window=T, method="dni"), True),  # a finite sequence (copy)
        (core.harness(model, window=T, method="dni", decay=0.5, inject_clip=1.0), False),
        (core.harness(model, window=T, method="bptt"), False),  # no SG
    ]
    for h, last in quiet:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            core.windows(h, x, y, last=last)
        assert not caught, (h.method, h.decay, last)
    # γ < 1 without a clip on the injected SG collapsed a seed of the LM: warned too
    with pytest.warns(UserWarning, match=r"unclipped injected SG .* does not end .* inject_clip"):
        core.windows(core.harness(model, window=T, method="dni", decay=0.5), x, y, last=False)
