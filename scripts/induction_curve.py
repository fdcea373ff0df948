"""Induction accuracy by step: ``llama-jreg eval`` on every checkpoint of one or more runs, as a Markdown table.

    python scripts/induction_curve.py runs/ind_s1 runs/ind_s2 runs/ind_s3 [--json curve.json]

Each run needs its checkpoints kept (e.g. ``trainer.ckpt_every=100 trainer.keep_last=10``); a checkpoint's
evaluation is written to ``<run>/eval/step_XXXXXXXX.json`` and reused by a rerun (so the script can follow a
run that is still training). The table has one row per
step and one column per run, plus the mean and the minimum over the runs; docs/recipes.md shows its output for
``experiment=induction`` at lambda = 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def curve(run: Path) -> dict[int, float]:
    """{step: induction accuracy} of every checkpoint of ``run`` (each evaluated once, cached in run/eval/)."""
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    if not ckpts:
        raise SystemExit(f"error: {run} has no checkpoints; train with trainer.ckpt_every=N trainer.keep_last=M")
    out = {}
    for ck in ckpts:
        js = run / "eval" / f"{ck.name}.json"
        if not js.is_file():
            js.parent.mkdir(exist_ok=True)
            subprocess.run([sys.executable, "-m", "llama_jreg", "eval", str(ck), "--json", str(js)], check=True,
                           stdout=subprocess.DEVNULL)
        res = json.loads(js.read_text())
        if "induction" not in res:
            raise SystemExit(f"error: {ck} was not trained on induction data (no induction accuracy)")
        out[int(ck.name.split("_")[1])] = res["induction"]["accuracy"]
    return out


def table(curves: dict[str, dict[int, float]]) -> str:
    names = list(curves)
    steps = sorted({s for c in curves.values() for s in c})
    rows = ["| step | " + " | ".join(names) + " | mean | min |", "|---:|" + "---:|" * (len(names) + 2)]
    for s in steps:
        vals = [curves[n].get(s) for n in names]
        got = [v for v in vals if v is not None]
        cells = [f"{v:.3f}" if v is not None else "-" for v in vals]
        rows.append(f"| {s} | " + " | ".join(cells) + f" | {sum(got) / len(got):.3f} | {min(got):.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run dirs (with checkpoints/)")
    p.add_argument("--json", type=Path, help="also write {run: {step: accuracy}} here")
    args = p.parse_args(argv)
    curves = {r.name: curve(r) for r in args.runs}
    print(table(curves))
    if args.json:
        args.json.write_text(json.dumps(curves, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
