"""The JREG study, version 2 (docs/preregistration.md): ``python scripts/reproduce.py --scale quick|cpu|gpu --out DIR``.

Drives the public CLI only, so every step is also how a user does it by hand. Stages (llama_jreg/study/design.py):

* E1: ``llama-jreg jump`` on SmolLM2-135M-Instruct (de-quantised from Q4_1), 32 windows x 256 tokens;
* screen (E2): ``llama-jreg train experiment=jump_emergence seed=K run.dir=OUT/screen/seed_K resume=auto
  logger=none`` for seeds 1-40 (more by the extension rule), read for the criterion from the logged jump rows;
* arms (E3): paper, jump (lambda = 1) and the placebo (lr x 1.25) on the first 12 growing seeds
  (``OUT/arms/<arm>/seed_K``); control: paper and jump on the first 5 non-growing (``OUT/control/<arm>/seed_K``);
* continued (E4): SmolLM2-135M-Instruct 200 steps, 5 seeds x {lambda = 0, paper, jump}
  (``OUT/continued/<arm>/seed_K``);
* every finished run: ``llama-jreg eval RUN --unit-gain-lens --json OUT/eval/<stage>[/<arm>]/seed_K.json``.

Runs start one at a time per lane (``--lanes N``, one thread each) in a fixed order; a stage waits for the
screening it needs. A rerun resumes (finished runs and existing evaluations are skipped; ``resume=auto``
continues an interrupted run). ``--max-hours H``: no run starts after H hours (``make reproduce`` runs the cpu
study in chunks a rerun continues). ``--archive DIR`` keeps every evaluated run without checkpoints and restores
from it first, so a fresh clone resumes and regenerates the report. The report: ``OUT/report.md`` (with a
"partial: k of N runs" banner while runs are missing); when the study is complete, also ``--docs`` (cpu:
docs/results.md, its figures in docs/results/). ``--report-only`` runs nothing; ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from llama_jreg.study.archive import restore
from llama_jreg.study.bundle import bundle
from llama_jreg.study.design import DESIGNS
from llama_jreg.study.families import collect
from llama_jreg.study.lanes import Lanes, dry_run, progress
from llama_jreg.study.plan import PLANS
from llama_jreg.study.run import record_stage, stage_e1
from llama_jreg.study.v2report import plot_curves, render

DEFAULTS = {"cpu": {"archive": "docs/study/v2", "docs": "docs/results.md"}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(DESIGNS), default="quick", metavar="quick|cpu|gpu")
    p.add_argument("--out", help="output dir (runs, evaluations, report.md)")
    p.add_argument("--lanes", type=int, default=None, metavar="N",
                   help="runs at a time, one thread each (default: the scale's; cpu: 2)")
    p.add_argument("--max-hours", type=float, default=None, metavar="H",
                   help="start no run after H hours (a rerun continues); 0 starts nothing")
    p.add_argument("--archive", metavar="DIR",
                   help="keep every evaluated run here without checkpoints and restore from it first "
                        "(cpu default: docs/study/v2); 'none' for no archive")
    p.add_argument("--docs", help="where the complete study's report goes, its figures next to it (cpu default: "
                                  "docs/results.md); never written while the study is partial")
    p.add_argument("--models", nargs="*", default=[], help="E1: more HF Llama dirs (or checkpoints, GGUF files)")
    p.add_argument("--bundle", metavar="DIR", help="prepare the gpu scale's data and wheels into DIR and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="run nothing: report what is there")
    return p


def _args(argv):
    p = _parser()
    args = p.parse_args(argv)
    design = DESIGNS[args.scale]
    args.lanes = design.lanes if args.lanes is None else args.lanes
    if args.lanes < 1:
        p.error(f"--lanes {args.lanes}: give 1 or more (the number of runs at a time)")
    if args.max_hours is not None and not args.max_hours >= 0:
        p.error(f"--max-hours {args.max_hours}: give 0 or more hours")
    if not args.out and not args.bundle:
        p.error("--out DIR is required: where the runs, evaluations and the report go")
    for key, val in DEFAULTS.get(args.scale, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.archive == "none":
        args.archive = None
    return args, design


def main(argv: list[str] | None = None) -> int:
    args, design = _args(argv)
    if args.bundle:
        return bundle(PLANS["gpu"], Path(args.bundle), args.dry_run)
    out = Path(args.out)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.dry_run:
        print(f"# scale {args.scale}, {args.lanes} lane(s): {design.about}")
        dry_run(design, out, print)
        return 0
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(out / "reproduce.log", "a") as f:
            f.write(msg + "\n")

    archive = Path(args.archive) if args.archive else None
    if archive is not None and archive.is_dir():
        restore(archive, out, log)
    res = {"failed": []}
    if not args.report_only and (args.max_hours is None or args.max_hours > 0):
        stage_e1(design, args.models, out, log, False)
        res = Lanes(design, out, log, args.lanes, args.max_hours, archive).run()
        log(f"  {res['started']} run(s) started" + (", then --max-hours stopped new ones" if res["stopped_by_clock"]
                                                    else "") + (f"; failed: {', '.join(res['failed'])}"
                                                                if res["failed"] else ""))
    elif not args.report_only:
        log("  --max-hours 0: no run started")
    t0 = time.time()
    report = write_report(design, args.scale, out, args.docs)
    record_stage(out, "report", t0, time.time())
    print(f"wrote {report}")
    if res["failed"]:
        print(f"error: {len(res['failed'])} run(s) failed twice (see {out / 'logs'}); rerun the same command to "
              "retry them", file=sys.stderr)
        return 1
    return 0


def write_report(design, scale: str, out: Path, docs: str | None) -> Path:
    """``OUT/report.md`` (partial or complete); when complete, with ``docs`` the report there too with its
    figure in the folder next to it."""
    prog = progress(design, out)
    e1 = sorted((out / "e1").glob("*.json"))
    e1_res = None
    if e1:
        e1_res = json.loads(e1[0].read_text())
    fig = plot_curves(collect(design, out), out / "figures" / "e4_val_loss.png")
    rel = "figures/e4_val_loss.png" if fig else None
    (out / "report.md").write_text(render(design, scale, out, prog, e1_res, rel))
    if prog["complete"] and docs:
        docs_p = Path(docs)
        fig_dir = docs_p.parent / docs_p.stem
        for old in fig_dir.glob("*.png"):  # figures of an earlier report that this one does not have
            if fig is None or old.name != fig.name:
                old.unlink()
        if fig:
            fig_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fig, fig_dir / fig.name)
        docs_p.write_text(render(design, scale, out, prog, e1_res, f"{docs_p.stem}/{fig.name}" if fig else None))
    return out / "report.md"


if __name__ == "__main__":
    sys.exit(main())
