"""What the library needs installed: the core dependencies only, the rest optional.

``pyproject.toml`` requires jax, jaxlib, optax and numpy; scikit-learn, orbax, matplotlib
and tqdm are the ``apps`` extra, flax the ``flax`` extra, chex a test dependency. Here:
every module of the package imports with the optional packages blocked (save the flax
adapters, which need flax and say so), and every third-party import in ``sgjax`` and
``theory`` is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("flax", "orbax", "sklearn", "matplotlib", "tqdm", "chex")
#: the modules that need an optional package to import at all (the extra that has it)
NEEDS_EXTRA = {"sgjax.flax_adapter": "flax", "sgjax.nnx_interface": "flax", "sgjax.optim": "flax"}
#: import name -> distribution name, where they differ
DISTRIBUTION = {"sklearn": "scikit-learn", "orbax": "orbax-checkpoint"}

_BLOCKED_IMPORTS = """
import importlib, importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Block())
failed = {}
for m in sys.argv[2].split(","):
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as e:
        failed[m] = e.name
import jax, jax.numpy as jnp
from sgjax import nets, rules
net = nets.mlp([4, 8, 3])
params = net.init(jax.random.key(0))
assert net.apply(params, jnp.ones((2, 4))).shape == (2, 3)
assert "sg" in rules.RULES
print(json.dumps({"failed": failed, "loaded": sorted(
    k.split(".")[0] for k in sys.modules if k.split(".")[0] in BLOCKED)}))
"""


def _modules() -> list[str]:
    out = []
    for pkg in ("sgjax", "theory"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts.pop()
            out.append(".".join(parts))
    return out


def test_every_module_imports_without_the_optional_packages():
    import json

    mods = _modules()
    assert "sgjax.rules" in mods and "sgjax.apps.cli" in mods and "theory.table1" in mods
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS, ",".join(OPTIONAL), ",".join(mods)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # exactly the flax adapters fail, each on flax; nothing else imports an optional package
    assert got["failed"] == NEEDS_EXTRA, got["failed"]
    assert got["loaded"] == [], got["loaded"]


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pkg in ("sgjax", "theory"):
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("sgjax", "theory"):
                        found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def _names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_every_third_party_import_is_declared_and_chex_is_for_tests_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _names(project["dependencies"])
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    declared = required.union(*extras.values())
    imports = _third_party_imports()
    assert {"jax", "optax", "numpy"} <= set(imports)
    missing = {
        m: sorted(files) for m, files in imports.items()
        if DISTRIBUTION.get(m, m) not in declared
    }  # fmt: skip
    assert not missing, f"imported but not in pyproject.toml: {missing}"
    assert required == {"jax", "jaxlib", "optax", "numpy"}, required
    assert extras["flax"] == {"flax"}
    assert {"scikit-learn", "orbax-checkpoint", "matplotlib", "tqdm"} == extras["apps"]
    assert "chex" in extras["test"] and "chex" not in imports  # the tests' tree assertions


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    import pytest

    from sgjax.infra import data

    # not installed: the import raises, and the package data file is not found either
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sgjax\[apps\]'"):
        data.digits()
