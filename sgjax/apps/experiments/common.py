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

import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
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
    checkpoint: Path | None = None,
    checkpoint_every: int = 2000,
) -> tuple[train.TrainState, list[dict]]:
    """Train with :func:`sgjax.train.loop`, calling ``on_snapshot(step, state)``.

    ``snapshot_at`` lists steps (counted after the update, 0 = before training) at which
    the callback runs; its dicts are returned with ``"step"`` added. A non-finite step
    raises :class:`sgjax.train.NonFiniteLossError` as :func:`sgjax.train.fit` does.

    ``checkpoint`` (a file) makes a long run resumable mid-way: every
    ``checkpoint_every`` steps the state, the snapshot records so far and the run's
    identity (steps, batch size, seed, rule, the state's shapes) are written to it
    atomically (a temporary file renamed into place); a call that finds the file resumes
    from its step — the batches continue where they stopped (:func:`sgjax.train.batches`
    with ``start``), so the result is the uninterrupted run's, bit for bit. A file from a
    different run is refused (naming what differs), never silently mixed in. The caller
    removes the file once the result is stored elsewhere.
    """
    train.check_labels(y, net.out_dim)
    if checkpoint is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"`checkpoint_every` must be an int >= 1, got {checkpoint_every!r}")
    state = train.init(key, net, rule, optimizer, sg_optimizer)
    step_fn = jax.jit(train.make_step(net, rule, loss, optimizer, sg_optimizer))
    wanted = set(int(s) for s in snapshot_at)
    records: list[dict] = []
    leaves, treedef = jax.tree.flatten(state)
    ident = {
        "steps": int(steps), "batch_size": int(batch_size), "seed": int(seed),
        "rule": rule.name, "n_train": len(x),
        "leaves": [(tuple(a.shape), str(a.dtype)) for a in leaves],
    }  # fmt: skip
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        with Path(checkpoint).open("rb") as f:
            saved = pickle.load(f)
        old = saved["ident"]
        differ = {k: (old.get(k), v) for k, v in ident.items() if old.get(k) != v}
        if differ:
            raise ValueError(
                f"checkpoint {checkpoint} belongs to another run: "
                + "; ".join(f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in differ.items())
                + " — remove the file to start this run from step 0"
            )
        state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved["leaves"]])
        records, start = list(saved["records"]), int(saved["step"])

    def save(path: Path, i: int, state: train.TrainState) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        blob = {"ident": ident, "step": i, "records": to_numpy(records),
                "leaves": [np.asarray(a) for a in jax.tree.leaves(state)]}  # fmt: skip
        with tmp.open("wb") as f:
            pickle.dump(blob, f)
        os.replace(tmp, path)

    def snap(i: int, _metrics: Any, state: train.TrainState) -> None:
        if on_snapshot is not None and i in wanted:
            records.append({"step": i, **on_snapshot(i, state)})
        if checkpoint is not None and 0 < i < steps and i % checkpoint_every == 0:
            save(Path(checkpoint), i, state)

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
    return state, records


# ------------------------------------------------------------------------------ outputs


def to_numpy(tree: Any) -> Any:
    """JAX arrays in ``tree`` to numpy (Python numbers and strings stay as they are)."""
    return jax.tree.map(lambda v: np.asarray(v) if isinstance(v, jax.Array) else v, tree)


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


def cache_file(ctx: Context, name: str) -> Path | None:
    """The cache's file for ``name`` (None without a cache directory)."""
    return None if ctx.cache_dir is None else Path(ctx.cache_dir) / f"{name}.pkl"


def cache_drop(ctx: Context, name: str) -> None:
    """Remove ``name`` from the cache if it is there (e.g. a finished run's checkpoint)."""
    path = cache_file(ctx, name)
    if path is not None:
        path.unlink(missing_ok=True)


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


# ------------------------------------------------------------------------------ verdicts

#: The verdicts a claim can get (defined in docs/reproduce.md, "Verdicts").
VERDICTS = ("held", "consistent", "contradicted", "untested", "inconclusive", "exploratory")
#: "held" needs the claim to pass on at least this many confirmatory seeds.
MIN_SEEDS_HELD = 3
#: "contradicted" needs at least this many: one seed says nothing of the spread over seeds.
MIN_SEEDS_CONTRADICTED = 2
#: one-sided 95 % Student-t quantiles by degrees of freedom (1.645 beyond the table)
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
        9: 1.833, 10: 1.812, 15: 1.753, 20: 1.725, 30: 1.697}  # fmt: skip


def seed_resolution(margins: Sequence[float] | np.ndarray) -> float:
    """The margin the spread of ``margins`` over seeds can tell from zero: t₀.₉₅·sd/√n.

    Zero for one seed (its spread is unknown, see :func:`aggregate`).

    Example:
        >>> round(seed_resolution([0.064, 0.104, 0.068]), 4)
        0.0371
    """
    m = np.asarray(margins, dtype=float)
    n = len(m)
    if n < 2:
        return 0.0
    df = n - 1
    t = _T95.get(df) or next((v for k, v in sorted(_T95.items()) if k >= df), 1.645)
    return float(t * np.std(m, ddof=1) / math.sqrt(n))


def judge(margin: float, resolution: float, *, regime: bool = True, tested: bool = True) -> str:
    """One run's verdict on a claim from its signed ``margin`` (> 0: passes by that much).

    ``untested`` when the run cannot test the claim (``tested`` false, e.g. neither
    method leaves chance, or a probe saturates for every method) or when it fails outside
    the regime the paper's statement is about (too few steps, a network that did not
    train): a failure there says nothing about the claim. ``inconclusive`` when ``|margin|``
    is within the measurement ``resolution``; otherwise ``contradicted`` when it fails in
    the regime, ``held`` when it passes in the regime, ``consistent`` when it passes
    outside it (e.g. early training where the paper's curves are at ≈0.999).

    Example:
        >>> judge(0.03, 0.01), judge(0.03, 0.01, regime=False), judge(-0.005, 0.01)
        ('held', 'consistent', 'inconclusive')
        >>> judge(-0.03, 0.01), judge(-0.03, 0.01, regime=False), judge(0.5, 0.01, tested=False)
        ('contradicted', 'untested', 'untested')
    """
    if resolution < 0 or not math.isfinite(resolution):
        raise ValueError(f"judge: `resolution` must be finite and ≥ 0, got {resolution!r}")
    if not tested:
        return "untested"
    if not math.isfinite(margin) or abs(margin) <= resolution:
        return "inconclusive"
    if margin < 0:
        return "contradicted" if regime else "untested"
    return "held" if regime else "consistent"


def claim(
    value: Any,
    target: str,
    margin: float,
    resolution: float,
    *,
    cid: str,
    regime: bool = True,
    regime_note: str = "",
    tested: bool = True,
    untested_note: str = "",
    control: Any = None,
) -> dict:
    """A claim record: what we measured, the target, the margin and the verdict.

    ``cid`` names the claim's entry in :mod:`sgjax.apps.experiments.registry` (its source,
    registration and regime are copied into the record). ``margin`` is signed (> 0: the
    claim passes by that much, in the units of the target); ``resolution`` is the
    smallest margin the measurement can tell from zero. ``control``: backprop's value of
    the same statistic on the same run, where the claim is judged against it (the margin
    then already includes the contrast). A fresh record is confirmatory;
    :func:`preregistered` re-labels it for data older than the claim.
    """
    from sgjax.apps.experiments.registry import CLAIMS

    if cid not in CLAIMS:
        raise KeyError(f"claim: {cid!r} is not registered in sgjax.apps.experiments.registry")
    spec = CLAIMS[cid]
    margin = float(margin)
    return {
        "id": cid,
        "source": spec.source,
        "registered": spec.registered,
        "status": "confirmatory",
        "value": value,
        "control": control,
        "target": target,
        "margin": margin,
        "resolution": float(resolution),
        "regime": bool(regime),
        "regime_note": regime_note,
        "tested": bool(tested),
        "untested_note": untested_note,
        "holds": bool(tested and math.isfinite(margin) and margin > 0),
        "verdict": judge(margin, resolution, regime=regime, tested=tested),
    }


def preregistered(records: dict[str, dict], data_date: str | None) -> dict[str, dict]:
    """``records`` with each claim registered after ``data_date`` marked exploratory.

    An exploratory record keeps its would-be verdict in ``verdict_if_registered`` and gets
    the verdict ``exploratory``: a claim stated after its data existed is never evidence.
    """
    from sgjax.apps.experiments.registry import is_confirmatory

    out = {}
    for name, rec in records.items():
        rec = dict(rec)
        if not is_confirmatory(rec["id"], data_date):
            rec["status"] = "exploratory"
            rec["verdict_if_registered"] = rec["verdict"]
            rec["verdict"] = "exploratory"
        out[name] = rec
    return out


def accuracy_resolution(p1: float, p2: float | None, n: int, *, exact: bool = False) -> float:
    """The smallest accuracy margin ``n`` evaluated points can resolve.

    ``exact``: the points are the whole population the claim is about (train accuracy on
    the whole training set): one point, ``1/n``. Otherwise two binomial standard errors
    (of ``p1``, or of the difference ``p1 − p2`` of two independent estimates), at least
    ``1/n``.

    Example:
        >>> accuracy_resolution(0.999, 0.998, 60000, exact=True) == 1 / 60000
        True
        >>> round(accuracy_resolution(0.98, None, 10000), 4)
        0.0028
    """
    if n < 1:
        raise ValueError(f"accuracy_resolution: `n` must be ≥ 1, got {n}")
    if exact:
        return 1.0 / n
    var = p1 * (1 - p1) + (p2 * (1 - p2) if p2 is not None else 0.0)
    return max(2.0 * math.sqrt(var / n), 1.0 / n)


def aggregate(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Combine per-seed claim records (``{seed: {claim: record}}``) into one verdict each.

    Only confirmatory seeds count (exploratory ones are listed with their margins); with
    none, the verdict is ``exploratory``. Over the confirmatory seeds, the resolution is
    the larger of the runs' measurement resolution and the spread of the margins over
    seeds (:func:`seed_resolution`), and the mean margin is judged against it:

    ``held``: every seed held, ≥ :data:`MIN_SEEDS_HELD` seeds and the mean margin beyond
    the resolution; ``consistent``: every seed passed (held or consistent) — fewer seeds,
    outside the paper's regime, or a mean margin within the spread over seeds;
    ``contradicted``: every seed contradicted, ≥
    :data:`MIN_SEEDS_CONTRADICTED` seeds and the mean margin beyond the resolution;
    ``untested``: every seed untested (outside the regime, or a measurement that cannot
    tell); anything else is ``inconclusive``. A claim missing on some seeds (a network not
    trained there, ``--set methods=…``) is combined over the seeds that have it.

    Example:
        >>> r = lambda m: {"x": claim(m, "> 0", m, 0.01, cid="fig3/bp-plateau")}
        >>> aggregate({0: r(0.1), 1: r(0.2), 2: r(0.3)})["x"]["verdict"]
        'held'
        >>> aggregate({0: r(0.1), 1: r(-0.2), 2: r(0.3)})["x"]["verdict"]
        'inconclusive'
        >>> aggregate({0: r(0.1)})["x"]["verdict"], aggregate({0: r(-0.1)})["x"]["verdict"]
        ('consistent', 'inconclusive')
        >>> aggregate({0: r(0.02), 1: r(0.3), 2: r(0.03)})["x"]["verdict"]  # spread > mean
        'consistent'
    """
    if not per_seed:
        raise ValueError("aggregate: `per_seed` is empty")
    names: list[str] = []
    for s in sorted(per_seed):
        names += [n for n in per_seed[s] if n not in names]
    out = {}
    for name in names:
        seeds = [s for s in sorted(per_seed) if name in per_seed[s]]
        recs = [per_seed[s][name] for s in seeds]
        conf = [(s, r) for s, r in zip(seeds, recs) if r.get("status") != "exploratory"]
        expl = [(s, r) for s, r in zip(seeds, recs) if r.get("status") == "exploratory"]
        notes = {n for r in recs for n in (r["regime_note"], r["untested_note"]) if n}
        for s, r in expl:
            notes.add(
                f"seed {s} exploratory (claim registered {r['registered'][:10]}, after the "
                f"data): would be {r.get('verdict_if_registered')}, margin {r['margin']:+.4g}"
            )
        use = conf or expl  # the figures shown; the verdict comes from `conf` only
        margins = np.array([r["margin"] for _, r in use], dtype=float)
        measured = max(r["resolution"] for _, r in use)
        spread = seed_resolution(margins) if conf else 0.0
        resolution = max(measured, spread)
        vs = [r["verdict"] for _, r in conf]
        mean = float(np.mean(margins))
        beyond = math.isfinite(mean) and abs(mean) > resolution
        if not conf:
            verdict = "exploratory"
        elif all(v == "untested" for v in vs):
            verdict = "untested"
        elif all(v == "contradicted" for v in vs):
            ok = len(conf) >= MIN_SEEDS_CONTRADICTED and beyond
            verdict = "contradicted" if ok else "inconclusive"
            if len(conf) < MIN_SEEDS_CONTRADICTED:
                notes.add("one seed fails: the spread over seeds is unknown, so not a verdict")
        elif all(v in ("held", "consistent") for v in vs):
            every = all(v == "held" for v in vs) and len(conf) >= MIN_SEEDS_HELD
            verdict = "held" if every and beyond else "consistent"
        else:
            verdict = "inconclusive"
        if conf and not beyond and spread > measured and verdict != "untested":
            notes.add(f"mean margin {mean:+.3g} within the spread over seeds ±{spread:.2g}")
        out[name] = {
            "id": recs[0].get("id"),
            "source": recs[0].get("source"),
            "verdict": verdict,
            "seeds": [s for s, _ in use],
            "confirmatory_seeds": [s for s, _ in conf],
            "per_seed_verdict": [r["verdict"] for _, r in use],
            "values": [r["value"] for _, r in use],
            "controls": [r.get("control") for _, r in use],
            "margins": margins.tolist(),
            "margin_min": float(np.min(margins)),
            "margin_mean": mean,
            "margin_max": float(np.max(margins)),
            "resolution": resolution,
            "measurement_resolution": measured,
            "seed_resolution": spread,
            "target": recs[0]["target"],
            "notes": sorted(notes),
        }
    return out


def claims_table(claims: dict[str, dict]) -> str:
    """The per-run claims as a markdown table with sources, margins and verdicts."""
    rows = []
    for name, c in claims.items():
        note = c.get("untested_note") if not c.get("tested", True) else c.get("regime_note")
        control = c.get("control")
        rows.append(
            [
                name,
                c.get("source", "—").split(" (")[0],
                c["value"] if control is None else f"{c['value']} (backprop: {control})",
                c["target"],
                f"{c['margin']:+.4g} (±{c['resolution']:.2g})",
                c["verdict"] + (f" — {note}" if note else ""),
            ]
        )
    return table(["claim", "source", "ours", "target", "margin (resolution)", "verdict"], rows)


def aggregate_table(agg: dict[str, dict]) -> str:
    """The multi-seed verdicts as a markdown table: per-seed values, margin spread, verdict."""
    rows = []
    for name, a in agg.items():
        vals = "; ".join(f"s{s}: {fmt(v)}" for s, v in zip(a["seeds"], a["values"]))
        controls = [c for c in a.get("controls", []) if c is not None]
        if controls:
            vals += " (backprop: " + "; ".join(fmt(c) for c in controls) + ")"
        spread = f"{a['margin_min']:+.4g} … {a['margin_max']:+.4g} (mean {a['margin_mean']:+.4g})"
        per = ", ".join(a["per_seed_verdict"])
        res = f"±{a['resolution']:.2g}"
        if a.get("seed_resolution", 0) > a.get("measurement_resolution", 0):
            res += " (seeds)"
        rows.append(
            [name, (a.get("source") or "—").split(" (")[0], a["target"], vals, spread, res, per,
             f"**{a['verdict']}**"]
        )  # fmt: skip
    return table(
        [
            "claim",
            "source",
            "target",
            "ours per seed",
            "margin min … max",
            "resolution",
            "per seed",
            "verdict",
        ],
        rows,
    )
