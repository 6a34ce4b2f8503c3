"""An NNX MLP as an update-unlocked SG pipeline: one stage per process, on the digits.

    sgjax launch -n 2 -- examples/nnx_pipeline.py [steps] [out.json]

Each process holds one block and updates it from its SG module, never waiting for the
gradient from above. Process 0 also runs the single-device schedule of the same pipeline
(``sg_reference``) and reports how far the 2-process result is from it.
"""

import json
import sys

import jax
import numpy as np
import optax
from flax import nnx

from sgjax import pipeline, rules, train
from sgjax.flax_adapter import network_from_nnx
from sgjax.infra import data
from sgjax.infra.run import Run

pipeline.initialize_from_env()  # first, before JAX computes anything: joins the job

STEPS, CHUNK, B = int(sys.argv[1]) if len(sys.argv) > 1 else 600, 6, 32
ds, rngs, opt = data.digits(), nnx.Rngs(0), optax.adam(1e-3)
blocks = [nnx.Linear(64, 128, rngs=rngs), nnx.relu, nnx.Linear(128, 10, rngs=rngs)]
net, _ = network_from_nnx(blocks, ds.x_train[:1])  # two stages: relu∘Linear, Linear
run = Run(net, rules.synthetic_gradients(), "xent", opt, steps=STEPS, batch_size=B)
schedule = pipeline.Schedule(chunk=CHUNK, mesh=pipeline.make_mesh(2))
r = pipeline.train_pipelined("sg-pipeline", run, ds.x_train, ds.y_train, schedule=schedule)

# The same pipeline's single-device schedule on the same micro-batches, then drained.
pipe = pipeline.sg_pipeline(net, "xent", opt, opt)
ref = pipeline.init_sg(pipe, run.init_key, batch_size=B)
tick = jax.jit(lambda s, x, y, v: pipeline.sg_reference(pipe, s, x, y, v))
data_ = train.batches(ds.x_train, ds.y_train, B, seed=run.seed)
for _ in range(STEPS // CHUNK):
    xs, ys = map(np.stack, zip(*(next(data_) for _ in range(CHUNK))))
    ref, _ = tick(ref, xs, ys, np.ones(CHUNK, bool))
ref, _ = pipeline.flush(tick, ref, net.depth, xs[0], ys[0], ticks=CHUNK)
pairs = zip(jax.tree.leaves(r["params"]), jax.tree.leaves(ref.params))
err = max(float(np.abs(a - b).max()) for a, b in pairs)
acc = train.evaluate(net, r["params"], "xent", ds.x_test, ds.y_test)["accuracy"]
out = {"processes": jax.process_count(), "test_accuracy": acc, "max_err_vs_one_device": err}
if jax.process_index() == 0:
    print(json.dumps(out))
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").write(json.dumps(out))
