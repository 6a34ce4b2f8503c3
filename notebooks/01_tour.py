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
# # 01 · A tour of sgjax: what a synthetic gradient is
#
# A network is a sequence of stages $f_1, \dots, f_N$: $h_0 = x$, $h_i = f_i(\theta_i, h_{i-1})$,
# $p = h_N$, loss $L(p, y)$. Backprop trains stage $i$ with the gradient arriving at its output,
# $\partial L/\partial h_i$ — which it must *wait* for: the whole forward and backward pass has
# to finish first (update locking).
#
# A **synthetic gradient** (Jaderberg et al. 2017) is a small module that predicts that gradient
# from what is available locally: $SG(h_i, y) \approx \partial L / \partial h_i$. Stage $i$ updates at
# once with the prediction, and the module itself regresses onto the real (or bootstrapped)
# gradient when it arrives. sgjax's default module is linear and label-conditioned,
# $SG(h, y) = hA + yB + C$, zero-initialised so that a fresh module sends nothing.
#
# Czarnecki et al. (2017) put SG beside backprop, feedback alignment (FA), direct feedback
# alignment (DFA) and Kickback: every one of them keeps the chain rule *inside* a stage and only
# changes the signal $\hat\delta_i$ at its output. In sgjax each is an `UpdateRule` — a
# NamedTuple of pure functions, like an optax transformation.
#
# Set `SGJAX_SMOKE=1` for a fast run (a few steps; what CI does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from sgjax import estimators, nets, rules, train
from sgjax.infra import data

SMOKE = os.environ.get("SGJAX_SMOKE") == "1"
STEPS = 40 if SMOKE else 3000
FIGDIR = os.environ.get("SGJAX_FIGURES")  # save the figures there if set

# %% [markdown]
# ## A synthetic gradient module, on its own
# A fresh module outputs exactly zero (weights *and* bias are zero), so the stage below it does
# not move until the module has learned something.

# %%
sg = estimators.conditioned()
theta = sg.init(jax.random.key(0), (4,), 10)
h, y = jnp.ones((2, 4)), jax.nn.one_hot(jnp.array([3, 7]), 10)
print({k: v.shape for k, v in theta.items()})
print(sg.apply(theta, h, y))

# %% [markdown]
# ## One network, six rules, the digits
# A 3-hidden-layer ReLU MLP (2 narrow layers in smoke mode) on scikit-learn's 8×8 digits (bundled, offline). Each rule is
# trained by the same jitted step; `cosine=True` also logs, per hidden layer, the cosine between
# the signal the rule used and the true gradient.

# %%
ds = data.digits()
net = nets.mlp([64, 32, 32, 10] if SMOKE else [64, 128, 128, 128, 10], "relu")
RULES = {
    "backprop": rules.backprop(),
    "sg": rules.synthetic_gradients(),  # an SG module at every hidden boundary (SG*)
    "sg-prop": rules.synthetic_gradients(prop=1.0),
    "fa": rules.feedback_alignment(),
    "dfa": rules.direct_feedback_alignment(),
    "kickback": rules.kickback(),
}
runs = {}
for name, rule in RULES.items():
    state, hist = train.fit(
        net,
        rule,
        "xent",
        optax.adam(3e-4),
        ds.x_train,
        ds.y_train,
        steps=STEPS,
        batch_size=64,
        key=jax.random.key(0),
        cosine=True,
        log_every=max(STEPS // 60, 1),
    )
    test = train.evaluate(net, state.params, "xent", ds.x_test, ds.y_test)
    runs[name] = (hist, test)
    print(f"{name:9s} test accuracy {test['accuracy']:.3f}   loss {test['loss']:.3f}")

# %% [markdown]
# ## Loss curves and SG-vs-true-gradient cosine per layer
# Backprop's cosine is 1 by definition. The SG modules start at 0 (they output nothing) and
# climb as they learn; the lower modules bootstrap their targets from the ones above, so they
# align later. FA and DFA align as the forward weights come to agree with the fixed feedback.

# %%
H = net.depth - 1  # hidden layers
fig, axes = plt.subplots(1, H + 1, figsize=(4.3 * (H + 1), 3.6))
for name, (hist, _) in runs.items():
    steps = [m["step"] for m in hist]
    axes[0].plot(steps, [m["loss"] for m in hist], label=name)
    for layer in range(H):
        axes[layer + 1].plot(steps, [m["cosine"][layer] for m in hist], label=name)
axes[0].set(title="training loss", xlabel="step", yscale="log")
for layer in range(H):
    axes[layer + 1].set(title=f"cos(δ̂, ∂L/∂h) at h_{layer + 1}", xlabel="step", ylim=(-0.2, 1.05))
axes[0].legend(fontsize=8)
fig.tight_layout()
if FIGDIR:
    fig.savefig(os.path.join(FIGDIR, "01_tour.png"), dpi=110)

# %% [markdown]
# ## The same step, by hand
# `train.fit` is a thin loop. The step itself is a pure function: jit it, or `jax.vmap` it over
# seeds — here four SG networks trained at once from four initialisations.

# %%
rule = rules.synthetic_gradients()
opt = optax.adam(3e-4)
states = jax.vmap(lambda k: train.init(k, net, rule, opt))(jax.random.split(jax.random.key(1), 4))
step = jax.jit(jax.vmap(train.make_step(net, rule, "xent", opt), in_axes=(0, None)))
for _, (xb, yb) in zip(range(20 if SMOKE else 500), train.batches(ds.x_train, ds.y_train, 64)):
    states, metrics = step(states, (jnp.asarray(xb), jnp.asarray(yb)))
print("per-seed loss:", np.round(metrics["loss"], 3))
