"""Table 1: the unified view, checked through the foundation's rules (``sgjax.rules``).

paper.md §4, items 19–21 of §6. Each method's signal δ̂ at a hidden boundary is the
gradient w.r.t. ``h`` of an SG loss ``L_SG(t, SG(h))`` with the target ``t``
stop-gradiented: Bprop (``SG = h``, ``t = −∂L/∂h``, ``L_SG = −⟨t, s⟩``), DFA (``hA``,
``t = −∂L/∂p``), Kickback (``h1``), FA (``hA``, ``t = −∂L/∂g``), SG and SG + prop
(``SG(h, y)``, ``t = ∂L/∂h``, ``L_SG = ‖t − s‖²``). We compute that autograd expression and compare
it with the signals the rules produce (item 19); check that Kickback trains exactly
like DFA with ``B = 1`` (item 20) and that the backprop rule trains exactly like plain
``jax.grad`` of the loss (item 21), over 100 SGD steps, in float64.

The FA row uses ``g = hW`` of the next stage and FA's own signal above it; the SG
and SG + prop rows use the conditioned linear SG with random parameters and
``L_SG = ‖t − s‖²`` with the bootstrapped target.

Negative controls: every row against a broken version of itself (see
:func:`table1_identities`); Kickback against DFA with a random ``B``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgjax import estimators, losses, nets, rules
from theory._common import keys, x64
from theory.record import Claim, at_most, control


def _problem(key: jax.Array, n: int, sizes: tuple[int, ...]):
    net = nets.mlp(list(sizes), "tanh", dtype=jnp.float64)
    kp, kx, ky = jax.random.split(key, 3)
    params = net.init(kp)
    x = jax.random.normal(kx, (n, sizes[0]))
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    return net, params, x, y


ROWS = ("Bprop", "DFA", "Kickback", "FA", "SG", "SG+prop")


def _identity_one(key: jax.Array, sizes: tuple[int, ...], wrong: bool) -> jax.Array:
    """Max abs error of each Table 1 row at every hidden boundary (one random problem).

    With ``wrong`` every row is checked against a broken version of itself (negative
    control): the sign of Bprop's target flipped, DFA/FA with a fresh random A,
    Kickback with a random A instead of ones, SG with a prop term it does not have,
    SG + prop without its prop term.
    """
    net, params, x, y = _problem(key, 16, sizes)
    loss = losses.softmax_cross_entropy
    exact = rules.exact_signals(net, params, x, y, loss)  # per-example ∂ℓ/∂h_i
    hs = net.hidden(params, x)
    e = exact[-1]  # ∂ℓ/∂p
    y_vec = losses.as_target(y, net.out_dim, e.dtype)
    sign = -1.0 if wrong else 1.0

    def table_signal(h: jax.Array, t: jax.Array, sg, l_sg) -> jax.Array:
        # ∂/∂h of L_SG(stop_grad(t), SG(h)), summed over the batch (per-example rows).
        return jax.grad(lambda hh: l_sg(jax.lax.stop_gradient(t), sg(hh)))(h)

    def neg_inner(t: jax.Array, s: jax.Array) -> jax.Array:
        return -jnp.sum(t * s)

    def rand_like(i: int, m: jax.Array) -> jax.Array:
        return jax.random.normal(jax.random.fold_in(key, 100 + i), m.shape) / jnp.sqrt(m.shape[0])

    bp = rules.backprop().gradients(rules.RuleState(), net, params, x, y, loss).signals
    dfa_rule = rules.direct_feedback_alignment()
    st = dfa_rule.init(jax.random.fold_in(key, 1), net)
    dfa = dfa_rule.gradients(st, net, params, x, y, loss).signals
    kb = rules.kickback().gradients(rules.RuleState(), net, params, x, y, loss).signals
    fa_rule = rules.feedback_alignment()
    fst = fa_rule.init(jax.random.fold_in(key, 2), net)
    fa = fa_rule.gradients(fst, net, params, x, y, loss).signals
    sg_est = estimators.conditioned()
    alpha = 0.7
    sg_out = {}
    thetas: tuple = ()
    for a in (0.0, alpha):
        rule = rules.synthetic_gradients(sg_est, at="all", prop=a)
        if not thetas:
            mods = rule.init(jax.random.fold_in(key, 3), net).params
            thetas = tuple(
                jax.tree.map(lambda m, i=i: 0.1 * rand_like(10 + i, m), mod)
                for i, mod in enumerate(mods)
            )
        sg_out[a] = rule.gradients(rules.RuleState(thetas), net, params, x, y, loss).signals
    errs: dict[str, list[jax.Array]] = {r: [] for r in ROWS}
    for i in range(1, net.depth):  # hidden boundaries
        h = hs[i]
        got = table_signal(h, sign * -exact[i - 1], lambda hh: hh, neg_inner)
        errs["Bprop"].append(jnp.max(jnp.abs(got - bp[i - 1])))
        B = rand_like(i, st.fixed[i - 1]) if wrong else st.fixed[i - 1]
        got = table_signal(h, -e, lambda hh, A=B.T: hh @ A, neg_inner)
        errs["DFA"].append(jnp.max(jnp.abs(got - dfa[i - 1])))
        ones = jnp.ones((h.shape[1], e.shape[1]))
        A1 = rand_like(20 + i, ones) if wrong else ones
        got = table_signal(h, -e, lambda hh, A=A1: hh @ A, neg_inner)
        errs["Kickback"].append(jnp.max(jnp.abs(got - kb[i - 1])))
        # FA: g = h W_(i+1) + b of the next stage; ∂ℓ/∂g from FA's own signal above.
        g = h @ params[i]["W"] + params[i]["b"]
        act = (1 - jnp.tanh(g) ** 2) if i + 1 < net.depth else jnp.ones_like(g)
        Bf = rand_like(30 + i, fst.fixed[i - 1]) if wrong else fst.fixed[i - 1]
        got = table_signal(h, -(fa[i] * act), lambda hh, A=Bf.T: hh @ A, neg_inner)
        errs["FA"].append(jnp.max(jnp.abs(got - fa[i - 1])))
    # SG and SG + prop: L_SG = ‖t − s‖², s = SG(h, y), t the bootstrapped target (the
    # exact gradient at the top boundary; the signal above sent through the stage above).
    for a, row in ((0.0, "SG"), (alpha, "SG+prop")):
        sig = sg_out[a]
        for i in range(net.depth - 1, 0, -1):
            h = hs[i]
            if i == net.depth - 1:
                t = exact[i - 1]
            else:
                _, vjp = jax.vjp(lambda hh, i=i: net.stages[i].apply(params[i], hh), h)
                t = vjp(sig[i])[0]

            def sg_fn(hh: jax.Array, th=thetas[i - 1]) -> jax.Array:
                return sg_est.apply(th, hh, y_vec)

            s = sg_fn(h)
            prop = table_signal(h, t, sg_fn, lambda t, s: jnp.sum((t - s) ** 2))
            a_used = (alpha - a) if wrong else a  # control: prop term where there is none
            errs[row].append(jnp.max(jnp.abs(s + a_used * prop - sig[i - 1])))
    return jnp.stack([jnp.max(jnp.stack(errs[r])) for r in ROWS])


def _sgd(rule: rules.UpdateRule, state, net, params, x, y, steps: int, lr: float = 0.1):
    def step(p, _):
        g = rule.gradients(state, net, p, x, y, losses.softmax_cross_entropy).grads
        return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    return jax.lax.scan(step, params, None, length=steps)[0]


def _maxdiff(a: object, b: object) -> jax.Array:
    d = [jnp.max(jnp.abs(u - v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return jnp.max(jnp.stack(d))


def _trajectories_one(key: jax.Array, sizes: tuple[int, ...], random_B: bool) -> jax.Array:
    net, params, x, y = _problem(key, 16, sizes)
    kb = _sgd(rules.kickback(), rules.RuleState(), net, params, x, y, 100)
    shapes = [(net.out_dim, s.out_shape[0]) for s in net.stages[:-1]]
    if random_B:
        Bs = [jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]
    else:
        Bs = [jnp.ones(s) for s in shapes]
    dfa_rule = rules.direct_feedback_alignment(B=Bs)
    dfa = _sgd(dfa_rule, dfa_rule.init(key, net), net, params, x, y, 100)
    kick_vs_dfa = _maxdiff(kb, dfa)

    # Plain backprop: jax.grad of the batch-mean loss through the whole network.
    def plain(p, _):
        g = jax.grad(lambda q: losses.softmax_cross_entropy.fn(net.apply(q, x), y))(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None

    ref = jax.lax.scan(plain, params, None, length=100)[0]
    bp = _sgd(rules.backprop(), rules.RuleState(), net, params, x, y, 100)
    bp_vs_grad = _maxdiff(bp, ref)
    return jnp.array([kick_vs_dfa, bp_vs_grad])


@functools.cache
def _identity_runner(sizes: tuple[int, ...], wrong: bool):
    return jax.jit(jax.vmap(lambda k: _identity_one(k, sizes, wrong)))


@x64
def table1_identities(
    key: jax.Array, instances: int, *, wrong: bool = False, sizes: tuple[int, ...] = (5, 7, 6, 3)
) -> list[Claim]:
    """Item 19: autograd of L_SG(stop_grad(t), SG(h)) equals each rule's signal.

    One record per row of Table 1 (Bprop, DFA, Kickback, FA, SG, SG + prop), worst
    absolute error over every hidden boundary and instance, float64.
    ``wrong=True`` checks each row against a broken version of itself (controls).

    Example:
        >>> [c.passed for c in table1_identities(jax.random.key(0), 1)]
        [True, True, True, True, True, True]
    """
    r = np.asarray(_identity_runner(tuple(sizes), wrong)(keys(key, instances)))
    worst = r.max(axis=0)
    out = []
    broken = {
        "Bprop": "target sign flipped",
        "DFA": "a different random A",
        "Kickback": "a random A instead of ones",
        "FA": "a different random A",
        "SG": "a prop term added",
        "SG+prop": "the prop term dropped",
    }
    for row, w in zip(ROWS, worst):
        c = at_most(
            f"table1/{row}: ∂L_SG/∂h = δ̂",
            "Table 1",
            w,
            1e-12,
            instances,
            f"max abs error over hidden boundaries, float64, tanh MLP {sizes}, "
            "softmax cross-entropy, through sgjax.rules",
        )
        out.append(control(c, broken[row]) if wrong else c)
    return out


@functools.cache
def _trajectory_runner(sizes: tuple[int, ...], random_B: bool):
    return jax.jit(jax.vmap(lambda k: _trajectories_one(k, sizes, random_B)))


@x64
def table1_trajectories(
    key: jax.Array, instances: int, *, random_B: bool = False, sizes: tuple[int, ...] = (5, 7, 6, 3)
) -> list[Claim]:
    """Items 20–21: Kickback ≡ DFA(B = 1) and backprop rule ≡ jax.grad, 100 SGD steps.

    Example:
        >>> [c.passed for c in table1_trajectories(jax.random.key(0), 1)]
        [True, True]
    """
    r = jnp.max(_trajectory_runner(tuple(sizes), random_B)(keys(key, instances)), axis=0)
    kick = at_most(
        "table1/kickback≡DFA(B=1)",
        "Table 1",
        r[0],
        1e-12,
        instances,
        "max abs parameter difference after 100 SGD steps (float64)",
    )
    if random_B:
        return [control(kick, "DFA with a random B instead of ones")]
    return [
        kick,
        at_most(
            "table1/backprop-rule≡jax.grad",
            "Table 1",
            r[1],
            1e-12,
            instances,
            "max abs parameter difference after 100 SGD steps (float64)",
        ),
    ]
