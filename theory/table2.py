"""Table 2: SG on artificial data (paper.md §2.4, items 7–10 of §6).

Datasets ``lineark`` (labels from a random hyperplane through the origin),
``noisyk`` (10% of those labels swapped) and ``randomk`` (random labels), with
``x ~ N(0, I_k)``, k ∈ {2, 100} (100 and 1000 points), labels one-hot over 2 classes.
Models: a linear model ("shallow", SG between logits and loss) and a deep linear
model with 10 hidden layers of width 20 (SG after hidden layer 5; width and placement
are unspecified in the paper). Losses: MSE ``mean_i ½‖p_i − y_i‖²`` and log loss
(mean softmax cross-entropy). Training is full-batch Adam for the network and for
the SG (zero initialised, regressing onto the true per-point ``∂L_i/∂h_i``), with a
cosine-decayed rate (shallow 1e-2, deep 1e-3, down to 1e-3 of that; the paper's
fixed 3e-5 with an unstated iteration count would need millions of steps), the same
schedule and budget for backprop and SG.

The gap is final loss(SG) − final loss(reference): the least-squares optimum for
shallow MSE, backprop with the same budget otherwise. The table is averaged over
``instances`` datasets per cell (the paper: 10).

Claims: MSE gaps to least squares ≈ 0 (item 7); log-loss gaps on separable data
clearly non-zero (item 8); random labels ≈ 0 within 1e-4 (item 9); a sigmoid SG
``d ⊙ σ(hA) + yB + C`` closes the separable log-loss gap (item 10). The paper's bold
noisy cells are findings (budget dependent). Negative controls: the MSE "gap ≈ 0"
check with a label-free SG must fail; the separable-gap check on random labels must
fail.

Training is a ``lax.fori_loop`` inside one jitted, ``vmap``-ped function per cell (all
instances at once, 20,000 full-batch steps), not :func:`sgjax.train.loop`: a Python loop
of one dispatched step per iteration would be two orders of magnitude slower for these
two-parameter-per-layer models, and the check needs no checkpoints or callbacks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgjax import sgmodule
from theory._common import np_orthonormal, rng, x64
from theory.record import Claim, at_least, at_most, control, finding

Layers = list[tuple[jax.Array, jax.Array]]

#: The paper's Table 2: (dataset, model) -> (MSE gap, log-loss gap).
PAPER_TABLE2: dict[tuple[str, str], tuple[float, float]] = {
    ("linear2", "shallow"): (0.00000, 0.03842),
    ("linear100", "shallow"): (0.00002, 0.08554),
    ("noisy2", "shallow"): (0.00000, 0.00036),
    ("noisy100", "shallow"): (0.00002, 0.00442),
    ("random2", "shallow"): (0.00000, 0.00000),
    ("random100", "shallow"): (0.00004, 0.00003),
    ("noisy2", "deep"): (0.00000, 0.00000),
    ("noisy100", "deep"): (0.00001, 0.00293),
    ("random2", "deep"): (0.00000, 0.00000),
    ("random100", "deep"): (0.00001, 0.00004),
}


SHALLOW_CELLS = tuple(c for c in PAPER_TABLE2 if c[1] == "shallow")
#: The default run: every k = 2 cell, shallow and deep (``--thorough``: all cells).
DEFAULT_CELLS = (
    ("linear2", "shallow"),
    ("noisy2", "shallow"),
    ("random2", "shallow"),
    ("noisy2", "deep"),
    ("random2", "deep"),
)


def make_dataset(
    g: np.random.Generator, kind: str, k: int, instances: int
) -> tuple[np.ndarray, np.ndarray]:
    """``lineark`` / ``noisyk`` / ``randomk``: inputs (I, n, k) and one-hot labels (I, n, 2).

    Example:
        >>> X, Y = make_dataset(np.random.default_rng(0), "noisy", 2, 3)
        >>> X.shape, Y.shape, float(Y.sum())
        ((3, 100, 2), (3, 100, 2), 300.0)
    """
    if kind not in ("linear", "noisy", "random") or k < 1:
        raise ValueError(f"dataset must be linear/noisy/random with k ≥ 1, got {kind!r}, {k}")
    n = 100 if k == 2 else 1000
    X = g.normal(size=(instances, n, k))
    label = (X @ g.normal(size=(instances, k, 1)))[..., 0] > 0
    if kind == "noisy":  # swap exactly 10% of the labels
        for i in range(instances):
            label[i, g.permutation(n)[: n // 10]] ^= True
    elif kind == "random":
        label = g.uniform(size=(instances, n)) < 0.5
    return X, np.eye(2)[label.astype(int)]


def _forward(layers: Layers, h: jax.Array) -> jax.Array:
    for W, b in layers:
        h = h @ W + b
    return h


def _loss(p: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    if loss == "mse":
        return 0.5 * jnp.mean(jnp.sum((p - y) ** 2, axis=1))
    return jnp.mean(optax.softmax_cross_entropy(p, y))


#: Hidden width and depth of the deep linear model, and where its SG sits.
DEEP_WIDTH, DEEP_HIDDEN, DEEP_SG_AFTER = 20, 10, 5


def _init_net(g: np.random.Generator, k: int, model: str, instances: int) -> list:
    dims = [k, 2] if model == "shallow" else [k] + [DEEP_WIDTH] * DEEP_HIDDEN + [2]
    # Orthogonal init keeps an 11-layer linear product well conditioned.
    return [
        (np_orthonormal(g, dims[i], dims[i + 1], instances), np.zeros((instances, dims[i + 1])))
        for i in range(len(dims) - 1)
    ]


def _sg_init(m: int, sg: str) -> dict[str, jax.Array]:
    params = {"A": jnp.zeros((m, m)), "B": jnp.zeros((2, m)), "C": jnp.zeros(m)}
    if sg == "nolabel":  # hA + C: the negative control
        del params["B"]
    if sg == "sigmoid":  # the paper's form d ⊙ σ(hA) + yB + C (§3, footnote 3)
        params |= {"d": jnp.zeros(m)}
    return params


def _sg_apply(params: dict[str, jax.Array], h: jax.Array, y: jax.Array) -> jax.Array:
    out = params["C"] + (y @ params["B"] if "B" in params else 0.0)
    if "d" in params:
        return out + params["d"] * jax.nn.sigmoid(h @ params["A"])
    return out + h @ params["A"]


def _train(
    layers: Layers, X: jax.Array, Y: jax.Array, model: str, loss: str, method: str, steps: int
) -> jax.Array:
    n = X.shape[0]
    j = 1 if model == "shallow" else DEEP_SG_AFTER  # SG after the logits / hidden layer 5
    m = layers[j - 1][0].shape[1]
    params = (layers[:j], layers[j:], _sg_init(m, method if method != "backprop" else "linear"))
    # The same schedule for backprop and SG (see DECAY).
    lr = LR[model]
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=1e-3) if DECAY[loss] else lr)
    state = opt.init(params)

    def step(carry: tuple, _: None) -> tuple[tuple, None]:
        params, state = carry
        lower, upper, sgp = params
        h, vjp_lower = jax.vjp(lambda lo: _forward(lo, X), lower)
        g_up, G = jax.grad(lambda up, h: _loss(_forward(up, h), Y, loss), (0, 1))(upper, h)
        if method == "backprop":
            (g_low,) = vjp_lower(G)
            g_sg = jax.tree.map(jnp.zeros_like, sgp)
        else:
            # The SG regresses onto the per-point ∂L_i/∂h_i with the core's regression
            # (sgjax.sgmodule.regress: mean_i ‖SG(h_i, y_i) − t_i‖², target held).
            reg = sgmodule.regress(_sg_apply, sgp, h, Y, n * G)
            g_sg = reg.grad_params
            (g_low,) = vjp_lower(reg.s / n)
        updates, state = opt.update((g_low, g_up, g_sg), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
    lower, upper, _ = params
    final = _loss(_forward(upper, _forward(lower, X)), Y, loss)
    Xb = jnp.concatenate([X, jnp.ones((n, 1))], axis=1)
    ols = _loss(Xb @ jnp.linalg.solve(Xb.T @ Xb, Xb.T @ Y), Y, "mse")
    return jnp.array([final, ols])


@functools.cache
def _runner(model: str, loss: str, method: str, steps: int):
    fn = functools.partial(_train, model=model, loss=loss, method=method, steps=steps)
    return jax.jit(jax.vmap(fn))


#: The gap table of the last :func:`table2` call (``sgjax verify`` prints it).
LAST_TABLE: dict[tuple[str, str, str], dict[str, float]] = {}

#: Adam learning rates per model (cosine-decayed to 1e-3 of this over the run).
LR = {"shallow": 1e-2, "deep": 1e-3}

#: Cosine decay per loss. MSE: decayed, because a fixed rate leaves Adam on a noise
#: floor of ~1e-3 in the loss, which would swamp the gaps of ≤ 4e-5 the paper reports
#: (the claim is that SG reaches the optimum). Log loss: the fixed rate of item 8's
#: protocol (the gap on separable data depends on the budget: backprop's loss keeps
#: falling towards 0; a decayed rate shrinks both and the gap with them).
DECAY = {"mse": True, "log": False}

#: Budgets (full-batch Adam steps) per model; a key ``model + k`` overrides it for that
#: input size. The shallow k = 100 cells (1000 points, the costliest part of
#: ``--thorough``) get 5000: every claim there but the sigmoid-SG ratio (−0.002 at 5000
#: steps, bound 0.1) is harder to pass with fewer steps (MSE:
#: the gap to the exact least-squares optimum; random labels: the gap to backprop
#: must be ≤ 1e-4; separable data: the gap grows with the budget, backprop's loss
#: keeps falling), and their negative controls easier to pass, so a shorter run can
#: only turn rows red. At 5000 steps (4 datasets per cell, seed 1) the shallow k = 100
#: gaps were MSE 0, log linear100 0.093, noisy100 0.0043, random100 4.6e-5 (paper
#: 0.086, 0.0044, 3e-5).
STEPS = {"shallow": 20_000, "deep": 5_000, "shallow100": 5_000}


def _parse(ds: str) -> tuple[str, int]:
    kind = ds.rstrip("0123456789")
    return kind, int(ds[len(kind) :])


def gap_table(
    key: jax.Array,
    instances: int,
    *,
    cells: tuple[tuple[str, str], ...] = tuple(PAPER_TABLE2),
    losses: tuple[str, ...] = ("mse", "log"),
    steps: dict[str, int] | None = None,
    sigmoid: bool = True,
    control: bool = True,
) -> dict[tuple[str, str, str], dict[str, float]]:
    """Mean gaps per (dataset, model, loss): keys ``linear``, ``sigmoid``, ``ols``, ``steps``.

    The reference is least squares (solved exactly) for MSE, shallow and deep, and
    backprop with the same budget and schedule for log loss. With ``control`` the
    linearly separable shallow MSE cells also run a label-free SG ``hA + C`` (key
    ``nolabel``). Cells with the same shapes (all k = 2 datasets of one model) run in one
    vmapped call per method; the control and the sigmoid SG run only on the linearly
    separable cells, where they are judged.
    ``steps`` maps the model ("shallow"/"deep"), or model and k ("shallow100"), to
    the Adam budget (see :data:`STEPS`).
    """
    steps = {**STEPS, **(steps or {})}
    g = rng(key)
    # Draw every cell's datasets and initial networks; then group cells by shape.
    data = {}
    for ds, model in cells:
        kind, k = _parse(ds)
        X, Y = make_dataset(g, kind, k, instances)
        data[(ds, model)] = (_init_net(g, k, model, instances), X, Y)
    groups: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for ds, model in cells:
        groups.setdefault((_parse(ds)[1], model), []).append((ds, model))
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for (k, model), members in groups.items():
        T = steps.get(f"{model}{k}", steps[model])
        for loss in losses:
            # Each method runs only on the cells that use it (one vmapped call each):
            # the label-free control and the sigmoid SG on the linearly separable cells.
            want = {"linear": members}
            if loss == "log":
                want["backprop"] = members
            sep = [c for c in members if c[0].startswith("linear")]
            if control and loss == "mse" and model == "shallow" and sep:
                want["nolabel"] = sep
            if sigmoid and loss == "log" and sep:
                want["sigmoid"] = sep
            res: dict[tuple[str, str], dict[str, np.ndarray]] = {c: {} for c in members}
            for method, cs in want.items():
                layers, X, Y = (
                    jax.tree.map(lambda *a: np.concatenate(a), *[data[c][i] for c in cs])
                    for i in range(3)
                )
                r = np.asarray(_runner(model, loss, method, T)(layers, X, Y))
                for i, c in enumerate(cs):
                    res[c][method] = r[i * instances : (i + 1) * instances]
            for c in members:
                rc = res[c]
                lin, ols = rc["linear"][:, 0], rc["linear"][:, 1]
                # MSE: the optimum is least squares (solved exactly), shallow and deep.
                base = rc["backprop"][:, 0] if loss == "log" else ols
                row = {
                    "linear": float(np.mean(lin - base)),
                    "ols": float(np.mean(lin - ols)) if loss == "mse" else float("nan"),
                    "steps": T,
                }
                if "nolabel" in rc:
                    row["nolabel"] = float(np.mean(rc["nolabel"][:, 0] - ols))
                if "sigmoid" in rc:
                    row["sigmoid"] = float(np.mean(rc["sigmoid"][:, 0] - base))
                out[(c[0], c[1], loss)] = row
    return out


def format_table(table: dict[tuple[str, str, str], dict[str, float]]) -> str:
    """Our gaps beside the paper's Table 2 (markdown)."""
    lines = [
        "| dataset | model | MSE ours | MSE paper | log ours | log paper | log, sigmoid SG |",
        "|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(d, m) for d, m, _ in table}, key=list(PAPER_TABLE2).index)
    for ds, model in cells:
        paper = PAPER_TABLE2[(ds, model)]
        mse = table.get((ds, model, "mse"), {})
        log = table.get((ds, model, "log"), {})
        sig = log.get("sigmoid")
        lines.append(
            f"| {ds} | {model} | {mse.get('linear', float('nan')):.5f} | {paper[0]:.5f} | "
            f"{log.get('linear', float('nan')):.5f} | {paper[1]:.5f} | "
            f"{'' if sig is None else f'{sig:.5f}'} |"
        )
    return "\n".join(lines)


@x64
def table2(
    key: jax.Array,
    instances: int,
    *,
    steps: dict[str, int] | None = None,
    cells: tuple[tuple[str, str], ...] = tuple(PAPER_TABLE2),
) -> list[Claim]:
    """Items 7–10 on ``instances`` datasets per cell, plus the negative control."""
    t = gap_table(key, instances, steps=steps, cells=cells)
    LAST_TABLE.clear()
    LAST_TABLE.update(t)
    n = instances
    mse = {c: v["linear"] for c, v in t.items() if c[2] == "mse"}
    sep = {c: v for c, v in t.items() if c[2] == "log" and c[0].startswith("linear")}
    rnd = {c: v["linear"] for c, v in t.items() if c[2] == "log" and c[0].startswith("random")}

    def fmt(d: dict) -> str:
        return ", ".join(f"{c[0]}/{c[1]}={v:.2g}" for c, v in d.items())

    claims = []
    if mse:
        claims.append(
            at_most(
                "table2/MSE-gaps≈0",
                "Table 2",
                max(abs(v) for v in mse.values()),
                1e-4,
                n * len(mse),
                "max |gap to least squares| over cells (paper ≤ 4e-5): " + fmt(mse),
            )
        )
    nolabel = {c: v["nolabel"] for c, v in t.items() if "nolabel" in v}
    if nolabel:
        claims.append(
            control(
                at_most(
                    "table2/MSE-gaps≈0/no-label-SG",
                    "Table 2",
                    max(abs(v) for v in nolabel.values()),
                    1e-4,
                    n * len(nolabel),
                    "max |gap to least squares| with SG hA + C: " + fmt(nolabel),
                ),
                "label-free SG (cannot represent p − y), same data and budget",
            )
        )
    for c, v in sep.items():
        thr = 5e-3 if c[0] == "linear2" else 0.03
        paper = PAPER_TABLE2[(c[0], c[1])][1]
        claims.append(
            at_least(
                f"table2/log-gap/{c[0]}",
                "Table 2",
                v["linear"],
                thr,
                n,
                f"mean gap, linear SG (paper {paper}); {v['steps']} Adam steps",
            )
        )
        if "sigmoid" in v:
            claims.append(
                at_most(
                    f"table2/sigmoid-SG/{c[0]}",
                    "§3 (footnote 3)",
                    v["sigmoid"] / v["linear"],
                    0.1,
                    n,
                    f"sigmoid-SG gap / linear-SG gap: {v['sigmoid']:.2g} / {v['linear']:.2g}",
                )
            )
        # Control: the gap is a property of *separable* data (the log-loss gradient's
        # tail σ(p) − y, which a linear SG cannot follow as p grows). On noisy labels
        # of the same linear rule (not separable: the optimum is finite) it must not
        # show at this threshold. (Random labels would add nothing: the claim
        # `table2/random-labels-log≈0` already bounds their gap by 1e-4.) No claim
        # judges the noisy cells at this threshold; the bold-cell finding uses paper/4.
        noisy_c = ("noisy" + c[0][len("linear") :], c[1], "log")
        if noisy_c in t:
            claims.append(
                control(
                    at_least(f"table2/log-gap/{noisy_c[0]}/{noisy_c[1]}", "Table 2",
                             t[noisy_c]["linear"], thr, n, f"mean gap, linear SG, noisy "
                             f"labels (not separable); threshold of {c[0]}"),
                    "noisy labels of the same linear rule (not separable): the "
                    "separable-data gap must not show",
                )
            )  # fmt: skip
    if rnd:
        claims.append(
            at_most(
                "table2/random-labels-log≈0",
                "Table 2",
                max(abs(v) for v in rnd.values()),
                1e-4,
                n * len(rnd),
                "max |gap| (paper ≤ 4e-5): " + fmt(rnd),
            )
        )
    # The paper's bold noisy cells: "converged to a different solution". Judged as
    # findings: the gap depends on the (unstated) budget.
    for c, v in t.items():
        paper = PAPER_TABLE2.get((c[0], c[1]), (0.0, 0.0))[1]
        if c[2] == "log" and c[0].startswith("noisy") and paper >= 1e-4:
            claims.append(
                finding(
                    at_least(f"table2/log-gap/{c[0]}/{c[1]}(bold)", "Table 2", v["linear"],
                             paper / 4, n, f"mean gap (paper {paper}, bold); {v['steps']} "
                             "Adam steps; threshold paper/4"),
                    "reproduced" if v["linear"] >= paper / 4 else
                    "not reproduced at this budget",
                )
            )  # fmt: skip
    return claims
