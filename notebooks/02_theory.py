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
# # 02 · The theory, drawn
#
# Czarnecki et al. (2017) prove that a *linear*, label-conditioned SG keeps the right answers
# in simple settings, and show how it can go wrong. This notebook runs those settings through
# sgjax's ordinary training step — the same `rules.synthetic_gradients` a user trains an MLP
# with — and draws what happens; beside each picture, the `theory` package checks the claim on
# fresh random instances (`sgjax verify` runs them all).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from sgjax import diagnostics, losses, nets, rules, train
from sgjax.infra import data
from theory import critical_points, proposition2, theorem1

SMOKE = os.environ.get("SGJAX_SMOKE") == "1"
FIGDIR = os.environ.get("SGJAX_FIGURES")


def table(claims):
    for c in claims:
        kind = "" if c.expect_pass else "  (negative control: must fail)"
        print(f"{'ok ' if c.ok else 'BAD'} {c.name:34s} {c.measured:10.3g} {c.target:10s}{kind}")


# %% [markdown]
# ## Theorem 1: linear regression with a linear SG between the output and the loss
# $p = W\bar x$, $L = \tfrac12 (p - y)^2$; the SG sees $(p, y)$ and is $pA + yB + C$, zero at the
# start. The model follows the SG, the SG regresses onto $p - y$. The theorem says the pair
# converges to the least-squares solution; the SG's fixed point is $A = 1, B = -1, C = 0$,
# i.e. the true gradient. The paper's Lyapunov function is $\lVert f\rVert + \lVert\xi\rVert$:
# $f$ the part of the residual the model can still remove, $\xi$ the SG's error (the theorem
# needs line-searched rates for it to decrease monotonically; here the rates are fixed).

# %%
kx, kw = jax.random.split(jax.random.key(0))
X = jax.random.normal(kx, (50, 5))
y = X @ jax.random.normal(kw, (5, 1)) + 1.0 + 0.3 * jax.random.normal(kw, (50, 1))
net = nets.mlp([5, 1])  # one linear stage: p = x W + b
mu, nu = optax.sgd(0.01), optax.sgd(0.02)
rule = rules.synthetic_gradients(at="output", sg_optimizer=nu)  # SG(p, y) = pA + yB + C
step = train.make_step(net, rule, losses.mse, mu)
state = train.init(jax.random.key(1), net, rule, mu)
STEPS_T = 1500 if SMOKE else 6000
# Full-batch steps in one jitted scan, keeping (W, SG parameters) at every step.
_, (P, SG) = jax.jit(
    lambda s: jax.lax.scan(
        lambda s, _: (step(s, (X, y))[0], (s.params[0], s.rule_state.params[0])), s, length=STEPS_T
    )
)(state)
Xb = jnp.concatenate([X, jnp.ones((50, 1))], 1)
W = jnp.concatenate([P["W"], P["b"][:, None]], 1)  # (steps, 6, 1)
p = Xb @ W  # (steps, 50, 1)
xi = p * SG["A"] + y * SG["B"] + SG["C"][:, None] - (p - y)  # the SG's error
f = Xb @ jnp.linalg.pinv(Xb) @ (y - p)  # the part of the residual the model can remove
lyapunov = jnp.linalg.norm(f, axis=(1, 2)) + jnp.linalg.norm(xi, axis=(1, 2))
dist = jnp.linalg.norm(W - jnp.linalg.lstsq(Xb, y)[0], axis=(1, 2))
traj = np.column_stack([dist, SG["A"][:, 0, 0], SG["B"][:, 0, 0], SG["C"][:, 0], lyapunov])

fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
axes[0].semilogy(traj[:, 0])
axes[0].set(title="‖W − W_OLS‖", xlabel="step")
for j, (lab, target) in enumerate([("A", 1), ("B", -1), ("C", 0)]):
    axes[1].plot(traj[:, 1 + j], label=f"{lab} → {target}")
axes[1].set(title="SG parameters", xlabel="step")
axes[1].legend()
axes[2].semilogy(traj[:, 4])
axes[2].set(title="Lyapunov ‖f‖ + ‖ξ‖", xlabel="step")
fig.tight_layout()
if FIGDIR:
    fig.savefig(os.path.join(FIGDIR, "02_theory.png"), dpi=110)
print("final ‖W − W_OLS‖ =", traj[-1, 0], " SG (A, B, C) =", traj[-1, 1:4].round(4))

# %% [markdown]
# The `theory` package's check (full mode; in smoke mode only the label-free control): line-searched SG rate and the corrected main rate, on random
# instances in float64 (convergence to OLS, the invariant least-squares residual, the monotone
# Lyapunov function), and, with fixed rates, the failure of an SG that does not see the label.

# %%
# The line-searched check runs 60 000 iterations per instance: full mode only.
if not SMOKE:
    table(theorem1.theorem1_line_search(jax.random.key(2), 16))
table(theorem1.theorem1_fixed_rates(jax.random.key(3), 2 if SMOKE else 16, label=False))

# %% [markdown]
# ## Proposition 2: the cosine lemma
# If the SG error is small relative to the gradient, $\lVert e\rVert \le r\lVert g\rVert$ with
# $r = (1-\delta)/(1+\delta)$, the followed direction $g + e$ keeps cosine $\ge \delta$ with $g$ —
# enough for descent. The lemma is loose: the tight bound is $\sqrt{1 - r^2}$.

# %%
kg, ke, kr = jax.random.split(jax.random.key(4), 3)
g = jax.random.normal(kg, (20_000, 10))
e = jax.random.normal(ke, (20_000, 10))
r = jax.random.uniform(kr, (20_000,), maxval=0.99)
e = e / jnp.linalg.norm(e, axis=1, keepdims=True) * (r * jnp.linalg.norm(g, axis=1))[:, None]
cos = jnp.sum(g * (g + e), 1) / (jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(g + e, axis=1))
rr = np.linspace(0, 0.99, 100)
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.scatter(r, cos, s=1, alpha=0.2, label="random (g, e)")
ax.plot(rr, (1 - rr) / (1 + rr), "r", label="lemma: δ = (1 − r)/(1 + r)")
ax.plot(rr, np.sqrt(1 - rr**2), "k--", label="tight: √(1 − r²)")
ax.set(xlabel="r = ‖e‖ / ‖g‖", ylabel="cos(g, g + e)")
ax.legend()
if not SMOKE:  # 10⁵ samples in three dimensions, in float64
    table(proposition2.cosine_lemma(jax.random.key(5), 64))

# %% [markdown]
# ## Appendix A: an SG creates new critical points
# Data $\{-2, -1, 1, 2\}$, model $ax + b$, loss $\sum|ax + b|$ (minimum at $a = b = 0$), and an SG
# that outputs one trainable number $c$, blind to its input (sgjax's `label_only` estimator with
# an all-zero target). The SG-driven update of $a$ is $-c\sum_i x_i = 0$, and $c$ settles at the
# mean sign of $ax + b$, which is 0 wherever $|b| < |a|$: that whole region is stationary for
# the SG system though the true gradient there is $\partial L/\partial a = 6$. Below, a grid of
# starts trained at once with `jax.vmap`: SG (arrows) against backprop (dots).

# %%
xs = jnp.array([[-2.0], [-1.0], [1.0], [2.0]])
zero = jnp.zeros((4, 1))
l1 = losses.Loss(
    "l1", lambda p, y: jnp.mean(jnp.sum(jnp.abs(p - y), -1)), lambda p, y: jnp.sign(p - y)
)
net_a = nets.mlp([1, 1])
starts = jnp.stack(
    jnp.meshgrid(jnp.linspace(-1.5, 1.5, 9), jnp.linspace(-1.5, 1.5, 9)), -1
).reshape(-1, 2)
STEPS_A = 500 if SMOKE else 5000


def run(rule):
    opt = optax.sgd(0.01)  # the SG rule brings its own SGD 0.1
    s0 = jax.vmap(
        lambda ab: train.init(jax.random.key(0), net_a, rule, opt)._replace(
            params=({"W": ab[:1, None], "b": ab[1:]},)
        )
    )(starts)
    step = jax.vmap(train.make_step(net_a, rule, l1, opt), in_axes=(0, None))
    s, _ = jax.jit(lambda s: jax.lax.scan(lambda s, _: step(s, (xs, zero)), s, length=STEPS_A))(s0)
    return jnp.concatenate([s.params[0]["W"][:, 0], s.params[0]["b"]], 1)


end_sg = run(rules.synthetic_gradients("label_only", at="output", sg_optimizer=optax.sgd(0.1)))
end_bp = run(rules.backprop())
aa, bb = np.meshgrid(np.linspace(-1.6, 1.6, 100), np.linspace(-1.6, 1.6, 100))
L = sum(np.abs(aa * x + bb) for x in (-2, -1, 1, 2))
fig, ax = plt.subplots(figsize=(5.5, 5))
ax.contourf(aa, bb, L, levels=20, cmap="Greys", alpha=0.6)
ax.fill_between(
    [-1.6, 0, 1.6],
    [1.6, 0, 1.6],
    [-1.6, 0, -1.6],
    color="tab:orange",
    alpha=0.15,
    label="|b| < |a|: stationary for SG",
)
d = end_sg - starts
ax.quiver(
    starts[:, 0],
    starts[:, 1],
    d[:, 0],
    d[:, 1],
    angles="xy",
    scale_units="xy",
    scale=1,
    color="tab:blue",
    width=0.004,
    label="SG: start → end",
)
ax.scatter(end_bp[:, 0], end_bp[:, 1], c="tab:red", s=12, label="backprop: end")
ax.set(xlabel="a", ylabel="b", xlim=(-1.6, 1.6), ylim=(-1.6, 1.6))
ax.legend(loc="lower left", fontsize=8)
inside = np.abs(starts[:, 1]) < np.abs(starts[:, 0])
print(
    "max |Δa| over SG runs:",
    float(jnp.max(jnp.abs(d[:, 0]))),
    " max |Δ(a, b)| for starts with |b| < |a|:",
    float(jnp.max(jnp.abs(d[inside]))),
)
table(critical_points.appendix_a(jax.random.key(6), 8 if SMOKE else 64, steps=STEPS_A))

# %% [markdown]
# ## The implied quadratic loss against the true loss
# A linear SG $hA + yB + C$ is the gradient (in $h$) of a quadratic,
# $\hat L(h) = \tfrac12 h A_{sym} h^\top + (yB + C)h^\top$ (§1.4): the lower network descends
# that quadratic, not the true loss. Trained on the paper's 2-D "noisy linear" grid (Fig. 2)
# with an SG between every pair of layers, each module's $\hat L$ is compared with the true
# per-point loss by rank (the constant is unknown). The top module sees the output directly;
# lower ones bootstrap from the module above, so their quadratic tracks the loss less well.

# %%
grid = data.grid("noisy", size=10)
net_g = nets.mlp([2, 32, 32, 32, 32, 2], "relu")
rule_g = rules.synthetic_gradients(at="all")
state_g, _ = train.fit(
    net_g,
    rule_g,
    "mse",
    optax.adam(3e-3),
    grid.x_train,
    grid.y_train,
    steps=100 if SMOKE else 5000,
    batch_size=100,
    key=jax.random.key(7),
)
x_g, y_g = jnp.asarray(grid.x_train), jnp.asarray(grid.y_train)
hs = net_g.hidden(state_g.params, x_g)
true_loss = jax.vmap(lambda p, t: losses.mse.fn(p[None], t[None]))(hs[-1], y_g)
y1 = jax.nn.one_hot(y_g, 2)
implied = [
    diagnostics.implied_quadratic_loss(th, hs[i + 1], y1)
    for i, th in enumerate(state_g.rule_state.params)
]
rho = [diagnostics.spearman(q, true_loss) for q in implied]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].scatter(true_loss, implied[-1], c=grid.y_train, cmap="coolwarm", s=12)
axes[0].set(
    xlabel="true loss ℓ(p, y)", ylabel="implied L̂(h) (top SG)", title=f"Spearman ρ = {rho[-1]:.2f}"
)
axes[1].bar([f"SG {i + 1}" for i in range(len(rho))], rho)
axes[1].set(title="rank correlation of L̂ with the true loss", ylim=(-1, 1))
fig.tight_layout()
print("Spearman ρ per SG module (bottom → top):", np.round(rho, 3))
