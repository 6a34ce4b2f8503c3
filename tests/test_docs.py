"""The documents: ``docs/design.md``'s generated tables match the code, and every link and
repository path named in README.md and docs/ resolves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: a repository path in backticks: starts at a top-level folder, no placeholders
REPO_PATH = re.compile(
    r"`((?:docs|scripts|tests|sgjax|theory|examples|notebooks)/[A-Za-z0-9_./-]*)`"
)
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _gen():
    return load_script("gen_design")


def test_design_md_is_generated_from_the_layers_and_the_registries():
    gen = _gen()
    text = gen.DOC.read_text(encoding="utf-8")
    assert gen.updated(text) == text, "docs/design.md is stale: run python scripts/gen_design.py"
    # what it is generated from is in it
    assert "| core | `sgjax`, `sgjax.estimators`" in text and "| `sg-prop` |" in text


def test_a_stale_design_md_is_caught():
    gen = _gen()
    text = gen.DOC.read_text(encoding="utf-8")
    stale = text.replace("`sgjax.rules`, ", "", 1)  # a module that left the layer table
    assert stale != text and gen.updated(stale) != stale


def _targets(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in MD_LINK.finditer(text):
        link = m.group(1).split("#", 1)[0]
        if link and not re.match(r"[a-z]+:", link):  # not http:, mailto: …
            out.append((link, (doc.parent / link).resolve()))
    for m in REPO_PATH.finditer(text):
        out.append((m.group(1), ROOT / m.group(1).rstrip("/")))
    return out


def test_every_link_and_repository_path_in_the_docs_resolves():
    assert len(DOCS) > 3
    broken = [
        f"{doc.relative_to(ROOT)}: {name}"
        for doc in DOCS
        for name, path in _targets(doc)
        if not path.exists()
    ]
    assert not broken, "\n".join(broken)


def test_the_probe_scripts_import_without_running():
    """The probes behind results pages are scripts with a ``main``: importing one runs
    nothing (planted: a probe's body at module level → it would train on import, and
    ``main`` would be missing)."""
    for name in ("lm_gap_probe", "pipeline_stability"):
        assert callable(load_script(name).main), name


def test_the_test_profile_sums_each_workers_records(tmp_path, capsys):
    """scripts/test_profile.py: the records of both workers, summed by file (planted: one
    worker's file read → the file's wall time would be 3.0, not 5.0); its own output
    beside the records (``prefix.out``) is not a record."""
    prof = load_script("test_profile")
    rec = {"programs": 2, "backend_s": 1.0, "lower_s": 0.5, "trace_s": 0.25}
    (tmp_path / "p.11").write_text(json.dumps({**rec, "id": "tests/a.py::t1", "wall_s": 3.0}))
    (tmp_path / "p.12").write_text(json.dumps({**rec, "id": "tests/a.py::t2", "wall_s": 2.0}))
    (tmp_path / "p.out").write_text("pytest's own output\n")
    prof.main([str(tmp_path / "p")])
    out = capsys.readouterr().out
    assert out.startswith("2 tests: 5 s in tests, of which XLA compiling 2 s")
    assert "4 programs compiled" in out
    assert "     5.0      2.0      1.0      0.5        4  tests/a.py" in out
    with pytest.raises(SystemExit, match="no files"):
        prof.main([str(tmp_path / "q")])
