"""Mutation harness: plant realistic bugs in a copy of sgjax/ and see what catches them.

Each mutant replaces one exact string in a copy of ``sgjax/rules.py``,
``estimators.py``, ``interface.py``, ``sweep.py``, ``losses.py`` or ``nets.py``, then runs selected
``sgjax verify`` rows and test files against the copy (``PYTHONPATH`` = the copy), and
reports which verify rows and which tests turn red (pytest stops at the first red test,
``-x``: the table lists the first). A mutant that turns nothing red is a defect of the
checks.

    python scripts/mutations.py                  # every mutant, table on stdout
    python scripts/mutations.py --out docs/results/mutations.md
    python scripts/mutations.py --only mse-grad-sign,kickback-mean
    python scripts/mutations.py --check          # patterns still apply? (fast; CI)
    python scripts/mutations.py --baseline --json docs/results/mutations.json
    python scripts/mutations.py --doc docs/results/mutations.json   # docs/theory.md section

Too slow for CI (a verify subset and a test file per mutant); ``tests/test_mutations.py``
runs ``--check`` so that a pattern that no longer matches the sources fails loudly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to sgjax/
    old: str
    new: str
    what: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "mse-grad-sign",
        "losses.py",
        "    return p - as_target(y, p.shape[-1], p.dtype)",
        "    return as_target(y, p.shape[-1], p.dtype) - p",
        "wrong sign: MSE output gradient y − p",
    ),
    Mutant(
        "mse-grad-scale",
        "losses.py",
        "    return p - as_target(y, p.shape[-1], p.dtype)",
        "    return 2.0 * (p - as_target(y, p.shape[-1], p.dtype))",
        "wrong scale: MSE output gradient 2(p − y) for ½‖p − y‖²",
    ),
    Mutant(
        "grads-sum-not-mean",
        "sweep.py",
        "grads[b - 1] = jax.tree.map(lambda t: t / batch, g_theta)",
        "grads[b - 1] = jax.tree.map(lambda t: t, g_theta)",
        "mean/sum mix-up: parameter gradients of the summed loss",
    ),
    Mutant(
        "kickback-mean",
        "rules.py",
        "jnp.broadcast_to(jnp.sum(e_flat, -1, keepdims=True)",
        "jnp.broadcast_to(jnp.mean(e_flat, -1, keepdims=True)",
        "mean/sum mix-up: Kickback sends mean_k ∂ℓ/∂p_k",
    ),
    Mutant(
        "dfa-sign",
        "rules.py",
        "d = e_flat @ state.fixed[b - 1]",
        "d = -e_flat @ state.fixed[b - 1]",
        "wrong sign: DFA sends −(∂ℓ/∂p)B",
    ),
    Mutant(
        "dfa-ignores-B",
        "rules.py",
        "return RuleState(fixed=_check_matrices(name, B, shapes(net)))",
        "return RuleState(fixed=_draw(key, shapes(net), _param_dtype(net)))",
        "wrong feedback matrix: DFA draws its own B, ignoring the one supplied",
    ),
    Mutant(
        "sg-residual-sign",
        "sgmodule.py",
        "    r = s.astype(wide) - t.astype(wide)\n",
        "    r = t.astype(wide) - s.astype(wide)\n",
        "wrong sign: SG regression residual t − s (module ascends its loss)",
    ),
    Mutant(
        "sg-prop-no-batch",
        "rules.py",
        "delta = delta + alpha * h.shape[0] * reg.grad_h",
        "delta = delta + alpha * reg.grad_h",
        "wrong scale: SG + prop term of the batch-mean loss, not per example",
    ),
    Mutant(
        "sg-grad-half",
        "sgmodule.py",
        "g_theta, g_h = module_vjp(cot.astype(s.dtype))",
        "g_theta, g_h = module_vjp((0.5 * cot).astype(s.dtype))",
        "wrong scale: ∂‖t − s‖² taken as (s − t), factor 2 dropped",
    ),
    Mutant(
        "sg-middle-off-by-one",
        "rule_checks.py",
        "boundaries = ((depth + 1) // 2,)",
        "boundaries = (depth // 2,)",
        "off-by-one: the 'middle' SG one boundary too low",
    ),
    Mutant(
        "estimator-A-transposed",
        "estimators.py",
        '            out = out + _flat(h) @ theta["A"]\n',
        '            out = out + _flat(h) @ theta["A"].T\n',
        "wrong matrix: SG = hAᵀ + yB + C",
    ),
    Mutant(
        "estimator-drops-label",
        "estimators.py",
        '            out = out + y.astype(out.dtype) @ theta["B"]\n'
        "        return out.reshape(h.shape)\n\n"
        "    return Estimator(init, apply, name, use_h, use_y)",
        '            out = out + 0 * y.astype(out.dtype) @ theta["B"]\n        return out.reshape('
        "h.shape)\n\n    return Estimator(init, apply, name, use_h, use_y)",
        "dropped label term: SG = hA + C although conditioned",
    ),
    Mutant(
        "dense-drops-bias",
        "nets.py",
        'h @ theta["W"] + theta["b"]',
        'h @ theta["W"]',
        "dropped term: dense stage without its bias",
    ),
    # Issue 25: bugs in the SG modules' own training path (what the module regresses
    # onto, which module gets which gradient, the prop term, the interface's scaling).
    Mutant(
        "sg-true-targets-bootstrap",
        "rules.py",
        't = g_true if targets == "true" else g',
        "t = g",
        'target choice: targets="true" silently regresses onto the bootstrapped target',
    ),
    Mutant(
        "sg-bias-not-trained",
        "estimators.py",
        'out = jnp.broadcast_to(theta["C"], (h.shape[0], theta["C"].shape[0]))',
        'out = jnp.broadcast_to(jax.lax.stop_gradient(theta["C"]), (h.shape[0], '
        'theta["C"].shape[0]))',
        "untrained parameter: the affine SG's bias C gets no gradient",
    ),
    Mutant(
        "sg-prop-scales-sg",
        "rules.py",
        "delta = delta + alpha * h.shape[0] * reg.grad_h",
        "delta = alpha * delta + h.shape[0] * reg.grad_h",
        "prop coefficient on the wrong term: α·SG + ∂ℓ_SG/∂h",
    ),
    Mutant(
        "sg-grads-wrong-module",
        "rules.py",
        "rule_grads = tuple(aux[b][0] for b in boundaries)",
        "rule_grads = tuple(aux[b][0] for b in reversed(boundaries))",
        "wrong module: each SG module receives another module's gradient",
    ),
    Mutant(
        "sg-loss-sum-not-mean",
        "sgmodule.py",
        "        loss = jnp.mean(per_example)\n",
        "        loss = jnp.sum(per_example)\n",
        "mean/sum mix-up: the reported SG loss summed over the batch",
    ),
    Mutant(
        "mlp-sg-ignores-label",
        "estimators.py",
        "z = jnp.concatenate([z, y.astype(z.dtype)], axis=-1)",
        "z = jnp.concatenate([z, 0 * y.astype(z.dtype)], axis=-1)",
        "context ignored for one estimator: the MLP SG drops the label",
    ),
    Mutant(
        "mlp-sg-hidden-frozen",
        "estimators.py",
        'z = activation(z @ layer["W"] + layer["b"])',
        'z = activation(z @ jax.lax.stop_gradient(layer["W"]) + layer["b"])',
        "untrained parameters: the MLP SG's hidden weights get no gradient",
    ),
    Mutant(
        "interface-target-unscaled",
        "interface.py",
        "t = jax.lax.stop_gradient(g).astype(wide) * cfg.scale",
        "t = jax.lax.stop_gradient(g).astype(wide)",
        "mean/sum mix-up: sg_interface regresses onto the cotangent g, not the per-example k·g",
    ),
    Mutant(
        "interface-prop-no-batch",
        "interface.py",
        "delta = delta + cfg.prop * cfg.scale * g_h.astype(wide)",
        "delta = delta + cfg.prop * g_h.astype(wide)",
        "wrong scale: sg_interface's prop term of the reduced loss, not per example",
    ),
    Mutant(
        "xent-drops-label",
        "losses.py",
        "return jax.nn.softmax(p, axis=-1) * jnp.sum(t, axis=-1, keepdims=True) - t",
        "return jax.nn.softmax(p, axis=-1) * jnp.sum(t, axis=-1, keepdims=True)",
        "dropped label term: cross-entropy output gradient softmax(p)",
    ),
)

#: What runs against each mutant: verify families (few instances) and test files
#: (``-m "not slow"``; pytest stops at the first red test).
VERIFY_CLAIMS = "library-sg,table1,implied-loss"
VERIFY_INSTANCES = "2"
TEST_FILES = ("tests/test_library_sg.py", "tests/test_rules.py")


def check_patterns(root: Path = ROOT) -> list[str]:
    """Problems with the patterns against the current sources (empty: all apply once).

    Example:
        >>> check_patterns()
        []
    """
    problems = []
    for m in MUTANTS:
        src = (root / "sgjax" / m.file).read_text(encoding="utf-8")
        n = src.count(m.old)
        if n != 1:
            problems.append(f"{m.name}: pattern found {n} times in sgjax/{m.file} (need 1)")
    return problems


def _failed_tests(output: str) -> list[str]:
    return sorted(set(re.findall(r"^FAILED (\S+)", output, flags=re.M)))


def run_mutant(
    m: Mutant | None, timeout: int, tests: tuple[str, ...] = TEST_FILES
) -> dict[str, object]:
    """Copy sgjax/, theory/, tests/ into a temp dir, plant ``m``, run verify + tests."""
    with tempfile.TemporaryDirectory(prefix="sgjax-mut-") as tmp:
        t = Path(tmp)
        for d in ("sgjax", "theory", "tests"):
            shutil.copytree(ROOT / d, t / d, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", t / "pyproject.toml")
        if m is not None:
            f = t / "sgjax" / m.file
            src = f.read_text(encoding="utf-8")
            if src.count(m.old) != 1:
                raise SystemExit(f"mutant {m.name}: pattern not found once in sgjax/{m.file}")
            f.write_text(src.replace(m.old, m.new), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(t), "JAX_PLATFORMS": "cpu"}
        out_json = t / "verify.json"
        t0 = time.perf_counter()
        v = subprocess.run(
            [sys.executable, "-m", "sgjax", "verify", "--claims", VERIFY_CLAIMS,
             "--instances", VERIFY_INSTANCES, "--json", str(out_json)],
            cwd=t, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if out_json.exists():
            recs = json.loads(out_json.read_text())
            red_rows = sorted({r["name"] for r in recs if not r["ok"]})
        else:  # verify crashed: every row it would have printed is red
            tail = (v.stderr or v.stdout).strip().splitlines()[-1:] or ["?"]
            red_rows = [f"(verify crashed: {tail[0][:80]})"]
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m",
             "not slow", *tests],
            cwd=t, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        red_tests = _failed_tests(p.stdout)
        if p.returncode not in (0, 1) and not red_tests:
            red_tests = [f"(pytest exit {p.returncode})"]
        return {
            "mutant": m.name if m else "(none)",
            "what": m.what if m else "the unmodified sources",
            "red_rows": red_rows,
            "red_tests": red_tests,
            "seconds": round(time.perf_counter() - t0, 1),
        }


def to_markdown(results: list[dict[str, object]]) -> str:
    lines = [
        "| mutant | planted bug | red `sgjax verify` rows | red tests | caught |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rows, tests = r["red_rows"], r["red_tests"]
        assert isinstance(rows, list) and isinstance(tests, list)
        caught = "yes" if rows and tests else ("verify only" if rows else
                                               "tests only" if tests else "**NO**")  # fmt: skip
        short = [s.split("::")[-1] for s in tests]
        lines.append(
            f"| {r['mutant']} | {r['what']} | {', '.join(rows) or '—'} | "
            f"{', '.join(short) or '—'} | {caught} |"
        )
    return "\n".join(lines)


THEORY_DOC = ROOT / "docs" / "theory.md"
DOC_BEGIN = "<!-- mutations:begin (generated by scripts/mutations.py --doc; do not edit) -->"
DOC_END = "<!-- mutations:end -->"


def red_by_row(results: list[dict[str, object]]) -> dict[str, list[str]]:
    """verify row -> the mutants that turned it red (measured; baseline excluded).

    Example:
        >>> red_by_row([{"mutant": "m", "red_rows": ["a/b"], "red_tests": []}])
        {'a/b': ['m']}
    """
    out: dict[str, list[str]] = {}
    for r in results:
        if r["mutant"] == "(none)":
            continue
        rows = r["red_rows"]
        assert isinstance(rows, list)
        for row in rows:
            out.setdefault(str(row), []).append(str(r["mutant"]))
    return {k: sorted(v) for k, v in sorted(out.items())}


def doc_section(results: list[dict[str, object]]) -> str:
    """The generated 'what turns it red' section of docs/theory.md (markdown)."""
    lines = [
        DOC_BEGIN,
        "",
        "| `sgjax verify` row | planted bugs that turn it red (measured) |",
        "|---|---|",
    ]
    for row, mutants in red_by_row(results).items():
        lines.append(f"| `{row}` | {', '.join(mutants)} |")
    missed = [str(r["mutant"]) for r in results if r["mutant"] != "(none)" and not r["red_rows"]]
    lines += [
        "",
        f"Mutants measured: {sum(r['mutant'] != '(none)' for r in results)}; turning no "
        f"verify row red: {', '.join(missed) or 'none'}.",
        "",
        DOC_END,
    ]
    return "\n".join(lines)


def splice_doc(text: str, results: list[dict[str, object]]) -> str:
    """``text`` with its generated section replaced by :func:`doc_section` of ``results``."""
    i, j = text.find(DOC_BEGIN), text.find(DOC_END)
    if i < 0 or j < i:
        raise SystemExit(f"docs/theory.md: no generated section ({DOC_BEGIN!r} ... {DOC_END!r})")
    return text[:i] + doc_section(results) + text[j + len(DOC_END) :]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check the patterns apply")
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument(
        "--json",
        default=None,
        help="write the measured results here (docs/theory.md's "
        "'what turns it red' is generated from them: --doc)",
    )
    ap.add_argument(
        "--doc",
        default=None,
        metavar="JSON",
        help="regenerate docs/theory.md's mutation section from these results and exit",
    )
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    ap.add_argument("--baseline", action="store_true", help="also run the unmodified sources")
    ap.add_argument(
        "--tests", default=",".join(TEST_FILES), help="comma-separated test files / node ids"
    )
    args = ap.parse_args(argv)
    if args.doc:
        results = json.loads(Path(args.doc).read_text(encoding="utf-8"))
        THEORY_DOC.write_text(splice_doc(THEORY_DOC.read_text(encoding="utf-8"), results),
                              encoding="utf-8")  # fmt: skip
        print(f"{THEORY_DOC}: mutation section regenerated from {args.doc}")
        return 0
    problems = check_patterns()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(MUTANTS)} mutant patterns apply to the current sources")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutants {sorted(unknown)}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if not names or m.name in names]
    tests = tuple(t for t in args.tests.split(",") if t)
    results = [run_mutant(None, args.timeout, tests)] if args.baseline else []
    for m in chosen:
        results.append(run_mutant(m, args.timeout, tests))
        r = results[-1]
        print(
            f"[{m.name}: red rows {r['red_rows']}, red tests {r['red_tests']}, {r['seconds']}s]",
            file=sys.stderr,
            flush=True,
        )
        if args.out:  # incremental: a long run leaves its table so far
            Path(args.out).write_text(to_markdown(results) + "\n", encoding="utf-8")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = to_markdown(results)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    missed = [r["mutant"] for r in results if r["mutant"] != "(none)"
              and not (r["red_rows"] and r["red_tests"])]  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
