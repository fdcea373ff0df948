"""The README's size table is printed from code, not typed by hand."""

import subprocess
import sys

from tests.conftest import REPO


def test_readme_size_table_matches_code():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "size_table.py")], capture_output=True, text=True,
                         check=True).stdout.strip()
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- size-table:begin -->")[1].split("<!-- size-table:end -->")[0].strip()
    assert block == out


def test_readme_two_commands_exist_in_makefile():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "\ndemo: setup" in makefile and "\ntest: setup" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
