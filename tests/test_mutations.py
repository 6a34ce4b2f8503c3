"""The mutation harness (``scripts/mutations.py``) must not rot silently.

The harness itself is too slow for CI (it runs ``sgjax verify`` rows and a test file
per planted bug; its output is committed to ``docs/results/mutations.md``). This test
checks that every planted bug's pattern still matches the current sources exactly once,
so an edit of ``sgjax/`` that moves a pattern fails here, not unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutations.py"


def _harness():
    return load_script("mutations")


def test_every_mutant_pattern_applies_to_the_current_sources() -> None:
    h = _harness()
    assert len(h.MUTANTS) >= 23
    assert h.check_patterns() == []
    assert len({m.name for m in h.MUTANTS}) == len(h.MUTANTS)


def test_a_pattern_that_no_longer_matches_is_reported(tmp_path: Path) -> None:
    h = _harness()
    for f in sorted({m.file for m in h.MUTANTS}):
        (tmp_path / "sgjax").mkdir(exist_ok=True)
        (tmp_path / "sgjax" / f).write_text("# empty\n", encoding="utf-8")
    problems = h.check_patterns(tmp_path)
    assert len(problems) == len(h.MUTANTS), problems


# --------------------------------------------------------------------------------------
# docs/theory.md's "what turns it red" comes from the harness's measured results.

ROOT = SCRIPT.parents[1]
RESULTS = ROOT / "docs" / "results" / "mutations.json"
THEORY = ROOT / "docs" / "theory.md"


def _measured() -> list[dict]:
    import json

    return json.loads(RESULTS.read_text(encoding="utf-8"))


def _named_mutants(cell: str, names: list[str]) -> list[str]:
    import re

    return [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", cell)]


def test_the_generated_section_of_the_theory_doc_is_the_measured_one() -> None:
    h = _harness()
    text = THEORY.read_text(encoding="utf-8")
    i, j = text.find(h.DOC_BEGIN), text.find(h.DOC_END)
    assert 0 <= i < j, "docs/theory.md lost its generated mutation section"
    assert text[i : j + len(h.DOC_END)] == h.doc_section(_measured()), (
        "regenerate it: python scripts/mutations.py --doc docs/results/mutations.json"
    )


def test_the_theory_doc_names_a_mutant_only_beside_a_row_it_turns_red() -> None:
    # Every table row of docs/theory.md that starts with a verify row name and names a
    # mutant: that mutant must have turned that row red in the measured results.
    h = _harness()
    red = h.red_by_row(_measured())
    names = [m.name for m in h.MUTANTS]
    checked, wrong = 0, []
    for line in THEORY.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        row = line.split("`")[1]
        for m in _named_mutants(line, names):
            checked += 1
            if m not in red.get(row, []):
                wrong.append((row, m))
    assert checked >= 10, checked  # the doc does name mutants row by row
    assert not wrong, f"docs/theory.md names mutants that do not turn the row red: {wrong}"


def test_every_mutant_was_measured_and_caught_by_verify_and_a_test() -> None:
    h = _harness()
    results = {r["mutant"]: r for r in _measured()}
    assert results["(none)"]["red_rows"] == [] and results["(none)"]["red_tests"] == []
    missing = [m.name for m in h.MUTANTS if m.name not in results]
    assert not missing, f"not measured (run scripts/mutations.py --only ...): {missing}"
    missed = [n for n, r in results.items() if n != "(none)" and not (r["red_rows"] and
                                                                      r["red_tests"])]  # fmt: skip
    assert not missed, missed


def test_a_doc_naming_a_mutant_that_stays_green_is_caught() -> None:
    # The check above, on a doc line that names a mutant beside a row it leaves green
    # (issue 25: estimator-drops-label leaves linear-sg-exact at 7.6e-15).
    h = _harness()
    red = h.red_by_row(_measured())
    line = "| `linear-sg-exact/residual` | identity | claim | mutant estimator-drops-label |"
    named = _named_mutants(line, [m.name for m in h.MUTANTS])
    assert named == ["estimator-drops-label"]
    assert "estimator-drops-label" not in red.get("linear-sg-exact/residual", [])
