"""``sgjax verify``: run the claim registry, print the table, exit 1 on any failure.

Every row has a strength, ``evidence`` (it could fail if the paper or our
implementation were wrong) or ``identity`` (true by construction: a sanity check),
and is one of three kinds (:mod:`theory.record`):

* claim: a statement of the paper; "pass" or "FAIL".
* control: the same check with the paper's assumption broken on purpose; a success
  when it *fails* ("control: failed as expected"), an error when it passes.
* finding: a statement that is not the paper's (e.g. a step the digest read into a
  proof) that we check and report, "finding: refuted" or "finding: holds"; it never
  changes the exit code, but it is always printed and written to ``--json``.

The exit code is 1 when a claim fails or a control passes, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from theory.record import Claim


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument(
        "--instances", type=int, default=None, help="random instances per claim family"
    )
    parser.add_argument(
        "--claims",
        type=lambda s: [c for c in s.split(",") if c],
        default=None,
        help="comma-separated subset of claim families (default: all); see --list",
    )
    parser.add_argument(
        "--thorough",
        action="store_true",
        help="≥ 1000 instances where cheap (see --list) and every Table 2 cell, k = 100 "
        "included (slow: ~30 min on 2 cores)",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Strength: evidence (could fail if the paper or sgjax were wrong) or identity (true\n"
        "by construction; a sanity check).\n"
        "Row kinds: claim (a statement of the paper: pass/FAIL), control (the check with "
        "the\npaper's assumption broken: must fail), finding (a statement that is not the "
        "paper's,\ne.g. a step read into a proof: reported as holds/refuted, never changes "
        "the exit code).\nExit code 1 when a claim fails or a control passes."
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write the records here")
    parser.add_argument("--list", action="store_true", help="list the claim families and exit")


def _verdict(c: Claim) -> str:
    if c.kind == "finding":
        return "finding: holds" if c.passed else "FINDING: refuted"
    if c.expect_pass:
        return "pass" if c.passed else "FAIL"
    return "control: failed as expected" if not c.passed else "CONTROL PASSED (check blind)"


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def format_records(records: list[Claim]) -> str:
    """The verify table: one row per record.

    Example:
        >>> from theory.record import at_most, control
        >>> print(format_records([at_most("a/b", "Prop. 1", 1e-12, 1e-8, 4)]))
        claim  reference  strength  measured  target   n  verdict
        -----  ---------  --------  --------  -------  -  -------
        a/b    Prop. 1    evidence  1e-12     ≤ 1e-08  4  pass
    """
    rows = [("claim", "reference", "strength", "measured", "target", "n", "verdict")]
    rows += [
        (c.name, c.reference, c.strength, _fmt(c.measured), c.target, str(c.instances),
         _verdict(c))
        for c in records
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import jax

    from theory import table2
    from theory.registry import CLAIMS, DEFAULT_INSTANCES, THOROUGH_INSTANCES

    if args.list:
        for name in CLAIMS:
            print(
                f"{name}  (instances: default {DEFAULT_INSTANCES[name]}, "
                f"--thorough {THOROUGH_INSTANCES[name]})"
            )
        return 0
    names = args.claims or list(CLAIMS)
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        print(f"unknown claim families {unknown}; known: {', '.join(CLAIMS)}", file=sys.stderr)
        return 2
    key = jax.random.key(args.seed)
    records: list[Claim] = []
    t_all = time.perf_counter()
    for i, name in enumerate(names):
        n = args.instances or (THOROUGH_INSTANCES if args.thorough else DEFAULT_INSTANCES)[name]
        t0 = time.perf_counter()
        recs = CLAIMS[name](jax.random.fold_in(key, i), n, args.thorough)
        records += recs
        print(f"[{name}: {len(recs)} checks, {time.perf_counter() - t0:.1f}s]", file=sys.stderr)
    print(format_records(records))
    if "table2" in names and table2.LAST_TABLE:
        print("\nTable 2, loss gap SG − reference (ours: mean over instances):")
        print(table2.format_table(table2.LAST_TABLE))
    bad = [c for c in records if not c.ok]
    n_ctrl = sum(c.kind == "control" for c in records)
    findings = [c for c in records if c.kind == "finding"]
    n_ev = sum(c.strength == "evidence" for c in records)
    print(
        f"\n{len(records) - len(bad)}/{len(records)} as expected ({n_ctrl} negative controls, "
        f"{len(findings)} findings, {sum(not c.passed for c in findings)} refuted; "
        f"{n_ev} evidence rows, {len(records) - n_ev} identity rows); "
        f"{time.perf_counter() - t_all:.1f}s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([c.to_json() for c in records], f, indent=1, ensure_ascii=False)
    return 1 if bad else 0
