"""The reproduction study (``make reproduce``): ``python scripts/reproduce.py --scale quick|cpu|gpu --out DIR``.

A thin entry point: the plan, the runs, the statistics, the findings and the report are the package
``llama_jreg.study`` (``--help`` describes every stage and option).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's llama_jreg, not an installed one

from llama_jreg.study.cli import main  # noqa: E402 - after the path above

if __name__ == "__main__":
    sys.exit(main())
