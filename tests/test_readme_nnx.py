"""README.md: every ``python`` block runs under a test, the ``flax NNX`` block learns, and
the lists follow the registries (experiments, SG estimators, rules).

The Quick example (``test_quick_example.py``) and the "Synthetic gradients in your own
model" blocks (``test_interface_examples.py``) have their own tests; this file runs the
"flax NNX" block — self-contained, a fresh namespace — and refuses a ``python`` block
under any other heading, which no test would run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: heading -> the test that runs its python blocks
RUN_BY = {
    "Quick example": "tests/test_quick_example.py",
    "Synthetic gradients in your own model": "tests/test_interface_examples.py",
    "flax NNX": "tests/test_readme_nnx.py",
    "Recurrent DNI": "tests/test_readme_recurrent.py",
}


def sections() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {h.strip(): body for h, body in zip(parts[1::2], parts[2::2])}


def python_blocks(body: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


def test_every_python_block_is_run_by_a_test():
    untested = [h for h, body in sections().items() if python_blocks(body) and h not in RUN_BY]
    assert not untested, f"python blocks under {untested}: add them to a test (RUN_BY)"
    for heading, test in RUN_BY.items():
        assert (README.parent / test).exists(), test
        assert python_blocks(sections()[heading]), f"no python block under {heading!r}"


def test_the_flax_nnx_block_runs_alone_and_learns(capsys):
    (code,) = python_blocks(sections()["flax NNX"])
    ns: dict = {"__name__": "__readme_flax_nnx__"}
    exec(compile(code, "README.md:flax-nnx", "exec"), ns)
    out = capsys.readouterr().out
    print(out)
    assert "test accuracy" in out
    assert ns["accuracy"] >= 0.9
    assert [s.out_shape for s in ns["net"].stages] == [(8, 8, 8), (10,)]


def _names(text: str) -> set[str]:
    return set(re.findall(r"`([a-z][a-z0-9_-]*)`", text))


@pytest.mark.parametrize("registry", ["experiments", "estimators", "rules"])
def test_the_lists_follow_the_registries(registry):
    sec = sections()
    if registry == "experiments":
        from sgjax.apps.experiments import EXPERIMENTS as names

        text = sec["Reproducing the paper"].split("\n\n")[1]  # the paragraph listing them
    elif registry == "estimators":
        from sgjax.estimators import ESTIMATORS as names

        text = next(p for p in sec["The rules"].split("\n\n") if "sgjax.estimators" in p)
    else:
        from sgjax.rules import RULES as names

        text = sec["The rules"]
    missing = sorted(set(names) - _names(text))
    assert not missing, f"README.md lists no {missing} ({registry} registry)"
