"""The package's import structure (scripts/import_graph.py): no import cycle, no private name imported across
packages. A cycle makes a module's import order matter and hides which layer depends on which."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cycle_finder_finds_a_cycle():
    g = _graph()
    assert g.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert g.cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_and_no_private_cross_package_import():
    g = _graph()
    scan = g.scan()
    assert len(scan["modules"]) > 30  # the whole package was read
    assert g.cycles(scan["edges"]) == []
    assert scan["private"] == []


def test_architecture_layout_names_every_module_and_script():
    """docs/architecture.md's "Layout" names every module of llama_jreg/ and every script of scripts/."""
    root = SCRIPT.parent.parent
    doc = (root / "docs" / "architecture.md").read_text()
    layout = doc[doc.index("## Layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    missing = []
    for f in sorted((root / "llama_jreg").rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if f.name in ("__init__.py", "__main__.py") or rel in layout:
            continue
        if f.parent.relative_to(root).as_posix() + "/" in layout:  # a package listed as a whole
            continue
        missing.append(rel)
    missing += [f"scripts/{f.name}" for f in sorted((root / "scripts").iterdir())
                if f.suffix in (".py", ".sh") and f.name not in layout]
    assert not missing, f"docs/architecture.md Layout does not name: {missing}"


def test_core_library_does_not_import_the_study():
    """llama_jreg.study (the reproduction study: plan, statistics, findings, report) sits on top of the library:
    no module outside it imports it, so the library works and changes without it."""
    scan = _graph().scan()
    study = {m for m in scan["modules"] if m == "llama_jreg.study" or m.startswith("llama_jreg.study.")}
    assert len(study) >= 8  # the package was scanned
    core = [(m, t) for m, targets in scan["edges"].items() if m not in study for t in sorted(targets) if t in study]
    assert core == [], f"core modules import llama_jreg.study: {core}"
