"""Mutation harness: plant realistic bugs in a copy of sgjax/ and see what catches them.

Each mutant replaces one exact string in a copy of ``sgjax/rules.py``,
``estimators.py``, ``losses.py`` or ``nets.py`` (the stable maths), then runs selected
``sgjax verify`` rows and test files against the copy (``PYTHONPATH`` = the copy), and
reports which verify rows and which tests turn red (pytest stops at the first red test,
``-x``: the table lists the first). A mutant that turns nothing red is a defect of the
checks.

    python scripts/mutations.py                  # every mutant, table on stdout
    python scripts/mutations.py --out docs/results/mutations.md
    python scripts/mutations.py --only mse-grad-sign,kickback-mean
    python scripts/mutations.py --check          # patterns still apply? (fast; CI)

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
        "estimators.py",
        "    r = s - t\n",
        "    r = t - s\n",
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
        "estimators.py",
        "g_theta, g_h = module_vjp(2.0 * r / batch)",
        "g_theta, g_h = module_vjp(r / batch)",
        "wrong scale: ∂‖t − s‖² taken as (s − t), factor 2 dropped",
    ),
    Mutant(
        "sg-middle-off-by-one",
        "rules.py",
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
    Mutant(
        "xent-drops-label",
        "losses.py",
        "return jax.nn.softmax(p, axis=-1) * jnp.sum(t, axis=-1, keepdims=True) - t",
        "return jax.nn.softmax(p, axis=-1) * jnp.sum(t, axis=-1, keepdims=True)",
        "dropped label term: cross-entropy output gradient softmax(p)",
    ),
)

#: What runs against each mutant: verify families (few instances) and test files.
VERIFY_CLAIMS = "table1,implied-loss"
VERIFY_INSTANCES = "2"
TEST_FILES = ("tests/test_rules.py",)


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
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check the patterns apply")
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    ap.add_argument("--baseline", action="store_true", help="also run the unmodified sources")
    ap.add_argument(
        "--tests", default=",".join(TEST_FILES), help="comma-separated test files / node ids"
    )
    args = ap.parse_args(argv)
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
    table = to_markdown(results)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    missed = [r["mutant"] for r in results if r["mutant"] != "(none)"
              and not (r["red_rows"] and r["red_tests"])]  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
