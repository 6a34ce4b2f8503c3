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
# # 05 · Interfaces: synthetic gradients inside any JAX code
#
# The rules of notebooks 01–04 need the model as a `Network` of stages. An **interface** needs
# nothing of the sort: it is a function you put on an activation, anywhere in your own JAX code.
#
# $$h \leftarrow \mathrm{sg\_interface}(h, \theta_{SG}, c)$$
#
# is the identity going forward. Going backward (a `jax.custom_vjp`), with $g$ the cotangent
# arriving from above, it
#
# * sends $\lambda g + (1-\lambda)\,SG(h, c)$ below instead of $g$ ($\lambda = 0$: DNI,
#   $\lambda = 1$: backprop);
# * gives $\theta_{SG}$ the gradient of $\mathrm{mean}_b \lVert SG(h_b, c_b) - t_b \rVert^2$ with
#   $t = \mathrm{stop\_grad}(g)$ (per example: $B\cdot g$ for a batch-mean loss).
#
# So one ordinary `jax.grad` of your loss gives the model its DNI gradients and the SG modules
# their regression gradients, and interfaces stacked in a model bootstrap from each other. A
# **forward interface** (`synthetic_input`) does the same for activations: a model $I(x)$
# learns to predict $h$, so the layers above can run without waiting for it (DNI §3.3).
#
# Set `SGJAX_SMOKE=1` for a fast run (what CI does).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from sgjax import estimators, losses, nets, rules, train
from sgjax.infra import data
from sgjax.interface import init_sg, sg_interface, synthetic_input

SMOKE = os.environ.get("SGJAX_SMOKE") == "1"
STEPS = 20 if SMOKE else 2000
FIGDIR = os.environ.get("SGJAX_FIGURES")  # save the figures there if set

# %% [markdown]
# ## One interface, by hand
# An SG that predicts the constant $(1, 2, 3)$ for every example. Below the interface the
# gradient of a batch-mean loss is that prediction divided by the batch size, whatever the loss
# above says; the module's own gradient is that of its regression onto the true gradient.

# %%
B = 4
h = jnp.arange(12.0).reshape(B, 3) / 10
c = jax.nn.one_hot(jnp.arange(B) % 2, 2)
sg = {**init_sg(jax.random.key(0), (3,), 2), "C": jnp.array([1.0, 2.0, 3.0])}


def upper(h):  # any loss above the interface: a batch mean
    return jnp.mean(jnp.sum(jnp.sin(h) ** 2, -1))


g_h, g_sg = jax.grad(lambda h, sg: upper(sg_interface(h, sg, c)), argnums=(0, 1))(h, sg)
print("sent below:\n", g_h)
assert jnp.allclose(g_h, jnp.array([1.0, 2.0, 3.0]) / B)

# the module's gradient, written out: regression of SG(h, c) onto t = B · ∂L/∂h
t = B * jax.grad(upper)(h)
want = jax.grad(
    lambda th: jnp.mean(jnp.sum((estimators.conditioned().apply(th, h, c) - t) ** 2, -1))
)(sg)
assert all(jnp.allclose(g_sg[k], want[k], atol=1e-6) for k in want)
print("SG gradient = autograd of the regression loss: ok")

# %% [markdown]
# ## The same steps as the rule
# Interfaces at the boundaries of an `nets.mlp` reproduce `rules.synthetic_gradients` — every
# placement, bootstrapped targets, SG + prop — and `λ = 1` reproduces backprop. The SG modules
# are given random values here so that every term of the update is non-zero.

# %%
net = nets.mlp([12, 16, 16, 16, 5], "tanh")
params = net.init(jax.random.key(1))
x = jax.random.normal(jax.random.key(2), (24, 12))
y = jax.random.randint(jax.random.key(3), (24,), 0, 5)
est = estimators.conditioned()


def interface_model(boundaries, **kw):
    def loss(params, sgs, x, y):
        ctx, hh, k = jax.nn.one_hot(y, net.out_dim), x, 0
        for i, (stage, theta) in enumerate(zip(net.stages, params), start=1):
            hh = stage.apply(theta, hh)
            if i in boundaries:
                hh = sg_interface(hh, sgs[k], ctx, **kw)
                k += 1
        return losses.softmax_cross_entropy.fn(hh, y)

    return loss


def random_sgs(boundaries):
    rng = np.random.default_rng(0)
    mods = tuple(est.init(None, net.stages[b - 1].out_shape, net.out_dim) for b in boundaries)
    return jax.tree.map(lambda v: jnp.asarray(0.3 * rng.normal(size=v.shape), jnp.float32), mods)


def max_rel(a, b):
    a, b = (list(map(np.asarray, jax.tree.leaves(t))) for t in (a, b))
    return max(float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-30)) for u, v in zip(a, b))


print(f"{'placement':12s} {'prop':>4s}  max rel. diff (stages, SG modules)")
CASES = [
    ("all", (1, 2, 3), 0.0),
    ("middle", (2,), 0.0),
    ("output", (4,), 0.0),
    ("all", (1, 2, 3), 1.0),
]
for at, bounds, prop in CASES[::3] if SMOKE else CASES:  # CI's tests cover every placement
    sgs = random_sgs(bounds)
    rule = rules.synthetic_gradients(est, at=at, prop=prop)
    out = jax.jit(lambda s, p, rule=rule: rule.gradients(rules.RuleState(s), net, p, x, y, "xent"))(
        sgs, params
    )
    g_p, g_s = jax.jit(jax.grad(interface_model(bounds, prop=prop), argnums=(0, 1)))(
        params, sgs, x, y
    )
    d = (max_rel(g_p, out.grads), max_rel(g_s, out.rule_grads))
    print(f"{at:12s} {prop:4.1f}  {d[0]:.1e}, {d[1]:.1e}")
    assert max(d) < 1e-6
g_bp = jax.jit(jax.grad(interface_model((1, 2, 3), lam=1.0)))(params, random_sgs((1, 2, 3)), x, y)
ref = jax.jit(lambda p: rules.backprop().gradients((), net, p, x, y, "xent").grads)(params)
print(f"λ = 1 vs backprop: {max_rel(g_bp, ref):.1e}")
assert max_rel(g_bp, ref) < 1e-6

# %% [markdown]
# ## Modes and BP(λ) on the digits
# The same plain-function MLP trained five ways: DNI (`mode="apply"`), BP(λ = 0.5), backprop
# through the interfaces (λ = 1), SG warmed up on the true gradient for the first fifth of the
# run and then switched on, and "No Bprop" (`mode="no-backprop"`: only the top layer learns).
# Alongside, the cosine between the synthetic gradient at the first interface and the true one.

# %%
ds = data.digits()
WIDTH = 64 if SMOKE else 256
mlp = nets.mlp([64, WIDTH, WIDTH, 10], "relu")


def model(params, sgs, x, y, **kw):
    ctx, hh = jax.nn.one_hot(y, 10), x
    for i, (stage, theta) in enumerate(zip(mlp.stages, params)):
        hh = stage.apply(theta, hh)
        if i < 2:
            hh = sg_interface(hh, sgs[i], ctx, **kw)
    return hh


def xent(logits, y):
    return losses.softmax_cross_entropy.fn(logits, y)


def above_first(params, hh):  # the layers above the first interface
    for stage, theta in zip(mlp.stages[1:], params[1:]):
        hh = stage.apply(theta, hh)
    return hh


@jax.jit
def sg_cosine(params, sgs, x, y):
    """cos(SG(h_1, y), true per-example ∂ℓ/∂h_1), over the batch."""
    h1 = mlp.stages[0].apply(params[0], x)
    true = x.shape[0] * jax.grad(lambda hh: xent(above_first(params, hh), y))(h1)
    s = est.apply(sgs[0], h1, jax.nn.one_hot(y, 10))
    return jnp.vdot(s, true) / (jnp.linalg.norm(s) * jnp.linalg.norm(true) + 1e-12)


def run(schedule):
    """schedule(step) -> keyword arguments of sg_interface for that step."""
    opt = optax.adam(3e-4)
    params = mlp.init(jax.random.key(0))
    sgs = tuple(init_sg(k, (WIDTH,), 10) for k in jax.random.split(jax.random.key(1), 2))
    o = opt.init((params, sgs))
    steps = {}
    curve = []
    for i, (xb, yb) in zip(range(STEPS), train.batches(ds.x_train, ds.y_train, 64)):
        kw = schedule(i)
        key = tuple(sorted(kw.items()))
        if key not in steps:  # one jitted step per setting (here at most two)

            @jax.jit
            def step(params, sgs, o, x, y, kw=kw):
                g = jax.grad(lambda v: xent(model(v[0], v[1], x, y, **kw), y))((params, sgs))
                u, o = opt.update(g, o)
                (params, sgs) = optax.apply_updates((params, sgs), u)
                return params, sgs, o

            steps[key] = step
        params, sgs, o = steps[key](params, sgs, o, xb, yb)
        if i % max(STEPS // 20, 1) == 0:
            curve.append((i, float(sg_cosine(params, sgs, ds.x_test, ds.y_test))))
    acc = float(jnp.mean(mlp.apply(params, ds.x_test).argmax(-1) == ds.y_test))
    return acc, curve, len(steps)


WARM = STEPS // 5
SCHEDULES = {
    "DNI (apply)": lambda i: {},
    "BP(λ=0.5)": lambda i: {"lam": 0.5},
    "backprop (λ=1)": lambda i: {"lam": 1.0},
    "warm-up, then DNI": lambda i: {"mode": "warm-up"} if i < WARM else {},
    "no-backprop": lambda i: {"mode": "no-backprop"},
}
if SMOKE:  # fewer compilations for CI
    SCHEDULES = {k: SCHEDULES[k] for k in ("DNI (apply)", "warm-up, then DNI", "no-backprop")}
results = {name: run(s) for name, s in SCHEDULES.items()}
for name, (acc, _, n_compiled) in results.items():
    print(f"{name:18s} test accuracy {acc:.3f}   ({n_compiled} step function(s) compiled)")

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, (_, curve, _) in results.items():
    ax.plot(*zip(*curve), label=name)
ax.axvline(WARM, color="grey", lw=0.5)
ax.set(xlabel="step", ylabel="cos(SG, true ∂ℓ/∂h₁)", title="SG quality at the first interface")
ax.legend(fontsize=8)
fig.tight_layout()
if FIGDIR:
    fig.savefig(os.path.join(FIGDIR, "05_modes.png"), dpi=110)

# %% [markdown]
# `no-backprop` trains nothing below the top layer (its SG stays at zero: cosine 0); under
# `warm-up` the SG learns from the true gradient while backprop trains the network, so it is
# already aligned when it is switched on.
#
# ## Synthetic inputs: running the upper part without waiting
# `synthetic_input(h, φ, x, model=I, mode="synthetic")` returns $I_\varphi(x)$ in place of $h$;
# $I$ regresses onto the real $h$, and the error the upper part computed at $I(x)$ is handed
# to the lower part. Here the upper layer only ever sees synthetic inputs.

# %%
k = jax.random.split(jax.random.key(5), 3)


def dense(key, a, b):
    return {"W": jax.random.normal(key, (a, b)) * (2 / a) ** 0.5, "b": jnp.zeros(b)}


def relu_dense(p, x):
    return jax.nn.relu(x @ p["W"] + p["b"])


v = {"lower": dense(k[0], 64, 128), "upper": dense(k[1], 128, 10), "I": dense(k[2], 64, 128)}


def logits(v, hh):
    return hh @ v["upper"]["W"] + v["upper"]["b"]


def synth_loss(v, x, y):
    hh = synthetic_input(relu_dense(v["lower"], x), v["I"], x, model=relu_dense, mode="synthetic")
    return xent(logits(v, hh), y)


opt = optax.adam(1e-3)


@jax.jit
def synth_step(v, o, x, y):
    u, o = opt.update(jax.grad(synth_loss)(v, x, y), o)
    return optax.apply_updates(v, u), o


o = opt.init(v)
for _, (xb, yb) in zip(range(STEPS), train.batches(ds.x_train, ds.y_train, 64)):
    v, o = synth_step(v, o, xb, yb)
real = float(jnp.mean(logits(v, relu_dense(v["lower"], ds.x_test)).argmax(-1) == ds.y_test))
fake = float(jnp.mean(logits(v, relu_dense(v["I"], ds.x_test)).argmax(-1) == ds.y_test))
print(
    f"upper layer trained on synthetic inputs only: test accuracy {real:.3f} on the real h, {fake:.3f} on I(x)"
)

# %% [markdown]
# ## Composition
# The interface is a `custom_vjp`, so JAX's transformations go through it: here a stack of
# equal-width layers in a `lax.scan` with a rematerialised body, an interface after every
# layer, and four seeds at once with `jax.vmap`.

# %%
DEPTH, W = 4, 32
x0 = jnp.asarray(ds.x_train[:64])
y0 = jnp.asarray(ds.y_train[:64])


def init(key):
    ks = jax.random.split(key, 3)
    layers = {"W": jax.random.normal(ks[0], (DEPTH, W, W)) / W**0.5, "b": jnp.zeros((DEPTH, W))}
    sgs = jax.vmap(lambda kk: init_sg(kk, (W,), 10))(jax.random.split(ks[1], DEPTH))
    return {"inp": dense(ks[2], 64, W), "layers": layers, "sgs": sgs, "out": dense(ks[2], W, 10)}


def deep(v, x, y):
    ctx = jax.nn.one_hot(y, 10)

    @jax.checkpoint
    def body(hh, layer):
        theta, sgp = layer
        return sg_interface(jnp.tanh(hh @ theta["W"] + theta["b"]), sgp, ctx), None

    hh, _ = jax.lax.scan(body, relu_dense(v["inp"], x), (v["layers"], v["sgs"]))
    return xent(hh @ v["out"]["W"] + v["out"]["b"], y)


vs = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(7), 4))
grads = jax.jit(jax.vmap(jax.grad(deep), in_axes=(0, None, None)))(vs, x0, y0)
# On this first step only the top module gets a non-zero target: the ones below bootstrap from
# modules that still output zero (they are zero-initialised), so their gradients are zero.
print("per-seed SG gradient norms, by layer:")
print(np.round(jax.vmap(lambda s: jnp.sqrt(jnp.sum(s["B"] ** 2, axis=(1, 2))))(grads["sgs"]), 4))
