"""``sgjax reproduce dni-rnn``: the DNI paper's recurrent experiments (Jaderberg et al.
2017, §3.1; paper.md §5.1 — the RNN details there are recollections, UNVERIFIED).

For each truncation length T, BPTT-T, DNI-T and DNI+Aux-T (and full BPTT on the copy
tasks) train an LSTM of the same size for the same budget:

* **Copy** and **Repeat Copy** with a length curriculum (threshold 0.15 bits per output
  step, mean over the last ``patience`` batches; :class:`sgjax.recurrent.tasks.Curriculum`):
  the score is the longest output length solved within the budget;
* **Tiny Shakespeare** character LM (first 90% train, last 10% validation), B parallel
  streams with the state carried across chunks: validation bits per character after a
  fixed number of training characters (plus cDNI, the SG conditioned on the next input
  character, at the medium and paper scales).

The DNI paper's claim: a synthetic gradient at the truncation boundary extends the
effective time horizon beyond T (DNI-T learns longer dependencies than BPTT-T, and
reaches lower BPC), and DNI+Aux further. Verdicts (per comparison, over the values of T):
*held* if the mean over seeds is better at every T and the seed ranges are disjoint at
half of them or more; *not held* if the mean is better at half of the T or fewer;
*inconclusive* otherwise.

Every finished run is appended to ``<out>/runs/<part>-s<seed>.jsonl`` (with the settings
it ran under), so an interrupted run resumes, and parts can run in parallel processes
(``run_part(ctx, "copy")`` etc.) before ``run(ctx)`` assembles the report.

The training loops here (:func:`train_copy`, :func:`train_lm`) go over batches of
sequences, each trained window by window by :func:`sgjax.recurrent.core.train_sequence`
(whose docstring says why that is not :func:`sgjax.train.loop`); around it they carry
what a step function cannot: the curriculum, which changes the sequence length (and so
the compiled shapes) as the model improves, the streams' state across chunks of the
text, and evaluation at character counts rather than steps.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import rnn_report
from sgjax.apps.experiments.rnn_report import COPY_METHODS, LABELS, PARTS, _key
from sgjax.recurrent import cells, core, reference, tasks

SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": dict(  # seconds: every code path, vanilla cells of 8 units
        Ts=(2,),
        seeds=(0,),
        copy=dict(
            hidden=8,
            batch=4,
            bits=3,
            batches=4,
            patience=2,
            cos_every=4,
            lr=3e-3,
            sg_lr=1e-3,
            decay=1.0,
            cell="vanilla",
        ),
        lm=dict(
            hidden=8,
            batch=2,
            chunk=8,
            chars=2 * 8 * 3,
            evals=1,
            eval_chars=200,
            lr=1e-3,
            sg_lr=1e-3,
            decay=0.5,
            inject_clip=1.0,
            cell="vanilla",
        ),
        lm_methods=("bptt", "dni"),
        clip=1.0,
        aux_weight=0.1,
        threshold=0.15,
    ),
    "medium": dict(
        Ts=(2, 3, 4, 5, 8),
        seeds=(0, 1, 2),
        copy=dict(
            hidden=64,
            batch=32,
            bits=4,
            batches=2000,
            patience=10,
            cos_every=250,
            lr=3e-3,
            sg_lr=1e-3,
            decay=1.0,
        ),
        lm=dict(
            hidden=128,
            batch=32,
            chunk=120,
            chars=300_000,
            evals=5,
            eval_chars=None,
            lr=1e-3,
            sg_lr=1e-3,
            decay=0.5,
            inject_clip=1.0,
        ),
        lm_methods=("bptt", "dni", "dni_aux", "cdni"),
        clip=1.0,
        aux_weight=0.1,
        threshold=0.15,
    ),
    "paper": dict(
        Ts=(2, 3, 4, 5, 8),
        seeds=(0, 1, 2),
        copy=dict(
            hidden=256,
            batch=256,
            bits=8,
            batches=100_000,
            patience=50,
            cos_every=5000,
            lr=1e-3,
            sg_lr=1e-3,
            decay=1.0,
        ),
        lm=dict(
            hidden=1024,
            batch=64,
            chunk=120,
            chars=100_000_000,
            evals=20,
            eval_chars=None,
            lr=1e-3,
            sg_lr=1e-3,
            decay=0.5,
            inject_clip=1.0,
        ),
        lm_methods=("bptt", "dni", "dni_aux", "cdni"),
        clip=1.0,
        aux_weight=0.1,
        threshold=0.15,
    ),
}


def settings(ctx: C.Context) -> dict:
    cfg = json.loads(json.dumps(SETTINGS[ctx.scale]))  # deep copy, tuples → lists
    cfg["seeds"] = [ctx.seed + s for s in cfg["seeds"]]
    if ctx.steps is not None:
        cfg["copy"]["batches"] = ctx.steps
        lm = cfg["lm"]
        lm["chars"] = ctx.steps * lm["chunk"] * lm["batch"]
    return cfg


def _optimizer(lr: float, clip: float) -> optax.GradientTransformation:
    """Adam after a global-norm clip at ``clip`` (0: no clip)."""
    if clip < 0:
        raise ValueError(f"`clip` must be ≥ 0 (0: no clip), got {clip!r}")
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr)) if clip else optax.adam(lr)


_CACHE: dict = {}
#: The stabilising options of :func:`sgjax.recurrent.core.harness` a setting may carry
#: (``sg_dims`` = hidden: the LSTM's h half of its ``[h, c]`` state).
VARIANT_OPTIONS = ("sg_dims", "sg_squash", "inject_clip", "warmup", "target_tau", "inject_noise")


def _machinery(
    loss: str,
    in_dim: int,
    out_dim: int,
    hidden: int,
    method: str,
    T: int,
    cfg: dict,
    part: dict,
    context_dim: int = 0,
) -> tuple[core.Harness, core.WindowStep, optax.GradientTransformation, Any]:
    """Harness, jitted window step and optimisers, shared by runs that differ only in the
    seed (so each configuration compiles once per process)."""
    key = (
        part.get("cell", "lstm"),
        loss,
        in_dim,
        out_dim,
        hidden,
        method,
        T,
        context_dim,
        cfg["clip"],
        cfg["aux_weight"],
        part["lr"],
        part["sg_lr"],
        part["decay"],
        tuple(sorted((k, part[k]) for k in VARIANT_OPTIONS if k in part)),
    )
    if key not in _CACHE:
        mkey = ("model", loss, in_dim, out_dim, hidden, part.get("cell", "lstm"))
        if mkey not in _CACHE:
            cell = cells.get(part.get("cell", "lstm"), hidden)
            _CACHE[mkey] = core.Model(cell, in_dim, out_dim, loss)
        model = _CACHE[mkey]
        h = core.harness(
            model,
            window=T,
            method=method,
            context_dim=context_dim,
            aux_weight=cfg["aux_weight"],
            decay=part["decay"],
            **{k: part[k] for k in VARIANT_OPTIONS if k in part},
        )
        opt = _optimizer(part["lr"], cfg["clip"])
        sg_opt = _optimizer(part["sg_lr"], cfg["clip"])
        _CACHE[key] = (h, core.make_window_step(h, opt, sg_opt), opt, sg_opt)
    return _CACHE[key]


def _evaluator(model: core.Model):
    key = ("eval", model)
    if key not in _CACHE:
        _CACHE[key] = reference.make_evaluator(model)
    return _CACHE[key]


def _store(ctx: C.Context, part: str, seed: int) -> Path:
    return ctx.out / "runs" / f"{part}-s{seed}.jsonl"


def _load_runs(ctx: C.Context, cfg: dict) -> dict[str, dict]:
    done: dict[str, dict] = {}
    for path in sorted((ctx.out / "runs").glob("*.jsonl")):
        for rec in C.jsonl_records(path):
            if rec.get("settings") == _run_settings(cfg, rec["part"]):
                done[rec["key"]] = rec
    return done


def _run_settings(cfg: dict, part: str) -> dict:
    common = {k: cfg[k] for k in ("clip", "aux_weight", "threshold")}
    return {**common, **(cfg["lm"] if part == "lm" else cfg["copy"])}


def _append(ctx: C.Context, rec: dict) -> None:
    path = _store(ctx, rec["part"], rec["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(C.json_line(rec) + "\n")


# ------------------------------------------------------------------------ copy tasks


def train_copy(
    task: str, method: str, T: int, seed: int, cfg: dict, *, stop_on_nonfinite: bool = False
) -> dict:
    """One curriculum run; returns the longest length solved, the batch at which each
    length was solved (``levels``: ``[length, batch, seconds]``) and the curves.

    A non-finite loss or a refused update raises ``FloatingPointError``; with
    ``stop_on_nonfinite`` the run stops there instead and returns what it solved, with
    ``diverged`` saying where (``None`` for a run that finished its budget)."""
    cc = cfg["copy"]
    in_dim, out_dim = tasks.task_dims(task, cc["bits"])
    full = method == "full"
    args = ("bits", in_dim, out_dim, cc["hidden"])
    h, step, opt, sg_opt = _machinery(*args, "bptt" if full else method, 1 if full else T, cfg, cc)
    state = core.init(h, jax.random.key(seed), opt, sg_opt)
    cur = tasks.Curriculum(task, threshold=cfg["threshold"], patience=cc["patience"])
    rng = np.random.default_rng(seed)
    curve, cos_curve, levels = [], [], []
    diverged = None
    B = cc["batch"]
    t0 = time.perf_counter()
    for i in range(1, cc["batches"] + 1):
        x, y, m = cur.batch(rng, B, cc["bits"])
        if x.shape[0] < T:  # short levels: pad with masked steps to one window
            x, y, m = tasks.pad(T, x, y, m)
        hh = h
        if full:
            hh, step, _, _ = _machinery(*args, "bptt", x.shape[0], cfg, cc)
        if h.sg is not None and (i == 1 or i % cc["cos_every"] == 0):
            cos = reference.sg_cosines(hh, state.params, state.sg_params, x, y, m)
            cos_curve.append({"batch": i, "level": cur.length, "cos": np.asarray(cos).tolist()})
        try:
            state, _, met = core.train_sequence(hh, step, state, x, y, m)
            err = float(met["loss"]) * B / float(met["count"]) * tasks.BITS_PER_NAT
            if not math.isfinite(err):
                raise FloatingPointError(
                    f"{task} {method} T={T} seed {seed}: loss not finite at {i}"
                )
        except FloatingPointError as e:
            if not stop_on_nonfinite:
                raise
            diverged = f"batch {i}: {e}"
            break
        if cur.update(err):
            levels.append((cur.solved, i, time.perf_counter() - t0))
        curve.append((i, err, cur.length))
    return {
        "solved": cur.solved,
        "final_level": cur.length,
        "levels": levels,
        "diverged": diverged,
        "curve": curve[:: max(1, len(curve) // 300)],
        "cos": cos_curve,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------ char-LM


def validation_halves(ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation text cut into ``batch`` equal contiguous blocks (the streams it is
    evaluated in; the remainder dropped), split into the even blocks (the *selection*
    half, which picks the early-stopping point) and the odd blocks (the *report* half,
    which scores it). Interleaved, the two halves sample the same parts of the text; each
    is evaluated in ``batch // 2`` streams, one block per stream.

    Example:
        >>> [h.tolist() for h in validation_halves(np.arange(9), 4)]
        [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    if not isinstance(batch, int) or batch < 2 or batch % 2:
        raise ValueError(f"`batch` must be an even int ≥ 2 for two halves, got {batch!r}")
    n = len(ids) // batch
    if n < 2:
        raise ValueError(
            f"`ids`: {len(ids)} validation characters give blocks of {n} for {batch} streams; "
            "early stopping needs at least 2 characters per block"
        )
    blocks = np.asarray(ids)[: n * batch].reshape(batch, n)
    return np.ascontiguousarray(blocks[0::2].ravel()), np.ascontiguousarray(blocks[1::2].ravel())


def _evaluate_bpc(model, params, ids: np.ndarray, batch: int, chunk: int) -> float:
    ev = _evaluator(model)
    S = tasks.streams(ids, batch)
    n = S.shape[0] - 1
    carry = np.zeros((batch, model.cell.state_dim), np.float32)
    total = count = 0.0
    for p in range(0, n, chunk):
        q = min(p + chunk, n)
        x = np.zeros((chunk, batch), np.int64)
        y = np.zeros((chunk, batch), np.int64)
        m = np.zeros((chunk, batch), np.float32)
        x[: q - p], y[: q - p], m[: q - p] = S[p:q], S[p + 1 : q + 1], 1.0
        s, c, carry = ev(params, carry, tasks.one_hot(x, model.in_dim), y, m)
        total += float(s)
        count += float(c)
    return total / count * tasks.BITS_PER_NAT


def train_lm(data: tasks.CharData, method: str, T: int, seed: int, cfg: dict) -> dict:
    """Train on Tiny Shakespeare for ``chars`` characters; validation BPC along the way."""
    lc = cfg["lm"]
    V = len(data.vocab)
    cdni = method == "cdni"
    h, step, opt, sg_opt = _machinery(
        "xent", V, V, lc["hidden"], "dni" if cdni else method, T, cfg, lc, V if cdni else 0
    )
    model = h.model
    state = core.init(h, jax.random.key(seed), opt, sg_opt)
    B, chunk = lc["batch"], lc["chunk"]
    if chunk % T:
        raise ValueError(f"lm chunk {chunk} must be a multiple of T={T}")
    if len(data.train) < B * (chunk + 2):
        raise ValueError(
            f"{data.path}: its training split has {len(data.train):,} characters, fewer than "
            f"{B} streams × (chunk {chunk} + 2) = {B * (chunk + 2):,}; use a longer text or a "
            "smaller `batch`/`chunk`"
        )
    S = tasks.streams(data.train, B)
    valid = data.valid if lc["eval_chars"] is None else data.valid[: lc["eval_chars"]]
    halves = validation_halves(valid, B) if lc.get("early_stop") else None
    n_chunks = max(1, lc["chars"] // (chunk * B))
    eval_at = sorted({round(n_chunks * (k + 1) / lc["evals"]) for k in range(lc["evals"])})
    curve = [(0, _evaluate_bpc(model, state.params, valid, B, chunk))]
    halves_curve: list = []

    def evaluate_halves(chars: int) -> None:
        if halves is not None:
            sel, rep = (_evaluate_bpc(model, state.params, v, B // 2, chunk) for v in halves)
            halves_curve.append((chars, sel, rep))

    evaluate_halves(0)
    cos_curve: list = []
    carry, train_loss, p = None, [], 0
    t0 = time.perf_counter()
    for i in range(1, n_chunks + 1):
        if p + chunk + 2 > S.shape[0]:
            p, carry = 0, None  # next epoch: restart the streams
        ids = S[p : p + chunk + 1]
        x, y = tasks.one_hot(ids[:-1], V), ids[1:]
        ctx = x if cdni else None
        nxt = tasks.one_hot(S[p + chunk], V) if cdni else None
        first = carry is None
        if h.sg is not None and i in eval_at:
            cos = reference.sg_cosines(
                h, state.params, state.sg_params, x, y, None, ctx, None if first else carry
            )
            cos_curve.append({"chars": i * chunk * B, "cos": np.asarray(cos).tolist()})
        state, carry, met = core.train_sequence(
            h, step, state, x, y, ctx=ctx, carry=carry, first=first, last=False, next_ctx=nxt
        )
        train_loss.append(float(met["loss"]) * B / float(met["count"]) * tasks.BITS_PER_NAT)
        if not math.isfinite(train_loss[-1]):
            raise FloatingPointError(f"lm {method} T={T} seed {seed}: loss not finite at {i}")
        p += chunk
        if i in eval_at:
            curve.append((i * chunk * B, _evaluate_bpc(model, state.params, valid, B, chunk)))
            evaluate_halves(i * chunk * B)
    early: dict = {}
    if halves is not None:
        # early stopping: the evaluation with the lowest selection-half BPC (the first of
        # equals), scored on the report half, which took no part in the choice
        best = min(halves_curve[1:], key=lambda r: r[1])
        early = {"bpc_best": best[2], "best_chars": best[0], "halves_curve": halves_curve}
    return {
        "bpc": curve[-1][1],
        "curve": curve,
        **early,
        "train_bpc_last": float(np.mean(train_loss[-max(1, len(train_loss) // 10) :])),
        "cos": cos_curve,
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------ orchestration


def _keys(cfg: dict, part: str) -> list[tuple[str, str, int, int]]:
    methods = cfg["lm_methods"] if part == "lm" else COPY_METHODS
    out = []
    for seed in cfg["seeds"]:
        for method in methods:
            for T in [0] if method == "full" else cfg["Ts"]:
                out.append((part, method, T, seed))
    return out


def run_part(ctx: C.Context, part: str, seeds: tuple[int, ...] | None = None) -> None:
    """Run (or resume) one part: ``copy``, ``repeat_copy`` or ``lm`` (only ``seeds``)."""
    if part not in PARTS:
        raise ValueError(f"`part` must be one of {PARTS}, got {part!r}")
    cfg = settings(ctx)
    done = _load_runs(ctx, cfg)
    data = tasks.load_tinyshakespeare(ctx.data_dir) if part == "lm" else None
    for part_, method, T, seed in _keys(cfg, part):
        key = _key(part_, method, T, seed)
        if key in done or (seeds is not None and seed not in seeds):
            continue
        if part == "lm":
            assert data is not None
            res = train_lm(data, method, T, seed, cfg)
        else:
            res = train_copy(part, method, T, seed, cfg)
        rec = {"key": key, "part": part, "seed": seed, "settings": _run_settings(cfg, part)}
        _append(ctx, {**rec, **res})
        if ctx.progress:
            score = res["bpc"] if part == "lm" else res["solved"]
            print(f"{key}: {score} ({res['seconds']:.0f} s)", flush=True)


def run(ctx: C.Context) -> dict:
    """Run every part (resuming), then write figures, results.json and report.md."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    cfg = settings(ctx)
    for part in PARTS:
        run_part(ctx, part)
    done = _load_runs(ctx, cfg)
    results: dict = {"settings": cfg, "runs": {}}
    for part in PARTS:
        for k in _keys(cfg, part):
            results["runs"][_key(*k)] = done[_key(*k)]
    summary = _summarise(cfg, results["runs"])
    results["summary"] = summary
    results["claims"] = _claims(cfg, summary)
    figs = rnn_report.plot(ctx, cfg, results["runs"], summary)
    rnn_report.report(ctx, cfg, results, figs)
    slim = {
        k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in results["runs"].items()
    }
    C.write_json(ctx.out / "results.json", {**results, "runs": slim})
    return results


def _values(runs: dict, cfg: dict, part: str, method: str, T: int) -> list[float]:
    field = "bpc" if part == "lm" else "solved"
    return [runs[_key(part, method, T, s)][field] for s in cfg["seeds"]]


def _summarise(cfg: dict, runs: dict) -> dict:
    out: dict = {}
    for part in PARTS:
        methods = cfg["lm_methods"] if part == "lm" else COPY_METHODS
        out[part] = {}
        for method in methods:
            for T in [0] if method == "full" else cfg["Ts"]:
                v = _values(runs, cfg, part, method, T)
                out[part][f"{method}/T{T}"] = {
                    "values": v,
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v)),
                }
        cos = {}
        for method in methods:
            if method in ("bptt", "full"):
                continue
            for T in cfg["Ts"]:
                last = [runs[_key(part, method, T, s)]["cos"] for s in cfg["seeds"]]
                finals = [np.mean(c[-1]["cos"]) for c in last if c and c[-1]["cos"]]
                cos[f"{method}/T{T}"] = float(np.mean(finals)) if finals else None
        out[part]["final_cosine"] = cos
    return out


def verdict(a: dict[int, list[float]], b: dict[int, list[float]], higher: bool = True) -> str:
    """held / not held / inconclusive for "a beats b" over the values of T (see module doc).

    Example:
        >>> verdict({2: [5, 6], 4: [7, 8]}, {2: [3, 4], 4: [5, 5]})
        'held'
        >>> verdict({2: [3], 4: [3]}, {2: [3], 4: [4]})
        'not held'
    """
    sign = 1.0 if higher else -1.0
    Ts = sorted(a)
    wins = sum(sign * (np.mean(a[T]) - np.mean(b[T])) > 0 for T in Ts)
    apart = sum(sign * (min(a[T]) - max(b[T])) > 0 if higher else max(a[T]) < min(b[T]) for T in Ts)
    if wins == len(Ts) and 2 * apart >= len(Ts):
        return "held"
    if 2 * wins <= len(Ts):
        return "not held"
    return "inconclusive"


def _claims(cfg: dict, summary: dict) -> dict:
    def by_T(part, method):
        return {T: summary[part][f"{method}/T{T}"]["values"] for T in cfg["Ts"]}

    def fmt(part, method):
        return ", ".join(f"T={T}: {summary[part][f'{method}/T{T}']['mean']:.3g}" for T in cfg["Ts"])

    claims = {}
    for part, name in (("copy", "Copy"), ("repeat_copy", "Repeat Copy")):
        for a, b in (("dni", "bptt"), ("dni_aux", "dni")):
            v = verdict(by_T(part, a), by_T(part, b))
            claims[f"{name}: {LABELS[a]} solves longer than {LABELS[b]}"] = {
                "value": f"{LABELS[a]} {fmt(part, a)} vs {LABELS[b]} {fmt(part, b)}",
                "target": "longer at every T",
                "verdict": v,
                "holds": v == "held",
            }
    for a, b in (("dni", "bptt"), ("dni_aux", "dni")):
        if a in cfg["lm_methods"] and b in cfg["lm_methods"]:
            v = verdict(by_T("lm", a), by_T("lm", b), higher=False)
            claims[f"Tiny Shakespeare: {LABELS[a]} lower BPC than {LABELS[b]}"] = {
                "value": f"{LABELS[a]} {fmt('lm', a)} vs {LABELS[b]} {fmt('lm', b)}",
                "target": "lower at every T",
                "verdict": v,
                "holds": v == "held",
            }
    return claims
