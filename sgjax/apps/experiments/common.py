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
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from sgjax import train
from sgjax.nets import Network
from sgjax.rules import UpdateRule

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

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"`scale` must be one of {SCALES}, got {self.scale!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"`steps` must be an int ≥ 1, got {self.steps!r}")
        self.out = Path(self.out)


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
    net: Network,
    rule: UpdateRule,
    loss: Any,
    optimizer: optax.GradientTransformation,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    seed: int = 0,
    sg_optimizer: optax.GradientTransformation | None = None,
    snapshot_at: Sequence[int] = (),
    on_snapshot: Callable[[int, train.TrainState], dict] | None = None,
    progress: bool = False,
    desc: str = "",
) -> tuple[train.TrainState, list[dict]]:
    """Train with :func:`sgjax.train.loop`, calling ``on_snapshot(step, state)``.

    ``snapshot_at`` lists steps (counted after the update, 0 = before training) at which
    the callback runs; its dicts are returned with ``"step"`` added. A non-finite step
    raises :class:`sgjax.train.NonFiniteLossError` as :func:`sgjax.train.fit` does.
    """
    train.check_labels(y, net.out_dim)
    state = train.init(key, net, rule, optimizer, sg_optimizer)
    step_fn = jax.jit(train.make_step(net, rule, loss, optimizer, sg_optimizer))
    wanted = set(int(s) for s in snapshot_at)
    records: list[dict] = []

    def snap(i: int, _metrics: Any, state: train.TrainState) -> None:
        if on_snapshot is not None and i in wanted:
            records.append({"step": i, **on_snapshot(i, state)})

    snap(0, None, state)
    state = train.loop(
        step_fn,
        state,
        train.batches(x, y, batch_size, seed=seed),
        steps=steps,
        on_step=snap,
        progress=progress,
        desc=desc or rule.name,
    )
    return state, records


# ------------------------------------------------------------------------------ outputs


def to_numpy(tree: Any) -> Any:
    """JAX arrays in ``tree`` to numpy (Python numbers and strings stay as they are)."""
    return jax.tree.map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, tree)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray | jax.Array):
        return _jsonable(np.asarray(v).tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")


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


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float | np.floating):
        if not math.isfinite(float(v)):
            return str(v)
        return f"{float(v):.{digits}f}"
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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
