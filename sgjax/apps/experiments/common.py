"""Shared machinery of the paper's experiments: settings, a snapshotting loop, outputs.

Every experiment module exposes ``run(ctx) -> dict`` (the results it also writes to
``ctx.out``). A :class:`Context` carries the command-line choices: the scale
(``smoke`` — seconds, for tests and CI; ``medium`` — the largest that fits a 2-core CPU
in minutes; ``paper`` — the paper's settings), the output directory, the seed, the data
directory, a step override and whether to show progress bars.

Training goes through the one loop, :func:`sgjax.train.loop`; :func:`train_with_snapshots`
only adds what :func:`sgjax.train.fit` does not do: calling back at chosen steps
(loss-surface snapshots, learning curves, gradient cosines) with the live state.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from sgjax import train
from sgjax.infra.run import Run

SCALES = ("smoke", "medium", "paper")


@dataclass
class Context:
    """What an experiment needs from the command line."""

    out: Path
    scale: str = "smoke"
    seed: int = 0
    data_dir: str | None = None
    steps: int | None = None
    progress: bool = False
    cache_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"`scale` must be one of {SCALES}, got {self.scale!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"`steps` must be an int ≥ 1, got {self.steps!r}")
        self.out = Path(self.out)
        for k, v in self.overrides.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise ValueError(f"`overrides` must map setting names to strings, got {k!r}: {v!r}")


def _coerce(name: str, text: str, like: Any) -> Any:
    """``text`` (from ``--set name=text``) as a value of the type of the default ``like``."""
    try:
        if isinstance(like, tuple):
            kind = type(like[0]) if like else str
            return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if like is None:
            return None if text.lower() == "none" else int(text)
        return type(like)(text)
    except ValueError:
        raise ValueError(
            f"--set {name}={text}: expected a value like the default {like!r} "
            f"({type(like).__name__}{', comma-separated' if isinstance(like, tuple) else ''})"
        ) from None


def settings_for(
    ctx: Context, scales: dict[str, dict[str, Any]], minimum: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The experiment's settings at ``ctx.scale``, with ``--steps`` and ``--set`` applied.

    An override of a name the experiment does not have is an error naming the settings it
    does have; a setting below its ``minimum`` (every entry of a tuple, which must not be
    empty) is refused with the reason — settings that would make the experiment's claims
    meaningless (a network with no hidden layer, no layer above the SG) fail here, before
    any training, not as verdicts about the paper.

    Example:
        >>> ctx = Context(out=Path("o"), steps=7, overrides={"depths": "20,50", "lr": "3e-4"})
        >>> settings_for(ctx, {"smoke": {"depths": (2,), "lr": 1e-3, "steps": 40}})
        {'depths': (20, 50), 'lr': 0.0003, 'steps': 7}
        >>> ctx = Context(out=Path("o"), overrides={"depths": "0"})
        >>> settings_for(ctx, {"smoke": {"depths": (2,)}}, minimum={"depths": 2})
        Traceback (most recent call last):
        ...
        ValueError: --set depths=0: each entry must be ≥ 2, got (0,)
    """
    cfg: dict[str, Any] = dict(scales[ctx.scale])
    if ctx.steps is not None:
        cfg["steps"] = ctx.steps
    for k, v in ctx.overrides.items():
        if k not in cfg:
            raise ValueError(f"--set {k}={v}: no setting {k!r}; this experiment has {sorted(cfg)}")
        cfg[k] = _coerce(k, v, cfg[k])
    for k, low in (minimum or {}).items():
        v = cfg[k]
        given = f"--set {k}={ctx.overrides[k]}" if k in ctx.overrides else f"setting {k!r}"
        if isinstance(v, tuple):
            if not v or any(e < low for e in v):
                raise ValueError(f"{given}: each entry must be ≥ {low:g}, got {v}")
        elif v is not None and v < low:
            raise ValueError(f"{given}: must be ≥ {low:g}, got {v}")
    return cfg


def adam(learning_rate: float, l2: float = 0.0) -> optax.GradientTransformation:
    """Adam, optionally with an L2 penalty ``l2/2 ‖W‖²`` on the weight matrices.

    The penalty is added to the gradient *before* Adam (``add_decayed_weights`` first), so
    it is the paper's "small L2 penalty" in the loss (footnote 4), not decoupled decay.
    """
    if l2 <= 0:
        return optax.adam(learning_rate)

    def only_weights(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "W", params
        )

    return optax.chain(optax.add_decayed_weights(l2, mask=only_weights), optax.adam(learning_rate))


def log_steps(total: int, count: int, first: int = 1) -> list[int]:
    """About ``count`` steps spaced evenly on a log axis from ``first`` to ``total``."""
    if total < 1:
        return []
    grid = np.unique(np.round(np.geomspace(max(first, 1), total, max(count, 2))).astype(int))
    return sorted({int(s) for s in grid if 1 <= s <= total} | {total})


def train_with_snapshots(
    run: Run,
    x: np.ndarray,
    y: np.ndarray,
    *,
    snapshot_at: Sequence[int] = (),
    on_snapshot: Callable[[int, train.TrainState], dict] | None = None,
    progress: bool = False,
    desc: str = "",
    checkpoint: Path | None = None,
    checkpoint_every: int = 2000,
) -> tuple[train.TrainState, list[dict]]:
    """Train ``run`` (:class:`sgjax.infra.run.Run`: network, rule, loss, optimiser,
    steps, batch size, seed of the batch order, initialisation key) with
    :func:`sgjax.train.loop`, calling ``on_snapshot(step, state)``.

    ``snapshot_at`` lists steps (counted after the update, 0 = before training) at which
    the callback runs; its dicts are returned with ``"step"`` added. A non-finite step
    raises :class:`sgjax.train.NonFiniteLossError` as :func:`sgjax.train.fit` does.

    ``checkpoint`` (a directory) makes a long run resumable mid-way, with the library's
    one checkpoint system (:class:`sgjax.infra.checkpoint.Checkpointer`: atomic, hashed,
    locked, the newest two kept): every ``checkpoint_every`` steps the state is saved,
    with the snapshot records so far and the run's identity (steps, batch size, seed,
    rule, the state's shapes) as its metadata; a call that finds a checkpoint resumes from
    the newest one that verifies — the batches continue where they stopped
    (:func:`sgjax.train.batches` with ``start``), so the result is the uninterrupted
    run's, bit for bit. A checkpoint of a different run is refused (naming what
    differs), never silently mixed in. The caller removes the directory once the result
    is stored elsewhere (:func:`cache_drop`).
    """
    net, rule, loss, optimizer = run.net, run.rule, run.loss, run.optimizer
    steps, batch_size, seed = run.steps, run.batch_size, run.seed
    if steps is None:
        raise ValueError("train_with_snapshots: `run.steps` must be an int ≥ 0, got None")
    train.check_labels(y, net.out_dim)
    if checkpoint is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"`checkpoint_every` must be an int >= 1, got {checkpoint_every!r}")
    state = train.init(run.init_key, net, rule, optimizer)
    step_fn = jax.jit(train.make_step(net, rule, loss, optimizer))
    wanted = set(int(s) for s in snapshot_at)
    records: list[dict] = []
    leaves = jax.tree.leaves(state)
    ident = {
        "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
        "rule": rule.name, "n_train": len(x),
        "leaves": [(tuple(a.shape), str(a.dtype)) for a in leaves],
    }  # fmt: skip
    start = 0
    ckpt = None
    if checkpoint is not None:
        from sgjax.infra.checkpoint import Checkpointer

        ckpt = Checkpointer(checkpoint, keep=2)  # (refuses a directory another run holds)
    if ckpt is not None and ckpt.steps():
        state, meta = ckpt.restore_newest_good(state, report=print)
        old, now = meta["ident"], json.loads(json.dumps(ident))  # (as JSON: tuples are lists)
        differ = {k: (old.get(k), v) for k, v in now.items() if old.get(k) != v}
        if differ:
            ckpt.close()
            raise ValueError(
                f"checkpoint {checkpoint} belongs to another run: "
                + "; ".join(f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in differ.items())
                + " — remove the directory to start this run from step 0"
            )
        records, start = _decode(meta["records"]), int(state.step)

    def save(i: int, state: train.TrainState) -> None:
        assert ckpt is not None
        ckpt.save(state, {"ident": ident, "records": _encode(records)})

    def snap(i: int, _metrics: Any, state: train.TrainState) -> None:
        if on_snapshot is not None and i in wanted:
            records.append({"step": i, **on_snapshot(i, state)})
        if ckpt is not None and 0 < i < steps and i % checkpoint_every == 0:
            save(i, state)

    try:
        if start == 0:
            snap(0, None, state)
        state = train.loop(
            step_fn,
            state,
            train.batches(x, y, batch_size, seed=seed, start=start),
            steps=steps,
            on_step=snap,
            progress=progress,
            desc=desc or rule.name,
        )
    finally:
        if ckpt is not None:
            ckpt.close()
    return state, records


def _encode(tree: Any) -> Any:
    """Snapshot records as JSON (a checkpoint's metadata): arrays keep dtype and shape."""
    if isinstance(tree, Mapping):
        return {k: _encode(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_encode(v) for v in tree]
    if isinstance(tree, np.ndarray | jax.Array | np.generic):
        a = np.asarray(tree)
        return {"__array__": a.ravel().tolist(), "dtype": str(a.dtype), "shape": list(a.shape)}
    return tree


def _decode(tree: Any) -> Any:
    """The inverse of :func:`_encode` (bit for bit: JSON floats round-trip exactly).

    Example:
        >>> a = np.float32([0.1, 1 / 3])
        >>> b = _decode(_encode({"w": a, "n": [1, 2.5]}))
        >>> b["w"].dtype, bool((b["w"] == a).all()), b["n"]
        (dtype('float32'), True, [1, 2.5])
    """
    if isinstance(tree, Mapping):
        if "__array__" in tree:
            a = np.asarray(tree["__array__"], tree["dtype"]).reshape(tree["shape"])
            return a[()] if a.ndim == 0 else a  # a scalar comes back as a numpy scalar
        return {k: _decode(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_decode(v) for v in tree]
    return tree


# ------------------------------------------------------------------------------ outputs


def to_numpy(tree: Any) -> Any:
    """JAX arrays in ``tree`` to numpy (Python numbers and strings stay as they are)."""
    return jax.tree.map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, tree)


def jsonl_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file, in order (blank lines skipped; none if missing)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(out: Path) -> dict[str, dict]:
    """The finished runs of ``out/runs.jsonl`` by key (the last record of a key wins)."""
    return {rec["key"]: rec for rec in jsonl_records(Path(out) / "runs.jsonl")}


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON (a JSON-lines record; see :mod:`sgjax.infra.jsonio`).

    Example:
        >>> json_line({"loss": float("nan"), "n": 2})
        '{"loss": null, "n": 2, "nonfinite_values": {"loss": "nan"}}'
    """
    from sgjax.infra.jsonio import dumps

    return dumps(obj, indent=None)


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (:mod:`sgjax.infra.jsonio`: non-finite values as null, flagged)."""
    from sgjax.infra.jsonio import write_or_keep

    write_or_keep(path, obj, name="--out")


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return path.name


def write_report(ctx: Context, title: str, sections: Sequence[str], settings: dict) -> None:
    """``report.md``: settings, then the experiment's sections (tables, figures, claims)."""
    lines = [f"# {title}", "", f"Scale `{ctx.scale}`, seed {ctx.seed}.", ""]
    lines += ["## Settings", ""]
    lines += [f"- {k}: {fmt(v)}" for k, v in settings.items()]
    lines += [f"- note: {n}" for n in ctx.notes]
    lines.append("")
    lines += list(sections)
    (ctx.out / "report.md").write_text("\n".join(lines).rstrip() + "\n")


# -------------------------------------------------------------------------------- cache


def cache_load(ctx: Context, name: str) -> Any | None:
    if ctx.cache_dir is None:
        return None
    path = Path(ctx.cache_dir) / f"{name}.pkl"
    if not path.exists():
        return None
    with path.open("rb") as f:
        return pickle.load(f)


def cache_file(ctx: Context, name: str) -> Path | None:
    """The cache's file for ``name`` (None without a cache directory)."""
    return None if ctx.cache_dir is None else Path(ctx.cache_dir) / f"{name}.pkl"


def cache_dir(ctx: Context, name: str) -> Path | None:
    """The cache's directory for ``name`` (a run's checkpoints; None without a cache)."""
    return None if ctx.cache_dir is None else Path(ctx.cache_dir) / name


def cache_drop(ctx: Context, name: str) -> None:
    """Remove ``name`` from the cache if it is there (e.g. a finished run's checkpoint)."""
    path = cache_file(ctx, name)
    if path is not None:
        path.unlink(missing_ok=True)
    if ctx.cache_dir is not None and (Path(ctx.cache_dir) / name).is_dir():
        shutil.rmtree(Path(ctx.cache_dir) / name)  # a run's checkpoint directory


def cache_save(ctx: Context, name: str, obj: Any) -> None:
    if ctx.cache_dir is None:
        return
    path = Path(ctx.cache_dir) / f"{name}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(to_numpy(obj), f)


def load_mnist(ctx: Context, n_train: int | None, n_test: int | None = None):
    """MNIST through :func:`sgjax.infra.data.load` (``--data-dir``, ``SGJAX_DATA_DIR``, shared)."""
    from sgjax.infra import data

    return data.load("mnist", data_dir=ctx.data_dir, n_train=n_train, n_test=n_test)


# The verdict machinery lives in its own module; re-exported here, where the experiments
# reach everything as `C.<name>`.
from sgjax.apps.experiments.verdicts import (  # noqa: E402
    MIN_SEEDS_CONTRADICTED,
    MIN_SEEDS_HELD,
    VERDICTS,
    accuracy_resolution,
    aggregate,
    aggregate_table,
    claim,
    claims_table,
    fmt,
    judge,
    preregistered,
    seed_resolution,
    table,
)

__all__ = [
    "MIN_SEEDS_CONTRADICTED",
    "MIN_SEEDS_HELD",
    "VERDICTS",
    "accuracy_resolution",
    "aggregate",
    "aggregate_table",
    "claim",
    "claims_table",
    "fmt",
    "judge",
    "preregistered",
    "seed_resolution",
    "table",
]
