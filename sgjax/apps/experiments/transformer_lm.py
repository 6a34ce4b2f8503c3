"""The decoupled transformer language model on one device against backprop (issue 29,
item 3(a)): a decoder-only character transformer (:func:`sgjax.transformer.char_lm`) on
Tiny Shakespeare (first 90 % for training, last 10 % for validation), trained with

* ``backprop`` — exact gradients;
* ``dni`` — a position-wise linear SG (:func:`sgjax.transformer.positionwise`,
  ``SG(h)_t = h_t A + C``) at every hidden boundary (after the embedding and after each
  block: every stage learns from its own SG, update-unlocked), regressed onto the
  bootstrapped gradient from the stage above;
* ``cdni`` — the same SG conditioned on the context ``y_t``: the next character, one-hot,
  i.e. the target of position t's loss (``+ y_t B``). In a causal LM the true gradient at
  position t also carries the losses of the later positions that attend to it, which
  ``y_t`` does not see;
* ``sg-prop`` — cDNI's modules with SG + prop (α = ``prop``): the lower stage also
  follows ``α ∂ℓ_SG/∂h``.

Every run trains for ``steps`` steps (the equal-steps comparison); an SG run then
continues until its training wall time reaches the backprop run's of the same seed (the
equal-wall-time comparison; backprop runs first in each seed). Validation loss (nats and
bits per character) on a fixed validation sample is logged by step, by training wall time
and by CPU time; the cosine between each boundary's SG and the true gradient on a held
batch at a few steps; tokens per second; the CPU time of each run. Each finished run is
one line of ``<out>/runs.jsonl`` (a killed study resumes at the first unfinished run).

Why not :func:`sgjax.train.fit`: the run stops on a wall-time budget and evaluates
between segments; it is :func:`sgjax.train.loop` (with ``init`` / ``make_step``) run one
segment at a time.

Usage::

    taskset -c 1 python -m sgjax.apps.experiments.transformer_lm run --out DIR
    python -m sgjax.apps.experiments.transformer_lm report --out DIR
    sgjax reproduce dni-transformer --scale smoke|medium
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import rules, train
from sgjax import transformer as tf
from sgjax.apps.experiments import common as C
from sgjax.apps.experiments.transformer_lm_settings import (  # noqa: F401 (re-exported)
    LABELS,
    LN2,
    METHODS,
    SCALES,
    SEEDS,
    json_cfg,
)
from sgjax.losses import Loss
from sgjax.recurrent import tasks
from sgjax.sweep import exact_signals


def check_settings(cfg: dict[str, Any]) -> None:
    """Refuse settings that cannot run, naming the setting (before any training)."""
    for k in ("context", "width", "blocks", "heads", "batch", "steps", "eval_every"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"transformer_lm: setting {k!r} must be an int ≥ 1, got {v!r}")
    for k in ("eval_windows", "held_windows"):
        if isinstance(cfg[k], bool) or not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ValueError(f"transformer_lm: setting {k!r} must be an int ≥ 1, got {cfg[k]!r}")
    if cfg["width"] % cfg["heads"]:
        raise ValueError(
            f"transformer_lm: `width` {cfg['width']} must be a multiple of `heads` {cfg['heads']}"
        )
    for k in ("lr", "prop"):
        if not (isinstance(cfg[k], int | float) and cfg[k] > 0):
            raise ValueError(f"transformer_lm: setting {k!r} must be a number > 0, got {cfg[k]!r}")
    bad = [s for s in cfg["cosine_steps"] if not 1 <= s <= cfg["steps"]]
    if bad:
        raise ValueError(
            f"transformer_lm: `cosine_steps` must lie in 1..steps={cfg['steps']}, got {bad}"
        )


#: The training loss: the cross-entropy summed over the positions of a window (mean over
#: the batch), i.e. ``context`` × :data:`sgjax.transformer.sequence_xent`. Its per-example
#: output gradient is ``softmax − y`` at each position (O(1)), not ``(softmax − y)/T``:
#: with the mean, the SG modules regress onto targets ~1/T as large, whose best parameters
#: (~3e-4) are smaller than one Adam step at 1e-3 and whose gradients (~1e-7) meet Adam's
#: ε — the pilot's SGs then never fitted (cosine ≈ 0 at the top boundary, which regresses
#: onto the exact gradient). With Adam, backprop is unchanged by the factor (scale
#: invariant; the clip norm is scaled by ``context`` with it). Validation is reported per
#: character (the mean).
summed_xent = Loss(
    "sequence_xent_summed",
    lambda p, y: p.shape[1] * tf.sequence_xent.fn(p, y),
    lambda p, y: p.shape[1] * tf.sequence_xent.output_grad(p, y),
)


def rule_for(method: str, cfg: dict[str, Any]) -> rules.UpdateRule:
    """The update rule of ``method`` (SG modules at every hidden boundary)."""
    if method == "backprop":
        return rules.backprop()
    at = cfg.get("sg_at")
    at = None if at is None or at == "all" else tuple(at) if isinstance(at, list | tuple) else at
    if method == "dni":
        return rules.synthetic_gradients(tf.positionwise(use_y=False), at=at)
    if method == "cdni":
        return rules.synthetic_gradients(tf.positionwise(use_y=True), at=at)
    if method == "sg-prop":
        return rules.synthetic_gradients(tf.positionwise(use_y=True), prop=cfg["prop"], at=at)
    raise ValueError(f"transformer_lm: `method` must be one of {METHODS}, got {method!r}")


def windows(ids: np.ndarray, starts: np.ndarray, context: int, vocab: int):
    """``(x, y)`` of the windows starting at ``starts``: one-hot inputs of ``context``
    characters and the flattened one-hot next characters (:func:`sgjax.transformer.targets`)."""
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    w = ids[idx]
    return tf.inputs(w[:, :-1], vocab), tf.targets(w[:, 1:], vocab)


def fixed_starts(n_chars: int, count: int, context: int) -> np.ndarray:
    """``count`` window starts evenly spread over a text of ``n_chars`` characters (the
    fixed validation sample: the same windows for every method and seed).

    Example:
        >>> fixed_starts(100, 3, 9).tolist()
        [0, 45, 90]
    """
    last = n_chars - context - 1
    if last < 0:
        raise ValueError(
            f"transformer_lm: a text of {n_chars} characters holds no window of "
            f"{context} + 1 characters"
        )
    return np.linspace(0, last, count).round().astype(np.int64)


def train_batches(ids: np.ndarray, cfg: dict[str, Any], vocab: int, seed: int):
    """Endless batches of random training windows; batch k depends only on (seed, k)."""
    last = len(ids) - cfg["context"] - 1
    if last < 1:
        raise ValueError(
            f"transformer_lm: the training text ({len(ids)} characters) is shorter than "
            f"one window of context {cfg['context']} + 1"
        )
    k = 0
    while True:
        starts = np.random.default_rng([seed, k]).integers(0, last + 1, cfg["batch"])
        yield windows(ids, starts, cfg["context"], vocab)
        k += 1


def val_nats(net, params, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    """Mean cross-entropy per character (nats) of ``params`` on the fixed sample."""
    return float(train.evaluate(net, params, tf.sequence_xent, x, y, batch_size=batch)["loss"])


def _cosines(net, rule, state, x, y):
    out = rule.gradients(state.rule_state, net, state.params, x, y, summed_xent)
    true = exact_signals(net, state.params, x, y, summed_xent)
    vals = []
    for d, t in zip(out.signals[:-1], true[:-1]):
        d, t = d.reshape(-1), t.reshape(-1)
        den = jnp.linalg.norm(d) * jnp.linalg.norm(t)
        vals.append(jnp.where(den > 0, jnp.dot(d, t) / jnp.where(den > 0, den, 1.0), 0.0))
    return jnp.stack(vals)


def boundary_cosines(net, rule, state, x, y) -> np.ndarray:
    """Cosine between each hidden boundary's signal (the SG the rule used) and the true
    ∂ℓ/∂h there, flattened over the held batch (one value per boundary); compiled once
    per (network, rule) in a process."""
    cos = train.static_jit(_cosines, net, rule)
    return np.asarray(cos(state, jnp.asarray(x), jnp.asarray(y)))


def train_run(
    data: tasks.CharData,
    method: str,
    seed: int,
    cfg: dict[str, Any],
    *,
    wall_budget: float | None = None,
) -> dict[str, Any]:
    """One run: ``cfg['steps']`` steps, then (given ``wall_budget``, seconds of training
    wall time) on until that budget. Returns the curve, cosines and timings."""
    check_settings(cfg)
    V = len(data.vocab)
    T = cfg["context"]
    net = tf.char_lm(V, context=T, width=cfg["width"], blocks=cfg["blocks"], heads=cfg["heads"])
    rule = rule_for(method, cfg)
    # the clip of the mean loss's gradient norm, on the summed loss's (× context)
    opt = optax.chain(optax.clip_by_global_norm(cfg["clip"] * T), optax.adam(cfg["lr"]))
    state = train.init(jax.random.key(seed), net, rule, opt)
    step_fn = jax.jit(train.make_step(net, rule, summed_xent, opt))
    xv, yv = windows(data.valid, fixed_starts(len(data.valid), cfg["eval_windows"], T), T, V)
    held = fixed_starts(len(data.valid), cfg["held_windows"], T) + T // 2
    held = np.minimum(held, len(data.valid) - T - 1)  # other windows than the sample's
    xh, yh = windows(data.valid, held, T, V)
    it = train_batches(data.train, cfg, V, seed)

    # compile outside the clock: one step on a copy of the state (then discarded)
    t0 = time.perf_counter()
    jax.block_until_ready(step_fn(state, tuple(map(jnp.asarray, windows(
        data.train, np.zeros(cfg["batch"], np.int64), T, V))))[0].params)  # fmt: skip
    compile_s = time.perf_counter() - t0

    wall = cpu = 0.0
    losses: list[float] = []
    curve: list[dict[str, Any]] = []
    cosines: list[dict[str, Any]] = []
    has_sg = method != "backprop"

    def on_step(n, metrics, _state):
        losses.append(float(metrics["loss"]) / T)  # nats per character

    def log(step: int) -> None:
        nats = val_nats(net, state.params, xv, yv)
        recent = losses[-cfg["eval_every"] :]
        curve.append(
            {
                "step": step,
                "wall": wall,
                "cpu": cpu,
                "val_nats": nats,
                "val_bpc": nats / LN2,
                "train_nats": float(np.mean(recent)) if recent else None,
            }
        )

    def segment(to: int) -> None:
        nonlocal state, wall, cpu
        c0, w0 = time.process_time(), time.perf_counter()
        state = train.loop(step_fn, state, it, steps=to, on_step=on_step)
        jax.block_until_ready(state.params)
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0

    log(0)
    marks = sorted({*range(cfg["eval_every"], cfg["steps"], cfg["eval_every"]),
                    *cfg["cosine_steps"], cfg["steps"]})  # fmt: skip
    for m in marks:
        segment(m)
        if m % cfg["eval_every"] == 0 or m == cfg["steps"]:
            log(m)
        if has_sg and m in cfg["cosine_steps"]:
            cosines.append(
                {"step": m, "cosine": boundary_cosines(net, rule, state, xh, yh).tolist()}
            )
    at_steps = dict(curve[-1])
    steps_wall = wall
    if wall_budget is not None and wall < wall_budget:
        # on at the same pace until the wall budget (checked every 10 steps)
        n = cfg["steps"]
        while wall < wall_budget:
            n += 10
            segment(n)
            if n % cfg["eval_every"] == 0 and wall < wall_budget:
                log(n)
        log(n)
    tokens = cfg["steps"] * cfg["batch"] * T
    return {
        "curve": curve,
        "cosines": cosines,
        "at_steps": at_steps,
        "final": dict(curve[-1]),
        "tokens_per_s": tokens / steps_wall,
        "steps_wall": steps_wall,
        "compile_seconds": compile_s,
        "sg_loss": None,
        "nonfinite_steps": int(sum(not math.isfinite(v) for v in losses)),
    }


def jobs(seeds=SEEDS, methods=METHODS) -> list[tuple[str, str, int]]:
    """``(key, method, seed)`` in run order: seed by seed, backprop first (its wall time is
    the budget of the SG runs of the same seed)."""
    return [(f"{m}/s{s}", m, s) for s in seeds for m in METHODS if m in methods]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(
    out: Path,
    data: tasks.CharData,
    cfg: dict[str, Any],
    *,
    seeds=SEEDS,
    methods=METHODS,
    log=print,
) -> dict[str, dict]:
    """Run (resuming) every unfinished run, appending each to ``out/runs.jsonl``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    for key, method, seed in jobs(seeds, methods):
        done = C.load_runs(out)
        if key in done and done[key]["settings"] == json_cfg(cfg):
            continue
        budget = None
        if method != "backprop":
            bp = done.get(f"backprop/s{seed}")
            if bp is None:
                log(f"{key}: no backprop run of seed {seed}; no equal-wall-time budget")
            else:
                budget = bp["steps_wall"]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        c0, t0 = time.process_time(), time.perf_counter()
        res = train_run(data, method, seed, cfg, wall_budget=budget)
        rec = {
            "key": key,
            "method": method,
            "seed": seed,
            "settings": json_cfg(cfg),
            "wall_budget": budget,
            "cpu_seconds": time.process_time() - c0,
            "wall_seconds": time.perf_counter() - t0,
            "run_date": started,
            "commit": _commit(),
            **res,
        }
        with (out / "runs.jsonl").open("a") as f:
            f.write(C.json_line(rec) + "\n")
        log(
            f"{key}: {res['at_steps']['val_bpc']:.3f} BPC at {cfg['steps']} steps, "
            f"{res['final']['val_bpc']:.3f} at {res['final']['wall']:.0f} s, "
            f"{res['tokens_per_s']:.0f} tok/s, {rec['cpu_seconds']:.0f} s CPU"
        )
    return C.load_runs(out)


def run_ctx(ctx: C.Context) -> dict:
    """``sgjax reproduce dni-transformer``: ``smoke`` runs the 4 methods on seed
    ``ctx.seed`` in seconds; ``medium`` (and ``paper``, the same: neither paper has a
    transformer) the 4 methods × seeds 0, 1, 2 of the results page (about an hour of one
    core; resumable: finished runs in ``<out>/runs.jsonl`` are kept)."""
    from sgjax.apps.experiments import transformer_lm_report as R

    cfg = C.settings_for(ctx, SCALES)
    cfg["cosine_steps"] = tuple(s for s in cfg["cosine_steps"] if s <= cfg["steps"]) or (
        cfg["steps"],
    )
    check_settings(cfg)
    data = tasks.load_tinyshakespeare(ctx.data_dir)  # before any training
    seeds = (ctx.seed,) if ctx.scale == "smoke" else SEEDS
    run(
        ctx.out,
        data,
        cfg,
        seeds=seeds,
        log=lambda s: print(s, flush=True) if ctx.progress else None,
    )
    from sgjax.apps.experiments.rnn_lm import bigram_bpc

    return R.write(ctx.out, cfg, seeds, levels=bigram_bpc(data))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sgjax.apps.experiments.transformer_lm")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (resume) the 4 methods × 3 seeds")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--data-dir", default=None)
    r.add_argument("--scale", choices=tuple(SCALES), default="medium")
    r.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    r.add_argument("--methods", default=None, help=f"comma-separated, of {','.join(METHODS)}")
    rep = sub.add_parser("report", help="write report.md, results.json and figures")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--scale", choices=tuple(SCALES), default="medium")
    rep.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    if a.cmd == "run":
        methods = METHODS if a.methods is None else tuple(a.methods.split(","))
        for m in methods:
            if m not in METHODS:
                p.error(f"--methods: {m!r} is not one of {METHODS}")
        seeds = SEEDS if a.seeds is None else tuple(int(s) for s in a.seeds.split(","))
        data = tasks.load_tinyshakespeare(a.data_dir)  # validated before any long work
        run(a.out, data, SCALES[a.scale], seeds=seeds, methods=methods,
            log=lambda s: print(s, flush=True))  # fmt: skip
    else:
        from sgjax.apps.experiments import transformer_lm_report as R
        from sgjax.apps.experiments.rnn_lm import bigram_bpc

        levels = bigram_bpc(tasks.load_tinyshakespeare(a.data_dir))
        R.write(a.out, SCALES[a.scale], levels=levels)


if __name__ == "__main__":
    main()
