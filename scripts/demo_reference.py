"""Write ``llama_jreg/train/demo_reference.json``: `make demo`'s recipe run with ``jreg.weight=0``.

``python scripts/demo_reference.py [--run-dir runs/demo_reference]`` trains (or, with ``resume=auto``, finishes
or re-opens) the demo recipe without JREG and records its step, train zeta_L, validation zeta_L and validation
loss at the last step, the recipe (``llama_jreg.train.reference.recipe``) and the machine. The run summary of
`make demo` prints these next to the run's own figures when the recipes match. Rerun it whenever
``configs/experiment/continued.yaml`` or the demo command in the Makefile changes (``tests/test_reference.py`` fails
until then).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = ["experiment=continued", "jreg=jump", "jreg.weight=0", "logger=none"]


def main(argv: list[str] | None = None) -> int:
    from llama_jreg.study.report import machine
    from llama_jreg.train.reference import REFERENCE_PATH, make_reference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/demo_reference", help="where the lambda = 0 run goes")
    p.add_argument("--out", default=str(REFERENCE_PATH), help="the reference JSON to write")
    args = p.parse_args(argv)
    cmd = ["llama-jreg", "train", *OVERRIDES, f"run.dir={args.run_dir}", "resume=auto"]
    subprocess.run([sys.executable, "-m", "llama_jreg", *cmd[1:]], check=True)
    ref = make_reference(args.run_dir, machine(), " ".join(cmd))
    Path(args.out).write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {args.out}: step {ref['step']}, val zeta_L {ref['val_zeta_L']:.4f}, zeta_L {ref['zeta_L']:.4f}, "
          f"val loss {ref['val_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
