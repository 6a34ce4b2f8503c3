"""Table 1: the unified view, checked through the foundation's rules (``sgjax.rules``).

paper.md §4, items 19–21 of §6. Each method's signal δ̂ at a hidden boundary is the
gradient w.r.t. ``h`` of an SG loss ``L_SG(t, SG(h))`` with the target ``t``
stop-gradiented: Bprop (``SG = h``, ``t = −∂L/∂h``, ``L_SG = −⟨t, s⟩``), DFA (``hA``,
``t = −∂L/∂p``) and Kickback (``h1``). We compute that autograd expression and compare
it with the signals the rules produce (item 19); check that Kickback trains exactly
like DFA with ``B = 1`` (item 20) and that the backprop rule trains exactly like plain
``jax.grad`` of the loss (item 21), over 100 SGD steps, in float64.

Not covered here: the SG / SG + prop rows (their identity is the SG regression loss
itself) and the FA row.

Negative controls: DFA's identity with the wrong feedback matrix (a fresh random one);
Kickback against DFA with a random ``B``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgjax import losses, nets, rules
from theory._common import keys, x64
from theory.record import Claim, at_most, control


def _problem(key: jax.Array, n: int, sizes: tuple[int, ...]):
    net = nets.mlp(list(sizes), "tanh", dtype=jnp.float64)
    kp, kx, ky = jax.random.split(key, 3)
    params = net.init(kp)
    x = jax.random.normal(kx, (n, sizes[0]))
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    return net, params, x, y


def _identity_one(key: jax.Array, sizes: tuple[int, ...], wrong_B: bool) -> jax.Array:
    net, params, x, y = _problem(key, 16, sizes)
    loss = losses.softmax_cross_entropy
    exact = rules.exact_signals(net, params, x, y, loss)  # per-example ∂ℓ/∂h_i
    hs = [x]
    for s, th in zip(net.stages, params):
        hs.append(s.apply(th, hs[-1]))
    e = exact[-1]  # ∂ℓ/∂p
    errs = []

    def table_signal(h: jax.Array, t: jax.Array, A: jax.Array | None) -> jax.Array:
        # ∂/∂h of L_SG = −⟨stop_grad(t), SG(h)⟩ with SG(h) = h or hA.
        def L_sg(h: jax.Array) -> jax.Array:
            s = h if A is None else h @ A
            return -jnp.sum(jax.lax.stop_gradient(t) * s)

        return jax.grad(L_sg)(h)

    bp = rules.backprop().gradients(rules.RuleState(), net, params, x, y, loss).signals
    dfa_rule = rules.direct_feedback_alignment()
    st = dfa_rule.init(jax.random.fold_in(key, 1), net)
    dfa = dfa_rule.gradients(st, net, params, x, y, loss).signals
    kb = rules.kickback().gradients(rules.RuleState(), net, params, x, y, loss).signals
    for i in range(1, net.depth):  # hidden boundaries
        h = hs[i]
        errs.append(jnp.max(jnp.abs(table_signal(h, -exact[i - 1], None) - bp[i - 1])))
        B = st.fixed[i - 1]
        if wrong_B:
            B = jax.random.normal(jax.random.fold_in(key, 7 + i), B.shape) / jnp.sqrt(B.shape[0])
        errs.append(jnp.max(jnp.abs(table_signal(h, -e, B.T) - dfa[i - 1])))
        ones = jnp.ones((h.shape[1], e.shape[1]))
        errs.append(jnp.max(jnp.abs(table_signal(h, -e, ones) - kb[i - 1])))
    return jnp.max(jnp.stack(errs))


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


@x64
def table1_identities(
    key: jax.Array, instances: int, *, wrong_B: bool = False, sizes: tuple[int, ...] = (5, 7, 6, 3)
) -> list[Claim]:
    """Item 19: autograd of −⟨stop_grad(t), SG(h)⟩ equals each rule's signal."""
    f = jax.jit(jax.vmap(lambda k: _identity_one(k, sizes, wrong_B)))
    worst = jnp.max(f(keys(key, instances)))
    c = at_most(
        "table1/∂L_SG/∂h=δ̂ (Bprop, DFA, Kickback)",
        "Table 1",
        worst,
        1e-12,
        instances,
        f"max abs error, float64, tanh MLP {sizes}, softmax cross-entropy",
    )
    return [control(c, "DFA row with a different random A")] if wrong_B else [c]


@x64
def table1_trajectories(
    key: jax.Array, instances: int, *, random_B: bool = False, sizes: tuple[int, ...] = (5, 7, 6, 3)
) -> list[Claim]:
    """Items 20–21: Kickback ≡ DFA(B = 1) and backprop rule ≡ jax.grad, 100 SGD steps."""
    f = jax.jit(jax.vmap(lambda k: _trajectories_one(k, sizes, random_B)))
    r = jnp.max(f(keys(key, instances)), axis=0)
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
