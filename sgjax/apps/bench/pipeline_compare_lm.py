"""The pipeline comparison (:mod:`sgjax.apps.bench.pipeline_compare`) on a character-level
transformer LM on Tiny Shakespeare (``scripts/bench_pipeline.py --model transformer``).

The same contenders as on MNIST, on the transformer of the one-device study
(:mod:`sgjax.apps.experiments.transformer_lm`): its ``medium`` settings (4 pre-LN blocks,
width 128, 4 heads, context 64, batch 16, Adam 1e-3; ``smoke`` for ``--quick``), its data
(:func:`~sgjax.recurrent.tasks.load_tinyshakespeare`: first 90 % training, last 10 %
validation; windows of one-hot characters and flattened one-hot next characters), its
training loss (``summed_xent``: the cross-entropy summed over a window's positions) and
its cDNI (``rule_for("cdni")``: :func:`sgjax.transformer.positionwise` conditioned on the
next characters, the SG optimiser the run's).

The network is cut into one contiguous group per process, balanced by block count
(:func:`cuts`): the embedding goes with the first group, the readout with the last, both
far cheaper than a block. Every contender trains the grouped network; the SG contenders
put their module at each cut. Differences from the study, named: no gradient clipping
(the pipelines would clip per stage where one device clips globally), training windows
are a fixed set of ``train_windows`` evenly spread over the training text (the pipeline
loop shuffles a fixed array), and the validation sample is ``eval_windows`` windows.

The metric is the validation loss in bits per character (:func:`bpc`); the time to a
target BPC is read off the curve (:func:`time_to_bpc`). The runs do not stop at the
target: each trains its whole budget, so the final BPC is at equal training time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from sgjax.apps.experiments.transformer_lm_settings import LN2, SCALES

#: the scale of the full comparison and of ``--quick`` (keys of ``SCALES``)
FULL, QUICK = "medium", "smoke"
MODELS = ("mlp", "transformer")


def lm_config(scale: str, *, train_windows: int, eval_windows: int) -> dict[str, Any]:
    """The transformer and data of a scale of the one-device study, for the run rows.

    Example:
        >>> lm_config("medium", train_windows=8192, eval_windows=64)["width"]
        128
    """
    cfg = SCALES[scale]
    for name, v in (("train_windows", train_windows), ("eval_windows", eval_windows)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"lm_config: `{name}` must be an int ≥ 1, got {v!r}")
    return {
        "scale": scale,
        **{k: cfg[k] for k in ("context", "width", "blocks", "heads")},
        "train_windows": int(train_windows),
        "eval_windows": int(eval_windows),
    }


def cuts(blocks: int, processes: int) -> list[int]:
    """The boundaries of :func:`sgjax.nets.group` that cut ``char_lm(blocks=blocks)``
    (stages: embedding, ``blocks`` blocks, readout) into ``processes`` contiguous groups
    of ``blocks // processes`` or one more blocks each (boundary ``j + 1`` is the output
    of block ``j``).

    Example:
        >>> cuts(4, 2), cuts(4, 4), cuts(5, 2)
        ([3], [2, 3, 4], [3])
    """
    if not 2 <= processes <= blocks:
        raise ValueError(
            f"cuts: `processes` must be in 2..{blocks} (at least one block per process), "
            f"got {processes}"
        )
    return [1 + (g * blocks) // processes for g in range(1, processes)]


def bpc(loss_per_window: float, context: int) -> float:
    """Bits per character of a summed-over-the-window loss in nats (the training loss's
    unit, ``summed_xent``, which the pipeline loop's evaluation reports).

    Example:
        >>> round(bpc(64 * math.log(2.0) * 3.0, 64), 6)
        3.0
    """
    return loss_per_window / context / LN2


def time_to_bpc(
    curve: Sequence[dict[str, float]], target: float, context: int, charge: float
) -> float | None:
    """Seconds of training to the first evaluation at or below ``target`` validation BPC
    (``test_loss`` of the curve, nats per window), plus ``charge`` (the compiling first
    call at the measured rate); None when no evaluation reached it."""
    for point in curve:
        if bpc(point["test_loss"], context) <= target:
            return point["seconds"] + charge
    return None


def arg_problem(
    model: str,
    *,
    target: float | None,
    processes: int,
    sizes_given: bool,
    sweep_given: bool,
) -> str | None:
    """What is wrong with this ``--model`` and its flags, as ``"--flag: expected …, got
    …"`` (the script's ``p.error``), or None. ``target`` None: the model's default.

    Example:
        >>> arg_problem("transformer", target=0.95, processes=2, sizes_given=False,
        ...             sweep_given=False)
        '--target: with --model transformer, a validation BPC: expected a number > 1, got 0.95'
    """
    if model not in MODELS:
        return f"--model: expected one of {', '.join(MODELS)}, got {model!r}"
    if model == "mlp":
        if target is not None and not 0.0 < target <= 1.0:
            return f"--target: with --model mlp, a test accuracy: expected (0, 1], got {target:g}"
        return None
    if target is not None and not (math.isfinite(target) and target > 1.0):
        return (
            f"--target: with --model transformer, a validation BPC: expected a number > 1, "
            f"got {target:g}"
        )
    blocks = SCALES[FULL]["blocks"]
    if not 2 <= processes <= blocks:
        return (
            f"--processes: with --model transformer, expected 2..{blocks} (one group of "
            f"blocks per process, {blocks} blocks), got {processes}"
        )
    if sizes_given:
        return "--sizes: expected none with --model transformer (the MLP's layers), got one"
    if sweep_given:
        return "--sweep: expected none with --model transformer (an MLP sweep), got one"
    return None


def problem(run: dict[str, Any], data_dir: str | None, cache: dict[str, Any]) -> tuple:
    """``(net, rule, loss, x_train, y_train, x_test, y_test)`` of a transformer run row
    (the data is read once per process, into ``cache``)."""
    from sgjax import nets
    from sgjax import transformer as tf
    from sgjax.apps.experiments import transformer_lm as lm
    from sgjax.recurrent import tasks

    cfg = run["lm"]
    T = cfg["context"]
    key = f"lm-{T}-{cfg['train_windows']}-{cfg['eval_windows']}"
    if key not in cache:
        text = tasks.load_tinyshakespeare(data_dir)
        V = len(text.vocab)
        xs = lm.fixed_starts(len(text.train), cfg["train_windows"], T)
        vs = lm.fixed_starts(len(text.valid), cfg["eval_windows"], T)
        cache[key] = (V, *lm.windows(text.train, xs, T, V), *lm.windows(text.valid, vs, T, V))
    V, x_train, y_train, x_test, y_test = cache[key]
    net = tf.char_lm(V, context=T, width=cfg["width"], blocks=cfg["blocks"], heads=cfg["heads"])
    net = nets.group(net, cuts(cfg["blocks"], run["stages"]))
    # cDNI as the study builds it; "all" on the grouped network: a module at each cut
    rule = lm.rule_for("cdni" if run["method"] in ("sg", "sg-pipeline") else "backprop",
                       {"sg_at": "all"})  # fmt: skip
    return net, rule, lm.summed_xent, x_train, y_train, x_test, y_test


def table_head(r: dict[str, Any]) -> list[str]:
    """The transformer's main table: title and header lines (tokens/s, seconds to the
    target BPC, final validation BPC; the rows are the MLP's, scaled by the context)."""
    cfg = r["config"]
    lm, n, M = cfg["lm"], cfg["processes"], cfg["micro_batches"]
    T = lm["context"]
    return [
        f"Tiny Shakespeare, char transformer ({lm['blocks']} blocks, width {lm['width']}, "
        f"{lm['heads']} heads, context {T}) in {n} stages cut at {cuts(lm['blocks'], n)}, "
        f"B = {cfg['batch_size']}, Adam {cfg['lr']:g}, seed {cfg.get('seed', 0)}, "
        f"GPipe M = {M}; validation: {lm['eval_windows']} fixed windows; "
        f"{cfg['seconds']:g} s each (no early stop)",
        "",
        f"| contender | processes × cores | tokens/s | × backprop 1 core | × sg 1 core | "
        f"s to {cfg['target']:g} val BPC | micro-batches then | final val BPC |",
        "|---|---|---|---|---|---|---|---|",
    ]
