"""The package's internal import graph: cycles, private names imported across packages, imports inside
functions, and the largest files and functions.

    python scripts/import_graph.py            # a report; exit status 1 when a cycle exists
    python scripts/import_graph.py --json     # the same as JSON

Every ``import`` / ``from ... import`` of a ``llama_jreg`` module counts as an edge, wherever it stands (module
level or inside a function): an import deferred into a function still ties the two modules together. Importing
``a.b.c`` also runs the ``__init__`` of package ``a.b``, so that is an edge as well (from outside the package).
Cycles are the strongly connected components of that graph with more than one module (Tarjan).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGE = "llama_jreg"
ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``mod``)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".")[: -node.level] if node.level else []
    return ".".join(base + ([node.module] if node.module else []))


def scan(root: Path = ROOT) -> dict:
    """Per module: internal edges (with whether they are inside a function), private cross-package names,
    line counts and function lengths."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    inner: list[tuple[str, str, int]] = []  # (module, imported, line) for imports inside functions
    private: list[tuple[str, str, str, int]] = []  # (module, imported module, name, line)
    functions: list[tuple[int, str]] = []
    lines: dict[str, int] = {}

    def target(name: str) -> str | None:
        """The longest known module that ``name`` is or lies inside."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        src = path.read_text()
        lines[mod] = src.count("\n")
        tree = ast.parse(src)
        func_spans = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func_spans.append((node.lineno, node.end_lineno))
                functions.append((node.end_lineno - node.lineno + 1, f"{mod}.{node.name}"))

        def in_function(lineno: int) -> bool:
            return any(a < lineno <= b for a, b in func_spans)

        for node in ast.walk(tree):
            names: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                names = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node)
                # `from pkg import sub` imports the submodule pkg.sub when it exists
                names = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, a.name) for a in node.names]
            for full, name in names:
                if not full.startswith(PACKAGE):
                    continue
                tgt = target(full)
                if tgt is None or tgt == mod:
                    continue
                edges[mod].add(tgt)
                # importing a.b.c runs the __init__ of a.b first: an edge to every enclosing package too
                parent = tgt.rpartition(".")[0]
                while parent and parent != PACKAGE:
                    if parent in modules and parent != mod and not mod.startswith(parent + "."):
                        edges[mod].add(parent)
                    parent = parent.rpartition(".")[0]
                if in_function(node.lineno):
                    inner.append((mod, tgt, node.lineno))
                if (name and name.startswith("_") and not name.startswith("__")
                        and tgt.split(".")[:2] != mod.split(".")[:2]):
                    private.append((mod, tgt, name, node.lineno))
    return {"modules": modules, "edges": edges, "inner": inner, "private": private,
            "functions": sorted(functions, reverse=True), "lines": lines}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph of packages: each top-level module or subpackage of llama_jreg one node."""
    def node(mod: str) -> str:
        return ".".join(mod.split(".")[:2])

    out: dict[str, set[str]] = {}
    for mod, targets in edges.items():
        a = node(mod)
        out.setdefault(a, set())
        out[a] |= {node(t) for t in targets if node(t) != a}
    return out


def min_back_edges(nodes: list[str], edges: dict[str, set[str]]) -> int:
    """The fewest edges of a strongly connected component that must point back up in any order of its nodes (a
    minimum feedback arc set, exact by dynamic programming over subsets; components here have < 16 nodes)."""
    n = len(nodes)
    idx = {v: i for i, v in enumerate(nodes)}
    into = [0] * n  # bit j of into[i]: an edge j -> i (i imports j ... any direction: edge from j to i)
    for v in nodes:
        for w in edges.get(v, ()):
            if w in idx:
                into[idx[w]] |= 1 << idx[v]
    best = [0] + [n * n] * ((1 << n) - 1)
    for mask in range(1, 1 << n):
        for i in range(n):
            if mask >> i & 1:
                rest = mask & ~(1 << i)
                # node i placed last among mask: edges into i from outside mask point back up
                cost = best[rest] + bin(into[i] & ~mask & ((1 << n) - 1)).count("1")
                best[mask] = min(best[mask], cost)
    return best[(1 << n) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a report")
    p.add_argument("--top", type=int, default=8, help="how many of the largest files/functions to list")
    args = p.parse_args(argv)
    s = scan()
    cyc = cycles(s["edges"])
    pkg = package_graph(s["edges"])
    pkg_cycles = cycles(pkg)
    pkg_back = sum(min_back_edges(c, pkg) for c in pkg_cycles)
    largest_files = sorted(s["lines"].items(), key=lambda kv: -kv[1])[: args.top]
    if args.json:
        print(json.dumps({"cycles": cyc, "package_cycles": pkg_cycles, "package_back_edges": pkg_back,
                          "private_imports": s["private"], "imports_in_functions": len(s["inner"]),
                          "largest_files": largest_files, "largest_functions": s["functions"][: args.top]},
                         indent=1))
    else:
        print(f"{len(s['modules'])} modules, {sum(len(v) for v in s['edges'].values())} internal import edges")
        print(f"cycles: {len(cyc)}")
        for c in cyc:
            print("  " + " <-> ".join(c))
        print(f"packages: {len(pkg)} nodes, {sum(len(v) for v in pkg.values())} edges, {pkg_back} pointing back up "
              f"(the fewest any layering leaves), in {len(pkg_cycles)} cycle(s)")
        for c in pkg_cycles:
            print("  " + " <-> ".join(c))
        print(f"private names imported across packages: {len(s['private'])}")
        for mod, tgt, name, line in s["private"]:
            print(f"  {mod}:{line} imports {tgt}.{name}")
        print(f"internal imports inside functions: {len(s['inner'])}")
        print("largest files (lines):")
        for mod, n in largest_files:
            print(f"  {n:5d}  {mod}")
        print("largest functions (lines):")
        for n, name in s["functions"][: args.top]:
            print(f"  {n:5d}  {name}")
    return 1 if cyc else 0


if __name__ == "__main__":
    sys.exit(main())
