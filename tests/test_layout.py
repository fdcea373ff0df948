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
