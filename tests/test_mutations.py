"""The mutation harness (``scripts/mutations.py``) must not rot silently.

The harness itself is too slow for CI (it runs ``sgjax verify`` rows and a test file
per planted bug; its output is committed to ``docs/results/mutations.md``). This test
checks that every planted bug's pattern still matches the current sources exactly once,
so an edit of ``sgjax/`` that moves a pattern fails here, not unnoticed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutations.py"


def _harness():
    spec = importlib.util.spec_from_file_location("mutations", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while building Mutant
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_pattern_applies_to_the_current_sources() -> None:
    h = _harness()
    assert len(h.MUTANTS) >= 12
    assert h.check_patterns() == []
    assert len({m.name for m in h.MUTANTS}) == len(h.MUTANTS)


def test_a_pattern_that_no_longer_matches_is_reported(tmp_path: Path) -> None:
    h = _harness()
    for f in sorted({m.file for m in h.MUTANTS}):
        (tmp_path / "sgjax").mkdir(exist_ok=True)
        (tmp_path / "sgjax" / f).write_text("# empty\n", encoding="utf-8")
    problems = h.check_patterns(tmp_path)
    assert len(problems) == len(h.MUTANTS), problems
