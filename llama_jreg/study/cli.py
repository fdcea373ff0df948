"""Reproduce the paper's claims with our own runs: ``python scripts/reproduce.py --scale quick|cpu|gpu --out DIR``.

Drives the public CLI only (``llama-jreg train -m ...``, ``jump``, ``eval``), so every step below is also how
a user does it by hand. Reruns resume: a sweep is launched with ``resume=auto`` (a finished run is only
re-opened, an interrupted one continues from its last checkpoint), and an evaluation or E1 measurement whose
JSON exists (for the run's final step) is not repeated.

Experiments (``PLANS[scale]`` says which runs each scale makes):

* E1 open-weight jump: ``llama-jreg jump`` on SmolLM2-135M (plus ``--models`` HF dirs) on a fixed slice of the
  Shakespeare corpus (``OUT/e1/text.txt``): Psi per layer, zeta_L pre- and post-norm.
* ``jump_emergence`` (E2, E3): from scratch, the recipe chosen for the jump to grow at lambda = 0
  (``experiment=jump_emergence``, docs/jump_emergence.md); cloze accuracy at the end.
* ``induction`` (E3): ``experiment=induction``, the recipe that forms induction heads (induction accuracy).
* ``continued`` (E4): SmolLM2-135M continued on Shakespeare (``experiment=continued``); cloze at step 0 and at
  the end.

Each experiment has the same cells: lambda = 0 against the paper-literal penalty (``jreg=paper``) at lambda = 1
on the key seeds, then the paper penalty at lambda = 0.1 and 10 and our default (``jreg=jump``, lambda = 1) on
fewer seeds. Then per run ``llama-jreg eval RUN_DIR --json OUT/eval/<sweep>/<run>.json`` (logit lens, early
exit, induction accuracy; ``--lanes`` at a time), and ``OUT/results.json`` (one object per run),
``OUT/report.md`` with ``OUT/figures/`` and the summary table alone in ``OUT/headline.md``
(``llama_jreg/study/``). ``--docs docs/results.md`` also writes the report there, its figures in
``docs/results/``. ``--dry-run`` prints the commands; ``--report-only`` skips training (and evaluates only the
runs that are complete).

The ``gpu`` scale runs where there is no network: ``--bundle DIR`` (here) prepares what it needs (the missing
wheels, the corpus and its token shards) into one folder to carry, and ``scripts/gpu_study.sh`` (there) runs
the study from it. ``--smoke`` runs any scale's plan with a tiny substitute for every run, on CPU.

Run names are Hydra sweep job names (``<i>_seed=S_jreg.weight=W``); they must not change between versions of
this script, or a rerun starts the runs again instead of resuming them.
"""


from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from llama_jreg.study.archive import restore
from llama_jreg.study.figures import make_plots
from llama_jreg.study.plan import PLANS, SMOLLM2, Plan, data_configs, smoke
from llama_jreg.study.report import publish, report_meta
from llama_jreg.study.run import record_stage, stage_e1, stage_eval, stage_sweeps
from llama_jreg.train.command import expand_sweep

REPO = Path(__file__).resolve().parents[2]  # the source checkout (scripts/prepare_gpu_carry.sh)


def stage_report(args, plan: Plan, out: Path, results: list[dict], e1: list[dict], argv_used: list[str]) -> Path:
    """``OUT/results.json``, the figures, then the report (:func:`llama_jreg.study.report.publish`)."""
    (out / "results.json").write_text(json.dumps({"e1": e1, "runs": results}, indent=1) + "\n")
    figs = make_plots(results, e1, out / "figures")
    meta = report_meta(args.scale, args.out, plan, results, out, args.note or [], argv_used)
    return publish(out, meta, results, e1, figs, args.docs)


def bundle(plan: Plan, dest: Path, dry: bool) -> int:
    """``--bundle DIR``: ``scripts/prepare_gpu_carry.sh DIR`` with the plan's data configs: the wheels the GPU
    image lacks and ``DIR/cache`` ($LLAMA_JREG_CACHE there) with the corpus and the token shards prepared."""
    if any(SMOLLM2 in " ".join(sw.overrides) for sw in plan.sweeps):
        raise SystemExit("error: this scale's plan loads SmolLM2-135M (538 MB), which a bundle cannot carry; "
                         "bundle --scale gpu")
    sets = data_configs(plan)
    cmd = ["bash", str(REPO / "scripts" / "prepare_gpu_carry.sh"), str(dest)]
    print(f"$ PREPARE={shlex.quote(';'.join(sets))} {' '.join(cmd)}")
    if dry:
        return 0
    env = dict(os.environ, PREPARE=";".join(sets), PYTHON=sys.executable)
    subprocess.run(cmd, env=env, check=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    print(f"bundle {dest}: {size:.1f} MiB (a device call carries 64 MiB with the working tree); there, from the "
          f"repository root: bash scripts/gpu_study.sh {dest}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The options of ``scripts/reproduce.py`` (the module docstring is its help)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(PLANS), default="quick", metavar="quick|cpu|gpu")
    p.add_argument("--out", help="output dir (runs, eval JSON, results.json, report.md); not with --bundle")
    p.add_argument("--models", nargs="*", default=[], help="E1: more HF Llama dirs (or checkpoints, GGUF files)")
    p.add_argument("--docs", help="also write the report here (e.g. docs/results.md), its figures next to it")
    p.add_argument("--note", action="append", metavar="TEXT",
                   help="a line for the report's notes, e.g. where some runs came from (repeatable)")
    p.add_argument("--only", help="train only these sweeps (comma-separated names, e.g. e4_continued)")
    p.add_argument("--lanes", type=int, default=None, metavar="N",
                   help="run N sweeps (and evaluations) at a time, each with cpus/N threads (make reproduce: 2 on "
                        "2 cores; default: the scale's, 12 for gpu, else 1)")
    p.add_argument("--smoke", action="store_true",
                   help="the scale's plan with a tiny substitute for every run (one seed a cell, on CPU)")
    p.add_argument("--bundle", metavar="DIR",
                   help="prepare what the scale needs where there is no network into DIR (wheels, corpus, token "
                        "shards; carry it to the GPU machine, run scripts/gpu_study.sh DIR there) and exit")
    p.add_argument("--archive", metavar="DIR",
                   help="keep every finished, evaluated run here without checkpoints (config, metrics, provenance, "
                        "eval JSON: small enough to commit) and restore from it first, so a fresh clone resumes "
                        "the study (make reproduce: docs/study/cpu)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="no training: evaluate complete runs and report")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    plan = smoke(PLANS[args.scale]) if args.smoke else PLANS[args.scale]
    args.lanes = plan.lanes if args.lanes is None else args.lanes
    if args.lanes < 1:
        p.error(f"--lanes {args.lanes}: give 1 or more (the number of sweeps run at a time)")
    if args.bundle:
        return bundle(plan, Path(args.bundle), args.dry_run)
    if not args.out:
        p.error("--out DIR is required: where the runs, evaluations and the report go")
    out = Path(args.out)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        if not args.dry_run:
            with open(out / "reproduce.log", "a") as f:
                f.write(msg + "\n")

    only = set(args.only.split(",")) if args.only else None
    if args.dry_run:
        n = sum(len(expand_sweep(sw.overrides)) for sw in plan.sweeps if not only or sw.name in only)
        log(f"# scale {args.scale}{' (smoke substitute)' if args.smoke else ''}: {len(plan.sweeps)} sweeps, {n} "
            f"runs, {args.lanes} at a time; {plan.about}")
    archive = Path(args.archive) if args.archive else None
    if archive is not None and not args.dry_run:
        restore(archive, out, log)
    if not args.report_only:
        stage_sweeps(plan, out, log, args.dry_run, only, args.lanes, archive)
    e1 = stage_e1(plan, args.models, out, log, args.dry_run)
    results = stage_eval(plan, out, log, args.dry_run, args.lanes, archive)
    if args.dry_run:
        return 0
    t0 = time.time()
    report = stage_report(args, plan, out, results, e1, list(sys.argv[1:] if argv is None else argv))
    record_stage(out, "report", t0, time.time())
    log(f"  report: {time.time() - t0:.0f} s")
    print(f"wrote {report}, {out / 'results.json'}" + (f", {args.docs}" if args.docs else ""))
    return 0
