"""``sgjax bench --compare BEFORE.json``: the change of every figure against an earlier run.

A review sees a regression as a row: the figure, its value before and after, and the
ratio after / before. Only figures present in both reports are compared (an older report
may lack a newer row, e.g. the batch-1024 step rows); the rows missing on either side are
listed by name, so that nothing disappears silently.

Example:
    >>> before = {"step": {"rules": [{"rule": "sg", "batch": 256, "median_s": 0.008,
    ...                               "frac_of_peak": 0.5, "first_call_cpu_s": 1.5}]}}
    >>> after = {"step": {"rules": [{"rule": "sg", "batch": 256, "median_s": 0.006,
    ...                              "frac_of_peak": 0.6, "first_call_cpu_s": 1.0}]}}
    >>> rows = compare(before, after)
    >>> for r in rows["rows"]:
    ...     print(r["figure"], round(r["ratio"], 2), r["better"])
    step sg: step ms 0.75 True
    step sg: % of matmul peak 1.2 True
    step sg: 1st call cpu s 0.67 True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: (key in a step row, label, scale to the printed unit, True if larger is better)
_STEP_FIGURES = (
    ("median_s", "step ms", 1e3, False),
    ("frac_of_peak", "% of matmul peak", 100.0, True),
    ("grads_frac_of_peak", "gradients alone, % of peak", 100.0, True),
    ("first_call_cpu_s", "1st call cpu s", 1.0, False),
)


def _step_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(r.get("rules", []))
    large = r.get("large_batch")
    if large:
        rows += large.get("rules", [])
    return rows


def figures(report: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """Every compared figure of a report: ``{name: (value, larger_is_better)}``.

    Example:
        >>> f = figures({"theory": {"speedup": 2.0, "vmap_per_s": 200.0, "loop_per_s": 1.0}})
        >>> f["theory: vmap speed-up over the loop"]
        (2.0, True)
    """
    out: dict[str, tuple[float, bool]] = {}
    step = report.get("step")
    if isinstance(step, dict):
        base = (step.get("rules") or [{}])[0].get("batch", 256)
        if "peak" in step:
            out["step: matmul peak GFLOP/s"] = (float(step["peak"]["gflops"]), True)
        for row in _step_rows(step):
            batch = row.get("batch", base)
            name = row["rule"] if batch == base else f"{row['rule']} @ batch {batch}"
            for key, label, scale, up in _STEP_FIGURES:
                if row.get(key) is not None:
                    out[f"step {name}: {label}"] = (float(row[key]) * scale, up)
    theory = report.get("theory")
    if isinstance(theory, dict) and "speedup" in theory:
        out["theory: vmap speed-up over the loop"] = (float(theory["speedup"]), True)
        out["theory: vmapped instances/s"] = (float(theory["vmap_per_s"]), True)
    memory = report.get("memory")
    if isinstance(memory, dict):
        for row in memory.get("rows", []):
            out[f"memory {row['rule']}: step peak MiB"] = (
                row["step"]["peak_bytes"] / 2**20,
                False,
            )
            out[f"memory {row['rule']}: gradients scratch MiB"] = (
                row["gradients"]["temp_bytes"] / 2**20,
                False,
            )
    recurrent = report.get("recurrent")
    if isinstance(recurrent, dict):
        for k, v in recurrent.get("seconds_per_char", {}).items():
            out[f"recurrent {k}: µs / char"] = (float(v) * 1e6, False)
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Rows ``{figure, before, after, ratio, better}`` for the figures both reports hold.

    ``ratio`` is after / before (``None`` when before is 0); ``better`` says whether the
    change goes the good way (``None`` when unchanged). Also ``only_before`` /
    ``only_after``: the figure names one report lacks.
    """
    fb, fa = figures(before), figures(after)
    rows = []
    for name, (a, up) in fa.items():
        if name not in fb:
            continue
        b = fb[name][0]
        ratio = a / b if b else None  # no ratio to a zero (strict JSON has no inf)
        better = None if a == b else (a > b) == up
        rows.append({"figure": name, "before": b, "after": a, "ratio": ratio, "better": better})
    return {
        "rows": rows,
        "only_before": [n for n in fb if n not in fa],
        "only_after": [n for n in fa if n not in fb],
    }


def load_report(path: str) -> dict[str, Any]:
    """Read a ``sgjax bench --json`` report for ``--compare``; a clear error if it is not one."""
    from sgjax.infra import jsonio

    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"--compare: {path!r} is not a file (expected a `sgjax bench --json` report)"
        )
    try:
        report = jsonio.loads_strict(p.read_text())
    except ValueError as e:
        raise ValueError(f"--compare: {path!r} is not strict JSON: {e}") from None
    if not isinstance(report, dict) or "meta" not in report:
        raise ValueError(
            f"--compare: {path!r} is not a `sgjax bench --json` report (no 'meta' entry)"
        )
    return report


def format_compare(c: dict[str, Any], label: str = "before") -> str:
    """The comparison as a table: figure, before, after, ratio and a mark for the direction."""
    lines = [
        f"\nChange against {label} (ratio = after / before; + better, - worse)",
        f"{'figure':48s} {'before':>9s} {'after':>9s} {'ratio':>7s}",
    ]
    for row in c["rows"]:
        mark = {True: "+", False: "-", None: " "}[row["better"]]
        ratio = f"{row['ratio']:6.2f}x" if row["ratio"] is not None else f"{'-':>7s}"
        lines.append(f"{row['figure']:48s} {row['before']:9.3g} {row['after']:9.3g} {ratio} {mark}")
    if c["only_before"]:
        lines.append(f"only in {label}: {', '.join(c['only_before'])}")
    if c["only_after"]:
        lines.append(f"not in {label}: {', '.join(c['only_after'])}")
    return "\n".join(lines)
