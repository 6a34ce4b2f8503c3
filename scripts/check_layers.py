#!/usr/bin/env python3
"""Check that imports in ``sgjax`` and ``theory`` point down the layers, with no cycles.

Every ``import`` and ``from … import`` statement is read with :mod:`ast` — at the top of a
module *and* inside functions (a lazy import is still a dependency) — and resolved to the
module it names. The layers, bottom to top (``docs/design.md`` has the map):

0. ``core``: ``sgjax.nets``, ``losses``, ``sgmodule``, ``estimators``, ``sweep``,
   ``rules`` (with ``rule_checks`` and ``table1``), ``transformer``, ``train`` (a package:
   step, loop, checks, errors, diagnose) and the package ``sgjax`` itself;
1. ``adapters``: ``sgjax.diagnostics``, ``sgjax.flax_adapter``, ``sgjax.interface``,
   ``sgjax.recurrent``;
2. ``infra``: ``sgjax.infra`` (data, checkpoint, config, runner) and the subsystem
   ``sgjax.pipeline``;
3. ``theory``: the claim package (it uses the core, one way);
4. ``apps``: ``sgjax.apps`` (cli, train command, reproduce, bench, experiments),
   ``sgjax.__main__``.

A module may import its own layer and the layers below. The check fails on an import that
points up, on a cycle between modules (at any layer), and on a module that no layer
claims (add it to :data:`LAYERS`).

Usage::

    python scripts/check_layers.py            # exit 1 and a list of problems, else "ok"
    python scripts/check_layers.py --graph    # also print the module graph with layers
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sgjax", "theory")

#: (layer name, module prefixes), bottom to top; the longest matching prefix wins; a
#: trailing ``$`` matches that module only (the package ``sgjax`` is core, not all of it).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "sgjax$",
            "sgjax.nets",
            "sgjax.losses",
            "sgjax.sgmodule",
            "sgjax.estimators",
            "sgjax.sweep",
            "sgjax.rules",
            "sgjax.rule_checks",
            "sgjax.table1",
            "sgjax.transformer",
            "sgjax.train",
        ),
    ),
    (
        "adapters",
        (
            "sgjax.diagnostics",
            "sgjax.flax_adapter",
            "sgjax.interface",
            "sgjax.nnx_interface",
            "sgjax.optim",
            "sgjax.recurrent",
        ),
    ),
    ("infra", ("sgjax.infra", "sgjax.pipeline")),
    ("theory", ("theory",)),
    ("apps", ("sgjax.apps", "sgjax.__main__")),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Every module of :data:`PACKAGES` under ``root``: name -> file."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (prefix length, index, name)
    for index, (name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            exact = p.endswith("$")
            p = p.rstrip("$")
            if module == p or (not exact and module.startswith(p + ".")):
                if best is None or len(p) > best[0]:
                    best = (len(p), index, name)
    return None if best is None else (best[1], best[2])


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The known module that ``name`` refers to (the longest known prefix)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, modules: dict[str, Path]) -> Iterable[tuple[str, int]]:
    """``(imported module, line)`` for every import statement in ``path``, nested included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod when there is one.
                target = _resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules)
                if target and target != module:
                    yield target, node.lineno


def graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    out: dict[str, dict[str, int]] = {}
    for m, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports(m, path, modules):
            if target != m:
                edges.setdefault(target, line)
        out[m] = edges
    return out


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def problems(root: Path = ROOT) -> list[str]:
    modules = discover(root)
    g = graph(modules)
    out = []
    for m in sorted(modules):
        if layer_of(m) is None:
            out.append(f"{m}: no layer claims this module (add it to LAYERS in {__file__})")
    for m, edges in sorted(g.items()):
        lm = layer_of(m)
        for target, line in sorted(edges.items()):
            lt = layer_of(target)
            if lm is not None and lt is not None and lt[0] > lm[0]:
                out.append(
                    f"{modules[m].relative_to(root)}:{line}: {m} ({lm[1]}) imports {target} "
                    f"({lt[1]}), a higher layer"
                )
    for comp in cycles(g):
        out.append(f"import cycle: {' ↔ '.join(comp)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", action="store_true", help="print the module graph with layers")
    p.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this one)")
    args = p.parse_args(argv)
    if args.graph:
        modules = discover(args.root)
        for m, edges in sorted(graph(modules).items()):
            layer = layer_of(m)
            names = ", ".join(sorted(edges))
            print(f"[{layer[1] if layer else '?'}] {m} -> {names or '(nothing)'}")
    found = problems(args.root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} layer problem(s)", file=sys.stderr)
        return 1
    print("ok: imports point down the layers; no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
