# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The unified view: Table 1, live
#
# Czarnecki et al. (2017, §6, Table 1) write every rule as *the chain rule with one signal
# replaced*: at a hidden layer $h$ there is an "SG module" $s = SG(h, y)$, a target $t$ (held
# constant) and a loss $L_{SG}(t, s)$; the lower network follows
# $\hat\delta = \partial L_{SG}/\partial h$ (for SG itself: the module's output $s$).
#
# | method   | $SG(h, y)$ | trains? | target $t$ | $L_{SG}(t, s)$ | update locked | backward locked |
# |---|---|---|---|---|---|---|
# | SG       | $hA + yB + C$ | yes | $\partial L/\partial h$ | $\lVert t - s\rVert^2$ | no | no |
# | SG+prop  | $hA + yB + C$ | yes | $\partial L/\partial h$ | $\lVert t - s\rVert^2$ | yes* | yes* |
# | backprop | $h$ | no | $-\partial L/\partial h$ | $-\langle t, s\rangle$ | yes | yes |
# | DFA      | $hA$ | no | $-\partial L/\partial p$ | $-\langle t, s\rangle$ | yes | no |
# | FA       | $hA$ | no | $-\partial L/\partial g$, $g = hW$ | $-\langle t, s\rangle$ | yes | yes |
# | Kickback | $h\mathbf{1}$ | no | $-\partial L/\partial p$ | $-\langle t, s\rangle$ | yes | no |
#
# Below, each row is built from its three ingredients with `jax.grad`, and compared with the
# signal that sgjax's rule of that name actually used (`RuleOutput.signals`). Then the
# special cases in which a rule *is* backprop are checked the same way.

# %%
import os

import jax
import jax.numpy as jnp

from sgjax import losses, nets, rules

SMOKE = os.environ.get("SGJAX_SMOKE") == "1"  # this notebook is fast either way
key = jax.random.key(0)
net = nets.mlp([8, 16, 16, 4], "tanh")
params = net.init(key)
x = jax.random.normal(jax.random.key(1), (32, 8))
y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
loss = losses.softmax_cross_entropy
hs = net.hidden(params, x)  # [x, h_1, h_2, p]
true = rules.exact_signals(net, params, x, y, loss)  # ∂ℓ/∂h_1, ∂ℓ/∂h_2, ∂ℓ/∂p
e = true[-1]


def followed(L_sg, t, s_fn, h):
    """δ̂ = ∂L_SG(stop_grad(t), SG(h))/∂h — the Table 1 recipe (per example, summed)."""
    return jax.grad(lambda h: L_sg(jax.lax.stop_gradient(t), s_fn(h)))(h)


def inner(t, s):
    return -jnp.sum(t * s)


def signals(rule, state=None):
    state = rule.init(jax.random.key(3), net) if state is None else state
    return rule.gradients(state, net, params, x, y, loss).signals


TOL = 1e-5  # float32: the two sides differ only by summation order


def show(row, a, b):
    diff = float(jnp.max(jnp.abs(a - b)))
    print(f"{row:34s} max |Table 1 − sgjax| = {diff:.2e}")
    assert diff <= TOL, row  # the notebook fails in CI if an identity breaks


# %% [markdown]
# ## Backprop, DFA, Kickback: $L_{SG} = -\langle t, s\rangle$

# %%
dfa = rules.direct_feedback_alignment()
B_dfa = dfa.init(jax.random.key(3), net).fixed  # B[k]: (width of p, width of h_{k+1})
for i in (1, 2):
    h = hs[i]
    show(
        f"backprop  h_{i}: s = h, t = −∂L/∂h",
        followed(inner, -true[i - 1], lambda h: h, h),
        signals(rules.backprop())[i - 1],
    )
    show(
        f"DFA       h_{i}: s = hA, t = −∂L/∂p",
        followed(inner, -e, lambda h, A=B_dfa[i - 1].T: h @ A, h),
        signals(dfa)[i - 1],
    )
    show(
        f"Kickback  h_{i}: s = h1, t = −∂L/∂p",
        followed(inner, -e, lambda h: h @ jnp.ones((16, 4)), h),
        signals(rules.kickback())[i - 1],
    )

# %% [markdown]
# ## FA: the target is the error at the next layer's pre-activation $g = hW + b$
# For the top hidden layer $\partial L/\partial g = \partial L/\partial p$ (the output stage is
# linear); below, FA's own signal from above passes through $\tanh'$.

# %%
fa = rules.feedback_alignment()
B_fa = fa.init(jax.random.key(3), net).fixed  # B[k]: the shape of W_{k+2}ᵀ
fa_signals = signals(fa)
for i in (1, 2):
    g = hs[i] @ params[i]["W"] + params[i]["b"]
    dL_dg = e if i == 2 else fa_signals[i] * (1 - jnp.tanh(g) ** 2)
    show(
        f"FA        h_{i}: s = hA, t = −∂L/∂g",
        followed(inner, -dL_dg, lambda h, A=B_fa[i - 1].T: h @ A, hs[i]),
        fa_signals[i - 1],
    )

# %% [markdown]
# ## SG and SG + prop: $L_{SG} = \lVert t - s\rVert^2$, a trained module
# With random (non-zero) module parameters and true targets: SG's lower network follows the
# module's output $s$ itself; SG + prop adds $\alpha\,\partial L_{SG}/\partial h$; the module is
# trained by $\partial L_{SG}/\partial\theta_{SG}$ (batch mean).

# %%
alpha = 0.5
sg_rule = rules.synthetic_gradients(targets="true")
state = sg_rule.init(key, net)
state = state._replace(
    params=jax.tree.map(
        lambda a: 0.3 * jax.random.normal(jax.random.key(a.size), a.shape), state.params
    )
)
out = sg_rule.gradients(state, net, params, x, y, loss)
prop = signals(rules.synthetic_gradients(targets="true", prop=alpha), state)
y1 = jax.nn.one_hot(y, 4)
for i in (1, 2):
    theta = state.params[i - 1]
    s_fn = lambda h, th=theta: h @ th["A"] + y1 @ th["B"] + th["C"]  # noqa: E731
    sq = lambda t, s: jnp.sum((t - s) ** 2)  # noqa: E731
    show(f"SG        h_{i}: δ̂ = s", s_fn(hs[i]), out.signals[i - 1])
    show(
        f"SG+prop   h_{i}: δ̂ = s + α ∂L_SG/∂h",
        s_fn(hs[i]) + alpha * followed(sq, true[i - 1], s_fn, hs[i]),
        prop[i - 1],
    )
    t, h = true[i - 1], hs[i]
    g_theta = jax.grad(lambda th, t=t, h=h, f=s_fn: jnp.mean(jnp.sum((t - f(h, th)) ** 2, -1)))(
        theta
    )
    show(f"SG        h_{i}: ∂L_SG/∂θ_SG", g_theta["A"], out.rule_grads[i - 1]["A"])

# %% [markdown]
# ## The rows as library data
# Every registered rule carries its Table 1 row (`rules.RULES[name].table1`: SG, target,
# $L_{SG}$ at each hidden boundary). `rules.table1_errors` compares the rule's signals with
# the row's; the contract suite (`tests/test_rules.py`) runs it over every registered rule.

# %%
for name in rules.RULES:
    st = rules.get(name).init(jax.random.key(3), net)
    st = st._replace(
        params=jax.tree.map(
            lambda a: 0.3 * jax.random.normal(jax.random.key(a.size), a.shape), st.params
        )
    )
    errs = rules.table1_errors(name, st, net, params, x, y, loss)
    show(f"{name:9s} rules.RULES[{name!r}].table1", errs.max(), 0.0)

# %% [markdown]
# ## When a rule *is* backprop
# * FA with $B = W^\top$ (the feedback matrices equal the forward weights);
# * DFA with one hidden layer and $B = W_{\text{out}}^\top$;
# * Kickback is DFA with $B = \mathbf{1}$;
# * an SG at the output whose parameters are the exact MSE gradient $p - y$
#   ($A = I$, $B = -I$, $C = 0$): Theorem 1's fixed point.
# Compared on the parameter gradients of every stage.


# %%
def grads(rule, state=None, net=net, params=params, loss=loss):
    state = rule.init(jax.random.key(3), net) if state is None else state
    return rule.gradients(state, net, params, x, y, loss).grads


def gap(a, b):
    d = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert d <= TOL
    return d


bp = grads(rules.backprop())
print(
    "FA(B = Wᵀ)        vs backprop:",
    f"{gap(grads(rules.feedback_alignment([p['W'].T for p in params[1:]])), bp):.2e}",
)
net1 = nets.mlp([8, 16, 4], "tanh")
params1 = net1.init(key)
print(
    "DFA(B = W_outᵀ)   vs backprop:",
    f"{gap(grads(rules.direct_feedback_alignment([params1[1]['W'].T]), net=net1, params=params1), grads(rules.backprop(), net=net1, params=params1)):.2e}",
)
print(
    "DFA(B = 1)        vs Kickback:",
    f"{gap(grads(rules.direct_feedback_alignment([jnp.ones((4, 16))] * 2)), grads(rules.kickback())):.2e}",
)
exact = rules.synthetic_gradients(at="output")
st = exact.init(key, net)._replace(params=({"A": jnp.eye(4), "B": -jnp.eye(4), "C": jnp.zeros(4)},))
print(
    "SG(p,y) = p − y   vs backprop:",
    f"{gap(grads(exact, st, loss=losses.mse), grads(rules.backprop(), loss=losses.mse)):.2e}",
)
