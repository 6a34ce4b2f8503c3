"""The training loop of the pipelines and their single-device baselines:
:func:`train_pipelined`.

Why not :func:`sgjax.train.loop` (the library's one loop, a Python loop of one jitted
step per batch): a pipeline call runs ``chunk`` micro-batches in one compiled scan that
spans every device of a mesh (and every process of a launched job), so each decision
between calls — stop on a time budget or a target accuracy, stop on a signal, the
finiteness check, evaluation — must be agreed by all processes (:func:`_agree`) before
the next collective, and the ticks still in flight are drained (:func:`flush`) before
anything is read. ``train.loop`` has no notion of either; the single-device baselines
here run through the same per-call loop so that all contenders are timed alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

from sgjax import losses as loss_lib
from sgjax import nets, rules, train
from sgjax.infra.run import Run
from sgjax.nets import Network
from sgjax.pipeline.dataparallel import dp_on_mesh
from sgjax.pipeline.gpipe import gpipe_on_mesh, init_bp
from sgjax.pipeline.mesh import _agree, _check_count, _to_host, make_mesh
from sgjax.pipeline.per_process import sg_per_process
from sgjax.pipeline.sg import flush, sg_on_mesh
from sgjax.pipeline.stages import init_sg, sg_pipeline

METHODS = ("sg-pipeline", "gpipe", "data-parallel", "backprop", "sg")
#: the methods that run on a mesh (the others on one device)
MESH_METHODS = ("sg-pipeline", "gpipe", "data-parallel")

#: how :func:`train_pipelined` runs the SG pipeline on a mesh
SG_RUNNERS = ("auto", "mesh", "per-process")


class PipelineNonFiniteError(FloatingPointError):
    """Raised by :func:`train_pipelined` when an update became non-finite.

    The update was not applied (the guard of :func:`sgjax.train.make_step`, per stage
    for the SG pipeline) and training stopped after the jitted call that contained it.
    ``micro_batch`` is the first offending micro-batch, ``stage`` its stage (None when
    the whole step is one unit), ``params`` the parameters training stopped with (all
    finite: no non-finite update was applied).
    """

    def __init__(
        self, method: str, micro_batch: int, stage: int | None, loss: float, params: Any
    ) -> None:
        where = f"micro-batch {micro_batch}" + ("" if stage is None else f", stage {stage}")
        super().__init__(
            f"{method}: {where}: the loss or a gradient became non-finite (loss = {loss}); "
            "the update was not applied and training stopped. Lower the learning rates, or "
            "check the inputs for NaN/inf."
        )
        self.micro_batch, self.stage, self.loss, self.params = micro_batch, stage, loss, params


def _single_device_chunk(
    net: Network,
    rule: rules.UpdateRule,
    loss: loss_lib.Loss,
    optimizer: optax.GradientTransformation,
) -> Callable[..., tuple[train.TrainState, dict[str, jax.Array]]]:
    """``chunk(state, xs, ys, valid)``: :func:`sgjax.train.make_step` over a stack of
    batches in one jitted scan (one dispatch per chunk, as for the mesh runners); a
    batch with ``valid`` False is skipped (a partial last chunk reuses the compiled call).
    """
    step = train.make_step(net, rule, loss, optimizer)

    def masked(state: train.TrainState, batch: tuple[jax.Array, jax.Array, jax.Array]):
        x, y, v = batch
        skipped = jax.tree.map(
            lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(step, state, (x, y))[1]
        )
        return lax.cond(v, lambda s: step(s, (x, y)), lambda s: (s, skipped), state)

    @jax.jit
    def chunk(state: train.TrainState, xs: jax.Array, ys: jax.Array, valid: jax.Array):
        return lax.scan(masked, state, (xs, ys, valid))

    return chunk


@dataclass(frozen=True)
class Schedule:
    """How :func:`train_pipelined` runs: calls, GPipe's M, the mesh, the SG runner.

    Attributes:
        chunk: micro-batches per jitted call (the pipelines never drain between calls).
        micro_batches: M of GPipe (one optimiser step per M micro-batches).
        mesh: the mesh of the mesh methods (default: :func:`make_mesh` with one device per
            pipeline stage; data-parallel: all devices).
        sg_runner: how the SG pipeline runs on the mesh: ``"mesh"`` (:func:`sg_on_mesh`,
            one SPMD program), ``"per-process"`` (:func:`sg_per_process`, each process its
            own stage's program; needs one mesh device per process) or ``"auto"``
            (per-process when every process holds exactly one mesh device and there is more
            than one process, else mesh). Same results; the result's ``sg_runner`` says
            which ran.
        sg_lead: the SG pipeline's stages use their SG modules one regression step
            ahead (:func:`~sgjax.pipeline.sg_pipeline`'s ``lead``, the default: without
            it the one-tick lag collapsed learning on MNIST); ``False`` uses them as last
            regressed.
    """

    chunk: int = 50
    micro_batches: int = 4
    mesh: Mesh | None = None
    sg_runner: str = "auto"
    sg_lead: bool = True

    def __post_init__(self) -> None:
        for arg in ("chunk", "micro_batches"):
            _check_count("Schedule", arg, getattr(self, arg))
        if self.sg_runner not in SG_RUNNERS:
            raise ValueError(
                f"Schedule: `sg_runner` must be one of {SG_RUNNERS}, got {self.sg_runner!r}"
            )


@dataclass(frozen=True)
class Evaluation:
    """Test data for :func:`train_pipelined`: evaluated at the end, and with ``every`` also
    after every call that ends at least that many micro-batches after the last evaluation
    (a learning curve, not counted in ``seconds``); with ``target_accuracy`` training stops
    after the first evaluation that reaches it."""

    x_test: Any
    y_test: Any
    every: int | None = None
    target_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.every is not None:
            _check_count("Evaluation", "every", self.every)
        if self.target_accuracy is not None and self.every is None:
            raise ValueError(
                "Evaluation: `target_accuracy` needs `every` (when to evaluate on the way)"
            )
        object.__setattr__(self, "x_test", np.asarray(self.x_test, np.float32))
        object.__setattr__(self, "y_test", np.asarray(self.y_test))


def _rule_for(method: str, run: Run) -> dict[str, Any]:
    """The SG options ``method`` runs ``run.rule`` with; refuses a rule it cannot run."""
    name = run.rule.name
    if method in ("backprop", "gpipe", "data-parallel"):
        if name != "backprop":
            raise ValueError(
                f"train_pipelined: method {method!r} trains with backprop; `run.rule` is "
                f"{name!r} (use rules.backprop(), or method 'sg' / 'sg-pipeline' for SG)"
            )
        return {}
    if name not in ("sg", "sg-prop"):
        raise ValueError(
            f"train_pipelined: method {method!r} trains with synthetic gradients; `run.rule` "
            f"is {name!r} (use rules.synthetic_gradients(...), or method 'backprop' / 'gpipe')"
        )
    options = dict(run.rule.options)
    if method == "sg-pipeline" and (options["targets"] != "bootstrap" or options["prop"]):
        raise ValueError(
            "train_pipelined: the SG pipeline runs SG with bootstrapped targets and no prop "
            f"(got targets={options['targets']!r}, prop={options['prop']:g}): a true target "
            "needs the full backward pass that the pipeline exists to avoid, and prop needs "
            "the target before the stage updates, which arrives a tick later; method 'sg' "
            "runs either on one device"
        )
    if options["sg_optimizer"] is None:
        options["sg_optimizer"] = run.optimizer  # the rules' default (sweep.bind)
    return options


def _shaped(net: Network, x: Any) -> np.ndarray:
    """``x`` as float32 inputs of ``net``: images flattened for a network of flat inputs
    (an MLP on MNIST), any other shape as it is (checked by ``train.check_data``)."""
    x = np.asarray(x, np.float32)
    if len(net.in_shape) == 1 and x.ndim > 2:
        x = x.reshape(len(x), -1)
    return x


def train_pipelined(
    method: str,
    run: Run,
    x_train: Any,
    y_train: Any,
    *,
    seconds: float | None = None,
    schedule: Schedule | None = None,
    evaluation: Evaluation | None = None,
    start: tuple[Any, int] | Callable[[Any], tuple[Any, int] | None] | None = None,
    on_call: Callable[[int, Callable[[], Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``run`` with a pipeline (or a baseline) and report the result.

    Args:
        method: ``"sg-pipeline"`` (:func:`sg_on_mesh`, one update per stage and
            micro-batch), ``"gpipe"`` (:func:`gpipe_on_mesh`, one update per M
            micro-batches), ``"data-parallel"`` (:func:`dp_on_mesh`: backprop, each
            batch split over the devices, one update per micro-batch), or the
            single-device baselines ``"backprop"`` and ``"sg"`` (sequential DNI) with one
            update per micro-batch.
        run: what to train (:class:`~sgjax.infra.run.Run`): the network (the pipelines
            need a mesh with one device per stage), ``rules.backprop()`` for backprop,
            GPipe and data-parallel, an SG rule for ``"sg"`` and ``"sg-pipeline"`` (its
            estimator, ``at`` and SG optimiser, default ``run.optimizer``; the SG pipeline
            refuses true targets and prop, ``"sg"`` runs any), the loss, any optax
            optimiser (one state per stage), ``steps`` (micro-batches of ``batch_size``;
            GPipe: rounded up to whole optimiser steps of M micro-batches; ``None`` with
            ``seconds``), and the seed of the initialisation and of the batch order.
            ``at`` of an SG rule: the SG pipeline runs the stages between two SG modules as
            one pipeline stage, on one device, trained by exact backprop inside it
            (:func:`sgjax.nets.group`): ``at=(2,)`` on a 5-stage network is a 2-device
            pipeline; ``"sg"`` runs the same rule on one device. ``params`` in the result
            are per stage of ``run.net`` either way. ``p_update`` and ``cosine`` are not
            supported (refused).
        x_train, y_train: training data: inputs of ``run.net``'s input shape (images are
            flattened for a network of flat inputs), integer labels or real targets (a
            sequence model's flattened one-hot targets, :func:`sgjax.transformer.targets`).
        seconds: alternatively (or also) a wall-clock budget for training, compile
            excluded; training stops after the first call that ends past it.
        schedule: :class:`Schedule` (chunk, GPipe's M, mesh, SG runner).
        evaluation: :class:`Evaluation` (test data, learning curve, target accuracy).
        start: resume: ``(state, seen)``, a state that ``on_call``'s ``get_state``
            returned after ``seen`` micro-batches (a whole number of calls); training
            continues with micro-batch ``seen`` of the same batch sequence, and ends
            bit-identical to a run that was never stopped (same ``chunk``). Or a function
            of the fresh initial state (host arrays, the structure to restore into)
            returning ``(state, seen)`` or None (a fresh start).
        on_call: ``on_call(seen, get_state)`` after every call, in every process (before
            the SG pipeline's final drain): ``get_state()`` returns the whole training
            state (the mesh runners' ``unpack``, as host numpy arrays; a collective, so
            every process must call it when one does), e.g. to checkpoint it. An
            exception it raises ends training.
    Returns:
        A dict with ``method``, ``stages``, ``batch_size``, ``micro_batches_seen``,
        ``updates`` (per stage), ``examples``, ``seconds`` (training, compile excluded),
        ``compile_seconds`` (the first call, which also trains), ``examples_per_s``
        (None when the compiling call was the only one, so that nothing was timed),
        ``call_seconds`` (the wall time of each timed call, in order: warm-up and noise
        show there), ``final_loss`` (mean over the micro-batches the last stage finished
        in the last call, the SG pipeline's drain included; None if none finished),
        ``final_loss_micro_batches`` (how many that was), ``params``, ``micro_batches``
        (GPipe) and, with test data, ``test_accuracy``, ``test_loss`` and ``curve`` (a
        list of ``{"micro_batches", "seconds", "test_accuracy", "test_loss"}``).

    Raises:
        PipelineNonFiniteError: an update's loss, gradients or new parameters were not
            finite (it was not applied; the error names the micro-batch and stage).

    Example:
        >>> import optax
        >>> from sgjax import nets, rules
        >>> from sgjax.infra import data
        >>> ds = data.load("digits")
        >>> run = Run(nets.mlp([64, 32, 10]), rules.backprop(), "xent", optax.adam(1e-3),
        ...           steps=15, batch_size=32)
        >>> r = train_pipelined("backprop", run, ds.x_train, ds.y_train,
        ...                     schedule=Schedule(chunk=10))
        >>> r["micro_batches_seen"], r["updates"], r["final_loss_micro_batches"]
        (15, 15, 5)
    """
    if method not in METHODS:
        raise ValueError(f"train_pipelined: `method` must be one of {METHODS}, got {method!r}")
    if not isinstance(run, Run):
        raise TypeError(
            f"train_pipelined: `run` must be an sgjax.infra.run.Run, got {type(run).__name__}"
        )
    for name, value, kind in (
        ("schedule", schedule, Schedule),
        ("evaluation", evaluation, Evaluation),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"train_pipelined: `{name}` must be a {kind.__name__} or None, got "
                f"{type(value).__name__}"
            )
    if run.steps is None and seconds is None:
        raise ValueError("train_pipelined: give `run.steps`, `seconds` or both")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"train_pipelined: `seconds` must be > 0, got {seconds!r}")
    if run.p_update != 1.0 or run.cosine or run.sg_update != "with-stage":
        raise ValueError(
            "train_pipelined: `run.p_update`, `run.sg_update` and `run.cosine` are not "
            "supported (every stage updates at every micro-batch; no cosine is measured)"
        )
    options = _rule_for(method, run)
    schedule = schedule or Schedule()
    net, steps, batch_size, seed = run.net, run.steps, run.batch_size, run.seed
    chunk, micro_batches, mesh, sg_runner = (
        schedule.chunk, schedule.micro_batches, schedule.mesh, schedule.sg_runner,
    )  # fmt: skip
    x_train, y_train = _shaped(net, x_train), np.asarray(y_train)
    train.check_data(net, x_train, y_train, batch_size)
    x_test = y_test = eval_every = target_accuracy = None
    if evaluation is not None:
        x_test, y_test = _shaped(net, evaluation.x_test), evaluation.y_test
        train.check_data(net, x_test, y_test, 1)
        eval_every, target_accuracy = evaluation.every, evaluation.target_accuracy
    loss = loss_lib.get(run.loss)
    opt = run.optimizer
    sg_opt = options.get("sg_optimizer")
    estimator, at = options.get("estimator", "conditioned"), options.get("at")
    boundaries: tuple[int, ...] | None = None
    if at is not None and not (isinstance(at, str) and at == "all"):  # "all": the default
        boundaries = rules.resolve_at(at, net.depth)
        if method == "sg-pipeline" and net.depth in boundaries:
            raise ValueError(
                f"train_pipelined: `at` {at!r} puts an SG module at the network's output "
                f"(boundary {net.depth}); a pipeline's SG modules sit between stages, at "
                f"boundaries 1..{net.depth - 1}"
            )
    key = run.init_key
    per_call = micro_batches if method == "gpipe" else chunk
    if method == "gpipe" and steps is not None:
        steps = -(-steps // per_call) * per_call  # whole optimiser steps
    resumed: tuple[Any, int] | None = None

    def resolve(initial: Any) -> Any:
        """The state to start from: ``initial``, or the one ``start`` gives."""
        nonlocal resumed
        resumed = start(jax.device_get(initial)) if callable(start) else start
        if resumed is None:
            return initial
        seen0 = int(resumed[1])
        if seen0 % per_call or seen0 < 0 or (steps is not None and seen0 >= steps):
            raise ValueError(
                f"train_pipelined: `start` at micro-batch {seen0} must be a whole number of "
                f"calls of {per_call} and before `steps` ({steps})"
            )
        return resumed[0]

    def next_chunk(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``per_call`` micro-batches, the first ``k`` of them valid."""
        xb, yb = zip(*(next(data) for _ in range(per_call)))
        return np.stack(xb), np.stack(yb), np.arange(per_call) < k

    state: Any
    call: Callable[..., tuple[Any, dict[str, jax.Array]]]
    params_of: Callable[[Any], Any]  # a state -> its parameters
    whole: Callable[[Any], Any]  # a state -> the whole state, unpacked (the runners' unpack)
    # the pipeline's stages: one per device (stages between SG modules grouped)
    every = tuple(range(1, net.depth))
    cut: tuple[int, ...] = every if boundaries is None else boundaries
    grouped = method == "sg-pipeline" and cut != every
    pnet = nets.group(net, cut) if grouped else net
    if method == "sg-pipeline":
        pipe = sg_pipeline(pnet, loss, opt, sg_opt, estimator=estimator, lead=schedule.sg_lead)
        sg_mesh = mesh or make_mesh(pnet.depth)
        if sg_runner == "auto":
            sg_runner = "per-process" if _one_device_per_process(sg_mesh) else "mesh"
        bind = sg_per_process if sg_runner == "per-process" else sg_on_mesh
        runner = bind(pipe, sg_mesh, batch_size=batch_size)
        state, call = runner.pack(resolve(init_sg(pipe, key, batch_size=batch_size))), runner.run
        if pnet is net:
            params_of = lambda st: runner.unpack(st).params  # noqa: E731
        else:
            params_of = lambda st: nets.ungroup_params(  # noqa: E731
                runner.unpack(st).params, cut, net.depth
            )
        whole = runner.unpack
    elif method == "gpipe":
        gp_mesh = mesh or make_mesh(net.depth)
        gp = gpipe_on_mesh(
            net, loss, opt, gp_mesh, batch_size=batch_size, micro_batches=micro_batches
        )
        state = gp.pack(resolve(init_bp(net, opt, key)))
        call = lambda st, xs, ys, valid: gp.run(st, xs, ys)  # noqa: E731 — always full
        params_of = lambda st: gp.unpack(st).params  # noqa: E731
        whole = gp.unpack
    elif method == "data-parallel":
        dp_mesh = mesh or make_mesh(len(jax.devices()))
        dp = dp_on_mesh(net, loss, opt, dp_mesh, batch_size=batch_size)
        state = dp.pack(resolve(init_bp(net, opt, key)))
        call, whole = dp.run, dp.unpack
        params_of = lambda st: dp.unpack(st).params  # noqa: E731
    else:
        rule = run.rule  # backprop, or any SG rule (true targets and prop included)
        state = jax.jit(train.init, static_argnums=(1, 2, 3))(key, net, rule, opt)
        state = jax.tree.map(jnp.asarray, resolve(state))
        call = _single_device_chunk(net, rule, loss, opt)
        params_of = lambda st: st.params  # noqa: E731
        whole = lambda st: st  # noqa: E731

    start_seen = 0 if resumed is None else int(resumed[1])
    data = train.batches(x_train, y_train, batch_size, seed=seed, start=start_seen)

    def evaluate(params: Any) -> dict[str, float]:
        return train.evaluate(net, params, loss, x_test, y_test)

    curve: list[dict[str, float]] = []
    seen, calls, timed = start_seen, 0, 0
    done_before = start_seen // per_call  # calls of the run before `start`
    compile_seconds = train_seconds = 0.0
    call_seconds: list[float] = []  # every timed call's wall time, in order
    last_eval = 0
    # `seen` is the same in every process; a decision from the clock or an evaluation is
    # process 0's (_agree), so that no process stops while another calls a collective.
    while steps is None or seen < steps:
        if seconds is not None and _agree(train_seconds >= seconds):
            break
        k = per_call if steps is None else min(per_call, steps - seen)
        xs, ys, valid = next_chunk(k)
        t0 = time.perf_counter()
        state, metrics = call(state, xs, ys, valid)
        jax.block_until_ready(metrics)
        if calls == 0:  # the first call compiles (and trains like every other)
            compile_seconds = time.perf_counter() - t0
        else:
            call_seconds.append(time.perf_counter() - t0)
            train_seconds += call_seconds[-1]
            timed += k * batch_size
        _check_finite(method, metrics, valid, seen, done_before + calls, per_call, state, params_of)
        calls, seen = calls + 1, seen + k
        if on_call is not None:
            on_call(seen, _gatherer(whole, state))
        if x_test is not None and eval_every is not None and seen - last_eval >= eval_every:
            ev = evaluate(params_of(state))
            curve.append({"micro_batches": seen, "seconds": train_seconds, **_named(ev)})
            last_eval = seen
            if target_accuracy is not None and _agree(ev["accuracy"] >= target_accuracy):
                break
    if method == "sg-pipeline":
        finished = np.asarray(metrics["done"])
        losses = np.asarray(metrics["loss"])[finished]
        if pnet.depth > 1:  # drain the micro-batches in flight (the compiled call is reused)
            example = (xs[0], ys[0])
            state, drained = flush(call, state, pnet.depth, *example, ticks=per_call)
            _check_finite(
                method, drained, None, seen, done_before + calls, per_call, state, params_of
            )
            done = np.asarray(drained["done"])
            losses = np.concatenate([losses, np.asarray(drained["loss"])[done]])
    elif method == "gpipe":
        losses = np.asarray(metrics["loss"])[None]
    else:
        losses = np.asarray(metrics["loss"])[np.asarray(valid)]
    out: dict[str, Any] = {
        "method": method,
        "stages": pnet.depth,
        "sg_at": list(boundaries) if boundaries is not None else None,
        "batch_size": batch_size,
        "micro_batches_seen": seen,
        "updates": done_before + calls if method == "gpipe" else seen,
        "examples": seen * batch_size,
        "seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "examples_per_s": timed / train_seconds if train_seconds > 0 else None,
        "call_seconds": call_seconds,
        "final_loss": float(np.mean(losses)) if losses.size else None,
        "final_loss_micro_batches": int(losses.size),
        "params": params_of(state),
    }
    if method == "gpipe":
        out["micro_batches"] = micro_batches
    if method == "sg-pipeline":
        out["sg_runner"] = sg_runner
    if x_test is not None:
        ev = evaluate(out["params"])
        out["test_accuracy"], out["test_loss"] = ev["accuracy"], ev["loss"]
        out["curve"] = curve
    return out


def _gatherer(whole: Callable[[Any], Any], state: Any) -> Callable[[], Any]:
    """``on_call``'s ``get_state``: the whole state as host arrays (a collective)."""
    return lambda: jax.tree.map(_to_host, whole(state))


def _one_device_per_process(mesh: Mesh) -> bool:
    """More than one process, and each holds exactly one device of ``mesh``."""
    owners = [d.process_index for d in mesh.devices.flat]
    return jax.process_count() > 1 and sorted(owners) == list(range(jax.process_count()))


def _named(ev: dict[str, float]) -> dict[str, float]:
    return {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"]}


def _check_finite(
    method: str,
    metrics: dict[str, Any],
    valid: np.ndarray | None,
    seen: int,
    calls: int,
    per_call: int,
    state: Any,
    params_of: Callable[[Any], Any],
) -> None:
    """Raise :class:`PipelineNonFiniteError` if a call reported a non-finite update."""
    finite = np.asarray(metrics["finite"])
    if method in ("backprop", "sg") and valid is not None:
        finite = finite | ~valid  # a skipped slot of a partial chunk reports False
    if finite.all():
        return
    loss = np.asarray(metrics["loss"])
    stage: int | None = None
    if method == "sg-pipeline":
        # At tick t of this call stage s works on micro-batch (calls·per_call + t) − s.
        t, s = np.argwhere(~np.asarray(metrics["stage_finite"]))[0]
        micro_batch, stage, value = calls * per_call + int(t) - int(s), int(s), loss[t]
    elif method == "gpipe":
        stage = int(np.argmin(np.asarray(metrics["stage_finite"])))
        micro_batch, value = seen, loss
    else:
        t = int(np.argmin(finite))
        micro_batch, value = seen + t, loss[t]
    raise PipelineNonFiniteError(method, micro_batch, stage, float(value), params_of(state))
