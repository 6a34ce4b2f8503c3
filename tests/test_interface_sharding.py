"""Data-parallel SG interfaces: every documented pattern against the full batch.

A 6-8-8-3 tanh MLP with two live (non-zero) cDNI interfaces; its gradients (model and SG
modules) on the full batch, on one device, are the reference. Each pattern splits the
batch over 2 and then 4 simulated CPU devices (one subprocess with 4, ``XLA_FLAGS`` set
before JAX starts; the 2-device check uses the first two) and must give the same
gradients; the default ``"mean"`` inside ``shard_map`` must be refused (before this check
existed it scaled the SG-module gradients by the number of shards for a ``pmean``-ed loss:
2× on 2 devices, 4× on 4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import xla_flags

ROOT = Path(__file__).resolve().parents[1]

CHECK = r'''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sgjax import estimators, losses, nets
from sgjax.interface import sg_interface

net = nets.mlp([6, 8, 8, 3], "tanh")
params = net.init(jax.random.key(0))
est = estimators.conditioned()
sg = tuple(jax.tree.map(lambda v: 0.3 * jax.random.normal(jax.random.key(b), v.shape),
                        est.init(None, (8,), 3)) for b in (1, 2))
import sys
n = int(sys.argv[1])  # the devices this check splits the batch over (the first n)
devices = jax.devices()[:n]
B = 4 * n
x = jax.random.normal(jax.random.key(3), (B, 6))
y = jax.random.randint(jax.random.key(4), (B,), 0, 3)


def losses_of(params, sg, x, y, red):
    """The per-example losses ℓ_b of the model with its two interfaces."""
    c, h = jax.nn.one_hot(y, 3), x
    for i, (stage, theta) in enumerate(zip(net.stages, params)):
        h = stage.apply(theta, h)
        if i < 2:
            h = sg_interface(h, sg[i], c, loss_reduction=red)
    return jax.vmap(lambda p, t: losses.softmax_cross_entropy.fn(p[None], t[None]))(h, y)


def mean_loss(p, s, x, y, red="mean"):
    return jnp.mean(losses_of(p, s, x, y, red))


def sum_loss(p, s, x, y, red="sum"):
    return jnp.sum(losses_of(p, s, x, y, red))


grad = lambda f: jax.grad(f, argnums=(0, 1))
full = {"mean": grad(mean_loss)(params, sg, x, y), "sum": grad(sum_loss)(params, sg, x, y)}
mesh = Mesh(np.array(devices), ("d",))


def smap(f):
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P(), P("d"), P("d")),
                                 out_specs=P()))


def pmap(f):
    run = jax.pmap(f, axis_name="d", in_axes=(None, None, 0, 0), devices=devices)
    return lambda p, s, x, y: jax.tree.map(
        lambda a: a[0], run(p, s, x.reshape(n, -1, *x.shape[1:]), y.reshape(n, -1)))


PATTERNS = {
    "shard_map, per-shard mean loss ('local-mean'), grads / shards": ("mean", smap(
        lambda p, s, x, y: jax.tree.map(
            lambda g: g / n, grad(lambda p, s: mean_loss(p, s, x, y, "local-mean"))(p, s)))),
    "shard_map, pmean-ed loss ('global-mean')": ("mean", smap(
        lambda p, s, x, y: grad(
            lambda p, s: jax.lax.pmean(mean_loss(p, s, x, y, "global-mean"), "d"))(p, s))),
    "shard_map, pmean-ed loss, loss_reduction=global batch": ("mean", smap(
        lambda p, s, x, y: grad(
            lambda p, s: jax.lax.pmean(mean_loss(p, s, x, y, B), "d"))(p, s))),
    "shard_map, psum-ed summed loss ('sum')": ("sum", smap(
        lambda p, s, x, y: grad(lambda p, s: jax.lax.psum(sum_loss(p, s, x, y), "d"))(p, s))),
    "jit on a batch sharded over the devices (GSPMD), 'mean'": ("mean", lambda p, s, x, y: jax.jit(
        grad(mean_loss))(p, s, *jax.device_put((x, y), NamedSharding(mesh, P("d"))))),
    "pmap, per-device mean loss ('mean'), pmean grads": ("mean", pmap(
        lambda p, s, x, y: jax.lax.pmean(grad(mean_loss)(p, s, x, y), "d"))),
    "pmap, pmean-ed loss ('mean'), pmean grads": ("mean", pmap(
        lambda p, s, x, y: jax.lax.pmean(
            grad(lambda p, s: jax.lax.pmean(mean_loss(p, s, x, y), "d"))(p, s), "d"))),
}


def rel(a, b):
    return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


worst = 0.0
for name, (kind, f) in PATTERNS.items():
    g_model, g_sg = f(params, sg, x, y)
    e_model, e_sg = rel(g_model, full[kind][0]), rel(g_sg, full[kind][1])
    worst = max(worst, e_model, e_sg)
    print(f"| {name} | {n} | {e_model:.1e} | {e_sg:.1e} |")
assert worst < 1e-5, worst
try:
    smap(lambda p, s, x, y: grad(
        lambda p, s: jax.lax.pmean(mean_loss(p, s, x, y), "d"))(p, s))(params, sg, x, y)
except ValueError as err:
    assert "`loss_reduction='mean'` is ambiguous" in str(err), err
    print(f"| shard_map, default 'mean' | {n} | refused | refused |")
else:
    raise AssertionError("shard_map with the default 'mean' was not refused")
'''


#: both device counts in one process of 4 fake devices (one JAX start, shared compiles)
RUNNER = "import sys\nfor n in (2, 4):\n    sys.argv = ['check', str(n)]\n    exec(CODE)\n"


@pytest.fixture(scope="module")
def checked() -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": xla_flags(4)}  # fmt: skip
    code = f"CODE = {CHECK!r}\n{RUNNER}"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("devices", [2, 4])
def test_sg_gradients_equal_the_full_batch_under_every_pattern(checked, devices):
    assert checked.count(f" | {devices} | ") == 8, checked
