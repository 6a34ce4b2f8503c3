"""A linen CNN, a residual block, a conv SG (DNI) after it: next to backprop, on digits."""

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sgjax import train
from sgjax.infra import data
from sgjax.interface import init_sg, sg_interface

STEPS, DS = int(os.environ.get("SGJAX_EXAMPLE_STEPS", 1000)), data.digits()


class CNN(nn.Module):
    dni: bool = True

    @nn.compact
    def __call__(self, x, y=None):
        h = nn.relu(nn.Conv(8, (3, 3))(x.reshape(-1, 8, 8, 1)))
        h = h + nn.Conv(8, (3, 3))(nn.relu(nn.Conv(8, (3, 3))(h)))  # the residual block
        if self.dni:
            sg = self.param("sg", lambda key: init_sg(key, (8, 8, 8), 10, estimator="conv"))
            if y is not None:  # training: through the interface; evaluation: without
                h = sg_interface(h, sg, jax.nn.one_hot(y, 10), estimator="conv")
        return nn.Dense(10)(nn.relu(h).reshape(h.shape[0], -1))


def run(dni, steps=STEPS, ds=DS):
    model, opt = CNN(dni), optax.adam(1e-3)
    xent = optax.softmax_cross_entropy_with_integer_labels
    grad = jax.grad(lambda v, x, y: xent(model.apply(v, x, y), y).mean())
    step = jax.jit(lambda v, s, x, y: opt.update(grad(v, x, y), s, v))
    v = model.init(jax.random.key(0), ds.x_train[:1])
    s, times = opt.init(v), []
    for _, (x, y) in zip(range(steps), train.batches(ds.x_train, ds.y_train, 64)):
        updates, s = step(v, s, x, y)
        v = jax.block_until_ready(optax.apply_updates(v, updates))
        times.append(time.perf_counter())  # step 0 (the compile) is not timed below
    ms = (times[-1] - times[0]) * 1e3 / (steps - 1)
    return float(jnp.mean(model.apply(v, ds.x_test).argmax(-1) == ds.y_test)), ms, v


if __name__ == "__main__":
    (a_sg, t_sg, _), (a_bp, t_bp, _) = run(dni=True), run(dni=False)
    print(f"accuracy, ms/step: DNI {a_sg:.3f} {t_sg:.2f}, backprop {a_bp:.3f} {t_bp:.2f}")
    print(f"step-time ratio DNI/backprop {t_sg / t_bp:.2f}")
