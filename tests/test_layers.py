"""The layer check (scripts/check_layers.py): the repository passes it, and it catches an
upward import (also one hidden inside a function), a cycle and an unplaced module."""

from __future__ import annotations

from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    return load_script("check_layers")


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in ("sgjax", "sgjax/infra", "sgjax/apps", "theory"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_the_repository_imports_point_down_without_cycles():
    assert _checker().problems(ROOT) == []


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = _tree(
        tmp_path,
        {
            "sgjax/train.py": "def fit():\n    from sgjax.infra.runner import run\n",
            "sgjax/infra/runner.py": "from sgjax import train\n",
            "sgjax/apps/cli.py": "from sgjax.infra import runner\nimport theory.cli\n",
            "theory/cli.py": "from sgjax import train\n",
        },
    )
    found = _checker().problems(root)
    assert any(
        "sgjax/train.py:2: sgjax.train (core) imports sgjax.infra.runner (infra)" in p
        for p in found
    ), found
    assert "import cycle: sgjax.infra.runner ↔ sgjax.train" in found
    assert len(found) == 2, found  # the downward imports (apps → infra, theory) are fine


def test_theory_importing_an_app_and_an_unplaced_module_are_caught(tmp_path):
    root = _tree(
        tmp_path,
        {
            "theory/table1.py": "from sgjax.apps import cli\n",
            "sgjax/apps/cli.py": "",
            "sgjax/newthing.py": "",
        },
    )
    found = _checker().problems(root)
    assert any("theory.table1 (theory) imports sgjax.apps.cli (apps)" in p for p in found)
    assert any("sgjax.newthing: no layer claims this module" in p for p in found)


def test_benchmarks_live_in_apps_and_the_old_names_still_resolve():
    # The pipeline's and the recurrent package's benchmarks moved to sgjax.apps.bench (a
    # library layer holds no harness); the old pipeline names resolve for one release
    # with a DeprecationWarning naming the new place.
    import warnings

    import pytest

    from sgjax import pipeline
    from sgjax.apps.bench import pipeline_compare, pipeline_throughput

    for pkg in ("sgjax/pipeline", "sgjax/recurrent"):
        assert not {"benchmark.py", "compare.py", "bench.py"} & {
            p.name for p in (ROOT / pkg).iterdir()
        }
    for old, new in (
        ("benchmark_pipeline", pipeline_throughput.benchmark_pipeline),
        ("benchmark", pipeline_throughput),
        ("compare", pipeline_compare),
    ):
        with pytest.warns(DeprecationWarning, match=f"sgjax.pipeline.{old} moved to sgjax.apps"):
            assert getattr(pipeline, old) is new
    with warnings.catch_warnings(), pytest.raises(AttributeError, match="no attribute 'nope'"):
        warnings.simplefilter("error")
        pipeline.nope  # noqa: B018
