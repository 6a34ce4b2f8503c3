"""The README's quick example runs as printed and trains a network that works.

The code is read from the first ```python block under the "Quick example" heading of
``README.md``, so the test follows the text whenever it is edited. The example must reach
≥ 0.9 test accuracy on the digits (it measured 0.969 with synthetic gradients when this
test was written).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in (ROOT / "README.md",) if p.exists()]


def quick_example(path: Path) -> str:
    """The first python code block after a heading that reads "Quick example"."""
    text = path.read_text(encoding="utf-8")
    heading = re.search(r"^#+\s*Quick example\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    if heading is None:
        raise AssertionError(f"{path.name}: no 'Quick example' heading")
    block = re.search(r"```python\n(.*?)```", text[heading.end() :], flags=re.DOTALL)
    if block is None:
        raise AssertionError(f"{path.name}: no ```python block under 'Quick example'")
    return block.group(1)


def test_there_is_a_quick_example_to_test():
    assert SOURCES, "README.md does not exist"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_quick_example_runs_and_learns(path, capsys):
    code = quick_example(path)
    assert 5 <= len(code.strip().splitlines()) <= 25, "the quick example should stay short"
    namespace: dict = {"__name__": "__quick_example__"}
    exec(compile(code, f"{path.name}:quick-example", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "accuracy" in printed  # the example prints its evaluation
    from sgjax import train

    ds, net, state = namespace["ds"], namespace["net"], namespace["state"]
    result = train.evaluate(net, state.params, "xent", ds.x_test, ds.y_test)
    assert result["accuracy"] >= 0.9, result


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_quick_example_loop_catches_out_of_range_labels(path, monkeypatch):
    """The README's loop stops at the first batch holding a label outside [0, 10)."""
    from sgjax import train
    from sgjax.infra import data

    real = data.digits()
    y_bad = real.y_train.copy()
    y_bad[::7] = 12  # one in seven: the first batch of 64 holds some
    monkeypatch.setattr(data, "digits", lambda: real._replace(y_train=y_bad))
    code = quick_example(path)
    with pytest.raises(train.BadLabelsError, match=r"^step 0: \d+ label\(s\)"):
        exec(compile(code, f"{path.name}:quick-example", "exec"), {"__name__": "__qe__"})
