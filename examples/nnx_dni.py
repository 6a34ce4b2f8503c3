"""An NNX MLP with an SGInterface per hidden layer (DNI) next to backprop, on the digits."""

import os
import time

import jax
import optax
from flax import nnx

from sgjax import train
from sgjax.infra import data
from sgjax.nnx_interface import SGInterface
from sgjax.optim import sg_split

STEPS, DS = int(os.environ.get("SGJAX_EXAMPLE_STEPS", 1000)), data.digits()


class MLP(nnx.Module):
    def __init__(self, rngs, dni=True):
        self.layers = nnx.List([nnx.Linear(a, 128, rngs=rngs) for a in (64, 128)])
        self.sgs = nnx.List([SGInterface((128,), 10, rngs=rngs) for _ in range(2)] if dni else [])
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x, y=None):
        for i, layer in enumerate(self.layers):
            x = nnx.relu(layer(x))
            if self.sgs and y is not None:  # training with DNI: through the interfaces
                x = self.sgs[i](x, jax.nn.one_hot(y, 10))
        return self.out(x)


def run(dni, steps=STEPS, ds=DS):
    model, xent = MLP(nnx.Rngs(0), dni), optax.softmax_cross_entropy_with_integer_labels
    tx = sg_split(optax.adam(1e-3), optax.adam(3e-3), model) if dni else optax.adam(1e-3)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)  # the SG modules: their own learning rate
    step = nnx.jit(lambda m, o, x, y: o.update(m, nnx.grad(lambda m: xent(m(x, y), y).mean())(m)))
    times = []
    for _, (x, y) in zip(range(steps), train.batches(ds.x_train, ds.y_train, 64)):
        step(model, opt, x, y)
        jax.block_until_ready(model.out.bias[...])  # the step has finished
        times.append(time.perf_counter())  # step 0 (the compile) is not timed below
    ms = (times[-1] - times[0]) * 1e3 / (steps - 1)
    return float((model(ds.x_test).argmax(-1) == ds.y_test).mean()), ms, model


if __name__ == "__main__":
    (a_sg, t_sg, _), (a_bp, t_bp, _) = run(dni=True), run(dni=False)
    print(f"accuracy, ms/step: DNI {a_sg:.3f} {t_sg:.2f}, backprop {a_bp:.3f} {t_bp:.2f}")
    print(f"step-time ratio DNI/backprop {t_sg / t_bp:.2f}")
