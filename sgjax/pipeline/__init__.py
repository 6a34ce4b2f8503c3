"""Update-unlocked training across devices: the DNI pipeline on a JAX mesh.

The promise of decoupled neural interfaces (Jaderberg et al. 2017; Czarnecki et al. 2017,
§1) is that with a synthetic gradient SG_s(h_s, y) at its output, stage s can update
θ_s as soon as its own forward pass is done, without waiting for a backward pass. This
module puts stage s of a :class:`~sgjax.nets.Network` (and its SG module) on device s
of a 1-D mesh with axis ``"stage"`` and runs

* :func:`sg_on_mesh` — the **SG pipeline**: every tick each device works on a different
  micro-batch; after the fill no device waits for another's backward pass;
* :func:`gpipe_on_mesh` — the baseline **backprop pipeline** (GPipe schedule: M
  micro-batches forward, then backward, then one update); its gradients are exactly those
  of ordinary backprop on the M·B examples;
* :func:`sg_reference` — the SG pipeline's schedule on one device (a plain loop over
  ticks and stages), so that the N-device run can be checked against it.

Schedule and staleness of the SG pipeline (N stages, 0-based s = 0..N−1). Micro-batch m
enters stage 0 at tick m, so at tick t device s works on micro-batch m = t − s. One tick
on device s:

1. take h_{s−1}^{(m)} and the label y^{(m)} that device s−1 sent at tick t−1 (device 0
   takes x^{(m)} from the data);
2. forward: h_s^{(m)}, vjp = ``jax.vjp(f_s, θ_s, h_{s−1}^{(m)})``;
3. signal: δ̂ = SG_s(h_s^{(m)}, y^{(m)}) for s < N−1; the last stage uses the true
   per-example loss gradient ∂ℓ/∂p;
4. update θ_s at once from ``vjp(δ̂)`` (optax); the input part of the same VJP,
   t_{s−1}^{(m)} = (∂f_s/∂h_{s−1})ᵀ δ̂, is the bootstrapped target of SG_{s−1};
5. send (h_s^{(m)}, y^{(m)}) to device s+1 and t_{s−1}^{(m)} to device s−1
   (``lax.ppermute``);
6. receive t_s^{(m−1)} from device s+1 (computed this same tick from micro-batch m−1)
   and regress SG_s onto it at (h_s^{(m−1)}, y^{(m−1)}), kept from the previous tick (the
   one-tick buffer): φ_s ← opt(φ_s, ∇_φ mean_b ‖SG_s(h_b, y_b) − t_b‖²).

Exact staleness, compared with sequential DNI (:func:`sgjax.rules.synthetic_gradients`
with bootstrapped targets, one micro-batch per step):

* the forward pass is *not* stale: micro-batch m meets every θ_s after exactly the
  updates from micro-batches 0..m−1, as in sequential training;
* θ_s's update from micro-batch m is applied before micro-batches m+1.. reach stage s,
  as in sequential training;
* the SG modules lag one update: the δ̂ of micro-batch m (and hence the target it
  makes) comes from φ_s regressed on micro-batches 0..m−2 (sequential DNI: 0..m−1),
  because the target for m−1 is only produced by device s+1 during the tick in which
  device s already processes m. With frozen SG modules the pipeline therefore equals
  sequential DNI exactly (tested).

The stream does not drain between calls: the in-flight messages are part of the state,
so a long run fills the pipeline once. :func:`flush` feeds N−1 empty ticks to finish the
micro-batches still in flight.

Unequal stages. Stage params, optimiser states and SG modules have different shapes on
different devices, but ``shard_map`` needs one shape per argument. Each device therefore
keeps its stage's whole state (θ_s, optimiser state, φ_s, SG optimiser state) as one flat
vector per dtype, padded to the longest stage, and activations travel padded to the widest
boundary; ``lax.switch(lax.axis_index("stage"), ...)`` runs the selected stage's own code
(its branch unpacks, computes and re-packs), so a device executes only its own stage and
stages may differ in cost and shape. The padding is the price: memory and messages sized
by the largest stage.

Devices. The code is ``jax.shard_map`` over a :class:`jax.sharding.Mesh` with
``lax.ppermute``; it runs unchanged on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts), on GPUs, or on
several processes of one ``jax.distributed`` job — :func:`launch` (``sgjax launch``)
starts N local processes pinned to their own cores, :func:`initialize_from_env` joins
one (also by hand on several hosts); every process passes the same data. The mesh must
have exactly one device per stage.

Non-finite updates are not applied (per stage and tick in the SG pipeline, per step in
GPipe and data-parallel); :func:`train_pipelined` then raises
:class:`PipelineNonFiniteError` naming the micro-batch and stage.

The package, along its seams (each module imports only those above it):

* :mod:`~sgjax.pipeline.mesh` — the mesh and the collectives;
* :mod:`~sgjax.pipeline.packing` — per-stage state as padded flat vectors;
* :mod:`~sgjax.pipeline.stages` — configuration, state and the per-stage work of a tick;
* :mod:`~sgjax.pipeline.sg` — the SG schedule: reference loop, mesh runner, flush;
* :mod:`~sgjax.pipeline.per_process` — the SG schedule with one process per stage, each
  running only its own stage's compiled tick (no ``lax.switch``, no packed state);
* :mod:`~sgjax.pipeline.gpipe` — the GPipe baseline;
* :mod:`~sgjax.pipeline.dataparallel` — the data-parallel baseline;
* :mod:`~sgjax.pipeline.loop` — :func:`train_pipelined`;
* :mod:`~sgjax.pipeline.distributed` — N local processes as one ``jax.distributed`` job
  (:func:`launch`, :func:`initialize_from_env`); imports nothing of the above;

The benchmarks of the pipeline are apps (:mod:`sgjax.apps.bench.pipeline_throughput`, run
by ``sgjax bench --only pipeline``; :mod:`sgjax.apps.bench.pipeline_compare`, run by
``scripts/bench_pipeline.py``). ``sgjax.pipeline.benchmark_pipeline``,
``sgjax.pipeline.benchmark`` and ``sgjax.pipeline.compare`` still resolve there for one
release, with a DeprecationWarning that names the new place.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from sgjax import nets, pipeline
    >>> net = nets.mlp([8, 16, 4])
    >>> pipe = pipeline.sg_pipeline(net, "xent", optax.sgd(0.1))
    >>> state = pipeline.init_sg(pipe, jax.random.key(0), batch_size=2)
    >>> xs, ys = jnp.ones((3, 2, 8)), jnp.zeros((3, 2), jnp.int32)
    >>> state, metrics = pipeline.sg_reference(pipe, state, xs, ys)
    >>> metrics["done"].tolist()  # the last stage finishes micro-batches 0 and 1
    [False, True, True]
"""

import importlib
import warnings
from typing import Any

from sgjax.pipeline.balance import balanced_boundaries, stage_costs
from sgjax.pipeline.dataparallel import DPRunner, dp_on_mesh
from sgjax.pipeline.distributed import LaunchError, LaunchResult, initialize_from_env, launch
from sgjax.pipeline.gpipe import BPState, GPipeRunner, PackedBP, gpipe_on_mesh, init_bp
from sgjax.pipeline.loop import (
    MESH_METHODS,
    METHODS,
    Evaluation,
    PipelineNonFiniteError,
    Schedule,
    train_pipelined,
)
from sgjax.pipeline.mesh import AXIS, make_mesh
from sgjax.pipeline.per_process import LocalSG, sg_per_process
from sgjax.pipeline.sg import MeshRunner, PackedSG, flush, sg_on_mesh, sg_reference
from sgjax.pipeline.stages import Message, SGPipeline, SGState, init_sg, sg_pipeline

__all__ = [
    "AXIS",
    "MESH_METHODS",
    "METHODS",
    "BPState",
    "DPRunner",
    "Evaluation",
    "GPipeRunner",
    "LaunchError",
    "LaunchResult",
    "LocalSG",
    "MeshRunner",
    "Message",
    "PackedBP",
    "PackedSG",
    "PipelineNonFiniteError",
    "SGPipeline",
    "SGState",
    "Schedule",
    "balanced_boundaries",
    "dp_on_mesh",
    "flush",
    "gpipe_on_mesh",
    "init_bp",
    "init_sg",
    "initialize_from_env",
    "launch",
    "make_mesh",
    "sg_on_mesh",
    "sg_per_process",
    "sg_pipeline",
    "sg_reference",
    "stage_costs",
    "train_pipelined",
]


#: moved to the apps layer in 0.2 (old name -> (module, attribute or None for the module));
#: resolved by name at run time (the pipeline does not import the apps above it).
_MOVED = {
    "benchmark_pipeline": ("sgjax.apps.bench.pipeline_throughput", "benchmark_pipeline"),
    "benchmark": ("sgjax.apps.bench.pipeline_throughput", None),
    "compare": ("sgjax.apps.bench.pipeline_compare", None),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, attr = _MOVED[name]
        new = module if attr is None else f"{module}.{attr}"
        warnings.warn(
            f"sgjax.pipeline.{name} moved to {new}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'sgjax.pipeline' has no attribute {name!r}")
