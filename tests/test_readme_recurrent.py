"""README.md "Recurrent DNI": its python block runs alone (a fresh namespace) and learns.

The stream is deterministic (each character follows from the one before), so a window step
that trains drives the loss far below chance (ln 4 nats per step); a step that refused or
lost its updates would not, and the step counter says every window's update was applied.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    text = README.read_text(encoding="utf-8")
    section = re.split(r"^## ", text, flags=re.MULTILINE)
    (body,) = [s for s in section if s.startswith("Recurrent DNI\n")]
    lines = body.strip().splitlines()
    assert len(lines) <= 25, f"the README section has {len(lines)} lines (at most 25)"
    assert "γ" in body and "decay" in body, "the section gives the γ advice"
    (code,) = re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)
    return code


def test_the_recurrent_block_runs_alone_and_learns(capsys):
    ns: dict = {"__name__": "__readme_recurrent__"}
    exec(compile(_block(), "README.md:recurrent-dni", "exec"), ns)
    out = capsys.readouterr().out
    print(out)
    per_step = float(ns["metrics"]["loss"]) / ns["h"].window
    assert f"{per_step:.3f} nats/step" in out
    assert per_step < 0.1 * math.log(4), per_step  # chance is ln 4 = 1.386
    assert int(ns["state"].step) == 100  # every window's update was applied
