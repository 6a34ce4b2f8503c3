"""Every notebook in ``notebooks/`` executes, in smoke mode, from its jupytext source.

The ``.py`` files (jupytext percent format) are the source; each is converted to a
notebook in memory and run by a Jupyter kernel (nbclient, the engine under nbmake) with
``SGJAX_SMOKE=1``. A failing cell — an exception, or one of the notebook's own ``assert``s
(notebook 03 asserts each Table 1 identity) — fails the test, naming the notebook.

The five run one after another in **one** kernel (a kernel's start and its imports of
jax, sgjax and matplotlib are ~3 s of CPU each, and the eager operations the notebooks
share compile once), each from an empty namespace: before each, ``%reset -f`` removes
every name the previous one defined (a notebook that forgot an import still fails) and
its figures are closed. No notebook changes JAX's configuration (``test_no_notebook_
changes_jax_config`` checks), so none sees another's settings.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))
#: run before each notebook in the shared kernel: an empty namespace, no figures left
_FRESH = "%reset -f\nimport matplotlib.pyplot as _plt\n_plt.close('all')\ndel _plt"


def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_tour",
        "02_theory",
        "03_unified_view",
        "04_representations",
        "05_interfaces",
    ]


def test_no_notebook_changes_jax_config():
    """What makes one shared kernel equivalent to five fresh ones: no notebook sets a JAX
    option (x64, a platform, a debug flag) that the next would inherit."""
    for path in NOTEBOOKS:
        src = path.read_text()
        assert not re.search(r"config\.update|jax_enable_x64|enable_x64|os\.environ\[", src), path


def combined() -> tuple[nbformat.NotebookNode, list[tuple[int, str]]]:
    """The notebooks as one: before each, a cell that empties the namespace; returns it and
    ``(index of the first cell, name)`` of each notebook."""
    nb = nbformat.v4.new_notebook()
    starts = []
    for path in NOTEBOOKS:
        part = jupytext.read(path)
        nb.cells.append(nbformat.v4.new_code_cell(_FRESH))
        starts.append((len(nb.cells), path.stem))
        nb.cells += part.cells
    return nb, starts


def test_the_fresh_cell_empties_the_namespace_between_notebooks():
    """Planted: a notebook using a name only an earlier one defined fails in the shared
    kernel as it would in its own (``%reset -f`` removed it)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nleft_over = 1"),
        nbformat.v4.new_code_cell(_FRESH),
        nbformat.v4.new_code_cell("print(left_over)"),
    ]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="NameError"):
        client.execute()


@pytest.mark.slow
def test_notebooks_run_in_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SGJAX_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS[0].parents[1]))  # this checkout's sgjax wins
    nb, starts = combined()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        failed = next((i for i, c in enumerate(nb.cells) if _errored(c)), -1)
        name = [n for first, n in starts if first <= failed][-1] if failed >= 0 else "?"
        raise AssertionError(f"notebooks/{name}.py failed:\n{e}") from None
    print(f"5 notebooks: {time.perf_counter() - t0:.1f} s")


def _errored(cell) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))
