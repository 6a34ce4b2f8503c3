"""``sgjax verify``: run the claim registry, print the table, exit 1 on any failure.

Every row has a strength, ``evidence`` (it could fail if the paper or our
implementation were wrong) or ``identity`` (true by construction: a sanity check),
says whether it runs sgjax library code (column ``library``; counted in the summary),
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
import math
import sys
import time

from theory.record import Claim


def _instances(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--instances must be an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--instances must be an integer ≥ 1, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument(
        "--instances", type=_instances, default=None, help="random instances per claim family"
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
        "by construction; a sanity check). Library: yes when the row's figure comes from\n"
        "sgjax library code (rules, estimators, interface), no for hand-written models.\n"
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
        claim  reference  strength  library  measured  target   n  verdict
        -----  ---------  --------  -------  --------  -------  -  -------
        a/b    Prop. 1    evidence  no       1e-12     ≤ 1e-08  4  pass
    """
    rows = [("claim", "reference", "strength", "library", "measured", "target", "n", "verdict")]
    rows += [
        (c.name, c.reference, c.strength, "yes" if c.runs_library else "no", _fmt(c.measured),
         c.target, str(c.instances), _verdict(c))
        for c in records
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: ``--list``: one line per claim family and its rough cost in a default run.
_ABOUT = {
    "linear-sg-exact": (
        "§2.1: a linear SG represents ∂L/∂h exactly (affine upper net, MSE)",
        "light",
    ),
    "prop1": ("Prop. 1: backprop's critical points are critical points of the SG system", "medium"),
    "appendix-a": ("Appendix A: SG creates new critical points (scalar two-layer model)", "light"),
    "thm1": ("Theorem 1: linear regression with a linear SG between p and L converges", "medium"),
    "thm1-label": ("Theorem 1 with an SG that does not see the label", "medium"),
    "prop2-cosine": ("Prop. 2's cosine lemma: ‖e‖ ≤ r‖g‖ keeps cos(g, g + e) ≥ δ", "light"),
    "prop2-error": ("Prop. 2: ε-tracking synthetic gradients give convergence", "light"),
    "cor1": ("Corollary 1: deep linear net, linear SG, gated step", "light"),
    "implied-loss": ("§1.4: the loss a linear SG implies (the symmetric part of A)", "light"),
    "table1": ("Table 1: each rule's δ̂ is ∂L_SG/∂h of its (SG, target, L_SG) triple", "heavy"),
    "table2": ("Table 2: SG − backprop loss gap on artificial data", "heavy"),
    "sg-prop-alone": ("§3 footnote: the SG + prop signal alone (paper.md §6 item 22)", "light"),
    "library-sg": (
        "sgjax's SG modules (every estimator, target kind, prop, placement, the interface): "
        "parameter gradients and signals vs a hand-written reference",
        "medium",
    ),
}
_COST_NOTE = (
    "share of a default `sgjax verify` run (measured 2026-11-29: 661 s in all on a shared "
    "2-core CPU under load): light < 5 %, medium 5-20 %, heavy > 20 % (table2 36 %, table1 "
    "30 %, thm1 16 %)"
)


def run(args: argparse.Namespace) -> int:
    import jax

    from theory import table2
    from theory.registry import CLAIMS, DEFAULT_INSTANCES, THOROUGH_INSTANCES

    if args.list:
        for name in CLAIMS:
            about, cost = _ABOUT.get(name, ("", "?"))
            print(
                f"{name:16s} {about}  [instances: default {DEFAULT_INSTANCES[name]}, "
                f"--thorough {THOROUGH_INSTANCES[name]}; cost: {cost}]"
            )
        print(f"\ncost: {_COST_NOTE}")
        return 0
    names = args.claims or list(CLAIMS)
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        print(f"unknown claim families {unknown}; known: {', '.join(CLAIMS)}", file=sys.stderr)
        return 2
    if args.json:
        from sgjax.infra.jsonio import check_writable

        check_writable(args.json, name="--json")  # before the checks, not after
    key = jax.random.key(args.seed)
    records: list[Claim] = []
    t_all = time.perf_counter()
    for i, name in enumerate(names):
        n = (
            args.instances
            if args.instances is not None
            else (THOROUGH_INSTANCES if args.thorough else DEFAULT_INSTANCES)[name]
        )
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
    n_lib = sum(c.runs_library for c in records)
    print(
        f"\n{len(records) - len(bad)}/{len(records)} as expected ({n_ctrl} negative controls, "
        f"{len(findings)} findings, {sum(not c.passed for c in findings)} refuted; "
        f"{n_ev} evidence rows, {len(records) - n_ev} identity rows; "
        f"{n_lib} rows run sgjax library code); "
        f"{time.perf_counter() - t_all:.1f}s"
    )
    if args.json:
        from sgjax.infra.jsonio import write_or_keep  # strict JSON: inf/NaN as null, flagged

        write_or_keep(args.json, [c.to_json() for c in records], name="--json")
    return 1 if bad else 0
