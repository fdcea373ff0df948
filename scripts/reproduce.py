"""Reproduce the paper's claims with our own runs: ``python scripts/reproduce.py --scale quick|cpu|gpu --out DIR``.

Drives the public CLI only (``llama-jreg train -m ...``, ``jump``, ``eval``), so every step below is also how
a user does it by hand. Reruns resume: a sweep is launched with ``resume=auto`` (a finished run is only
re-opened, an interrupted one continues from its last checkpoint), and an evaluation or E1 measurement whose
JSON exists (for the run's final step) is not repeated.

Experiments (``PLANS[scale]`` says which runs each scale makes):

* E1 open-weight jump: ``llama-jreg jump`` on SmolLM2-135M (plus ``--models`` HF dirs) on a fixed slice of the
  Shakespeare corpus (``OUT/e1/text.txt``): Psi per layer, zeta_L pre- and post-norm.
* E2/E3 ``text``: from scratch on Shakespeare, ``jreg=jump`` at several lambda (lambda = 0 is E2, the jump
  emerging unsuppressed), plus ``final`` and ``weighted`` at one lambda; every cell at every seed.
* E3 ``induction``: the same lambda sweep on synthetic bigram-with-trigger data, ``experiment=induction`` (induction
  accuracy).
* E4 ``continued``: continued pre-training of SmolLM2-135M with lambda = 0 and lambda > 0 (``init_from=``).

Then per run ``llama-jreg eval RUN_DIR --json OUT/eval/<sweep>/<run>.json`` (logit lens, early exit, induction
accuracy), and ``OUT/results.json`` (one object per run), ``OUT/report.md`` with ``OUT/figures/`` and the
summary table alone in ``OUT/headline.md`` (``llama_jreg/analysis/study.py``). ``--docs docs/results.md``
also writes the report there, its figures in ``docs/results/``. ``--dry-run`` prints the commands;
``--report-only`` skips training (and evaluates only the runs that are complete).

Run names are Hydra sweep job names (``<i>_seed=S_jreg.weight=W``); they must not change between versions of
this script, or a rerun starts the runs again instead of resuming them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = "@smollm2"  # stands for the cached SmolLM2-135M HF dir (llama_jreg.interop.smollm2.smollm2_dir())


@dataclass
class Sweep:
    """One ``llama-jreg train -m`` invocation: ``overrides`` (with comma lists) into ``OUT/<name>``."""

    name: str
    overrides: list[str]
    experiment: str = "text"


@dataclass
class Plan:
    sweeps: list[Sweep] = field(default_factory=list)
    e1_models: list[str] = field(default_factory=lambda: [SMOLLM2])
    e1_seq_len: int = 256
    e1_num_seqs: int = 8
    about: str = ""


def _text(steps: int, seeds: str, weights: str, extra_modes: str | None, lam_modes: float) -> list[Sweep]:
    """E2/E3 text: ``experiment=text`` (configs/experiment/text.yaml, the 500-step cpu recipe) with the step
    counts scaled to ``steps`` (at 500 they are the preset's own values)."""
    common = ["experiment=text", f"trainer.max_steps={steps}", f"schedule.warmup_steps={max(10, steps // 10)}",
              f"trainer.eval_every={max(25, steps // 5)}", f"trainer.ckpt_every={max(25, steps // 5)}",
              "trainer.progress=false"]
    sweeps = [Sweep("text_jump", common + ["jreg=jump", f"seed={seeds}", f"jreg.weight={weights}"])]
    if extra_modes:
        sweeps.append(Sweep("text_modes", common + [f"jreg={extra_modes}", f"seed={seeds}",
                                                    f"jreg.weight={lam_modes}"]))
    return sweeps


def _induction(seeds: str, weights: str, steps: int | None = None) -> list[Sweep]:
    """E3 induction: ``experiment=induction`` (configs/experiment/induction.yaml, the recipe that forms induction
    heads at lambda = 0, docs/recipes.md); ``steps`` shortens it (too short to form them: a smoke run only)."""
    common = ["experiment=induction", "trainer.progress=false"]
    if steps is not None:
        common += [f"trainer.max_steps={steps}", f"schedule.warmup_steps={max(10, steps // 10)}",
                   f"trainer.eval_every={max(25, steps // 5)}", f"trainer.ckpt_every={max(25, steps // 5)}"]
    return [Sweep("induction_jump", common + ["jreg=jump", f"seed={seeds}", f"jreg.weight={weights}"],
                  experiment="induction")]


def _continued(steps: int, seeds: str, weights: str, seq_len: int = 128, micro_batch: int = 4,
               extra: tuple[str, ...] = ()) -> list[Sweep]:
    """E4: SmolLM2-135M continued on Shakespeare with its own tokenizer (``init_from``), lambda = 0 vs > 0."""
    every = max(1, steps // 6)
    common = ["experiment=continued", f"init_from={SMOLLM2}", f"data.seq_len={seq_len}",
              f"data.micro_batch_size={micro_batch}", f"trainer.max_steps={steps}", f"trainer.jump_every={every}",
              f"trainer.eval_every={every}", f"trainer.ckpt_every={steps}", "trainer.progress=false", *extra]
    return [Sweep("e4_continued", common + ["jreg=jump", f"seed={seeds}", f"jreg.weight={weights}"],
                  experiment="continued")]


# the hidden `test` scale: the whole pipeline on 2-layer models in a minute or two (tests/test_reproduce.py)
_TEST_COMMON = ["model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
                "model.ffn_dim=128", "model.max_seq_len=64", "data.seq_len=32", "data.micro_batch_size=2",
                "trainer.max_steps=6", "optim.lr=3e-3", "schedule.warmup_steps=2", "trainer.jump_every=2",
                "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.ckpt_every=6", "trainer.keep_last=1",
                "trainer.progress=false", "trainer.plots=false"]

# the cpu study's experiments (issue 24): from scratch where the jump grows (cloze at the end), the induction
# recipe (induction accuracy from `llama-jreg eval`) and SmolLM2-135M continued (cloze at step 0 and at the end)
_END_TASKS = ["tasks=[cloze]", "trainer.task_every=100000"]  # at the end (and step 0 of init_from runs) only
_STUDY = {"jump_emergence": ("je", ["experiment=jump_emergence", *_END_TASKS]),
          "induction": ("ind", ["experiment=induction"]),
          "continued": ("cont", ["experiment=continued", f"init_from={SMOLLM2}", *_END_TASKS])}


def _cells(experiment: str, key_seeds: str = "1,2,3,4,5", grid_seeds: str = "1,2,3",
           extra: tuple[str, ...] = ()) -> list[Sweep]:
    """The study's cells of one experiment: the key comparison, lambda = 0 (``<name>_base``) against the
    paper-literal penalty (``jreg=paper``: 1 - cos(h_{L-1}, final_norm(h_L)), ``<name>_paper``) at lambda = 1
    on ``key_seeds``; then the paper penalty at lambda = 0.1 and 10 (``<name>_paper_grid``: with lambda = 1 a
    grid of 3) and our default penalty (``jreg=jump`` at lambda = 1, ``<name>_jump``) on ``grid_seeds``. Seeds
    pair across cells: seed k of every cell starts from the same initialisation and sees the same batches."""
    name, preset = _STUDY[experiment]
    common = [*preset, "trainer.progress=false", *extra]
    return [Sweep(f"{name}_base", common + ["jreg=jump", "jreg.weight=0", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper", common + ["jreg=paper", "jreg.weight=1", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper_grid", common + ["jreg=paper", "jreg.weight=0.1,10", f"seed={grid_seeds}"],
                  experiment),
            Sweep(f"{name}_jump", common + ["jreg=jump", "jreg.weight=1", f"seed={grid_seeds}"], experiment)]


_CPU = {e: _cells(e) for e in ("continued", "jump_emergence", "induction")}
_QUICK = {"jump_emergence": ("trainer.max_steps=150", "trainer.jump_every=30"),
          "induction": ("trainer.max_steps=120", "schedule.warmup_steps=12"),
          "continued": ("trainer.max_steps=8", "trainer.jump_every=2", "trainer.eval_every=4",
                        "trainer.ckpt_every=8")}

PLANS: dict[str, Plan] = {
    "quick": Plan([sw for e, extra in _QUICK.items() for sw in _cells(e, "1", "1", extra)[:2]],
                  about="the cpu study's three experiments with one seed, lambda = 0 against the paper penalty "
                        "only, on shortened runs (a check of the pipeline, not a result)"),
    # sweep order = the order `--lanes N` starts them in: the key cells (5 seeds) first, the longest
    # (continued) leading, then the grids (3 seeds)
    "cpu": Plan([_CPU[e][i] for i in (0, 1, 2, 3) for e in _CPU],
                about="the jump from scratch (experiment=jump_emergence), induction heads (experiment=induction) "
                      "and SmolLM2-135M continued (experiment=continued); lambda = 0 against the paper penalty at "
                      "lambda = 1 on 5 seeds each, the paper penalty at lambda = 0.1 and 10 and our default "
                      "(jump, lambda = 1) on 3 seeds (about 5 hours on 2 CPU cores with --lanes 2)"),
    # one CUDA GPU (bf16): model=small on FineWeb-Edu (streamed), seq 1024, 64 x 1024 tokens a step
    "gpu": Plan(
        [Sweep("text_jump", ["model=small", "data=hf", "data.seq_len=1024", "data.micro_batch_size=32",
                             "trainer.global_batch_size=64", "trainer.max_steps=3000", "trainer.precision=bf16",
                             "optim.lr=6e-4", "schedule.warmup_steps=200", "trainer.jump_every=100",
                             "trainer.eval_every=500", "trainer.eval_batches=16", "trainer.ckpt_every=500",
                             "trainer.keep_last=1", "trainer.progress=false", "jreg=jump", "seed=1,2",
                             "jreg.weight=0,0.01,0.1,1"]),
         *_induction("1,2", "0,0.1,1")]  # the cpu recipe as it is (fp32): it is the one known to form the heads
        + _continued(300, "1,2", "0,0.1,1", seq_len=512, micro_batch=16, extra=("trainer.precision=bf16",)),
        about="model=small on one CUDA GPU in bf16 (induction: experiment=induction as on CPU), 2 seeds per cell "
              "(a plan: not run on the development machine)"),
    "test": Plan([Sweep("text_jump", _TEST_COMMON + ["data=shakespeare", "jreg=jump", "seed=1,2", "jreg.weight=0,1"]),
                  Sweep("induction_jump", ["experiment=induction", *_TEST_COMMON, "model.vocab_size=64",
                                           "data.seq_len=64", "data.induction.num_val=8", "jreg=jump", "seed=1",
                                           "jreg.weight=0,1"], experiment="induction")],
                 e1_seq_len=64, e1_num_seqs=2, about="tests only"),
}
COMMANDS = {"cpu": "make reproduce"}


# ----------------------------------------------------------------------------------------------- helpers


def _cli() -> list[str]:
    return [sys.executable, "-m", "llama_jreg"]


def _resolve(value: str, dry: bool) -> str:
    if SMOLLM2 not in value:
        return value
    if dry:
        return value.replace(SMOLLM2, "$(python -c 'from llama_jreg.interop.smollm2 import smollm2_dir; "
                                      "print(smollm2_dir())')")
    from llama_jreg.interop.smollm2 import smollm2_dir

    return value.replace(SMOLLM2, str(smollm2_dir()))


def sweep_command(sw: Sweep, out: Path, dry: bool = False) -> list[str]:
    return [*_cli(), "train", "-m", *[_resolve(o, dry) for o in sw.overrides], "resume=auto",
            f"hydra.sweep.dir={out / sw.name}"]


def _show(cmd: list[str]) -> str:
    cmd = ["llama-jreg", *cmd[3:]] if cmd[:3] == _cli() else cmd
    return " ".join(c if "$(" in c else shlex.quote(c) for c in cmd)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def e1_text(out: Path) -> Path:
    """A fixed slice of the Shakespeare corpus (characters 20,000-80,000 of the first work in name order)."""
    path = out / "e1" / "text.txt"
    if not path.is_file():
        from llama_jreg.data.schema import DataConfig
        from llama_jreg.data.sources import cache_root, fetch_shakespeare

        first = sorted(fetch_shakespeare(cache_root(DataConfig())))[0]
        text = Path(first).read_text(encoding="utf-8")[20_000:80_000]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_dirs(out: Path, sw: Sweep) -> list[Path]:
    """The sweep's run dirs that exist (config.yaml + metrics.jsonl), in job order."""
    index = _json(out / sw.name / "sweep.json")
    names = [j["name"] for j in index["jobs"]] if index else sorted(p.name for p in (out / sw.name).glob("*"))
    return [out / sw.name / n for n in names
            if (out / sw.name / n / "config.yaml").is_file() and (out / sw.name / n / "metrics.jsonl").is_file()]


def record_stage(out: Path, stage: str, start: float, end: float, **extra) -> None:
    """Append one stage's start and end (epoch seconds) to ``OUT/timing.jsonl``: the study's wall time is
    measured by the script itself, over every invocation (a rerun that resumes adds its own rows)."""
    with open(out / "timing.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "start": round(start, 1), "end": round(end, 1), **extra}) + "\n")


def wall_time(results: list[dict], out: Path) -> str:
    """The study's wall time from ``OUT/timing.jsonl`` (the union of the stages' intervals, so parallel lanes
    count once and the pauses between invocations not at all), the lanes the sweeps ran in, and the training
    time summed over the runs (their logged step times)."""
    rows = []
    try:
        rows = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        pass
    train = sum(r["train_time_s"] for r in results) / 3600
    if not rows:
        return f"not recorded (no timing.jsonl); {train:.2f} h of training summed over the runs"
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((r["start"], r["end"]) for r in rows):
        if cur_e is None or s > cur_e:
            total += (cur_e - cur_s) if cur_e is not None else 0.0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    total += cur_e - cur_s
    first = time.strftime("%Y-%m-%d %H:%M", time.gmtime(min(r["start"] for r in rows)))
    last = time.strftime("%H:%M UTC", time.gmtime(max(r["end"] for r in rows)))
    lanes = sorted({(r.get("lanes", 1), r.get("threads")) for r in rows if r["stage"].startswith("train:")})
    how = "; ".join(f"{n} lane(s)" + (f" of {t} thread(s) each" if t else "") for n, t in lanes)
    if not how:
        return (f"the training was not timed by this script (no sweep stage in timing.jsonl); {total / 3600:.2f} h "
                f"of evaluation and report ({first} to {last}); {train:.2f} h of training summed over the runs "
                "(their logged step times)")
    return (f"{total / 3600:.2f} h of running ({first} to {last}; sweeps in {how}); "
            f"{train:.2f} h of training summed over the runs (their logged step times)")


# ----------------------------------------------------------------------------------------------- stages


def stage_sweeps(plan: Plan, out: Path, log, dry: bool, only: set[str] | None, lanes: int = 1) -> None:
    """Run the plan's sweeps, ``lanes`` at a time (each lane a ``train -m`` process with ``cpus // lanes``
    threads, its output in ``OUT/logs/<sweep>.log``; one lane: the default threads, output to the terminal)."""
    todo = []
    for sw in plan.sweeps:
        if only and sw.name not in only:
            continue
        cmd = sweep_command(sw, out, dry)
        log(f"$ {_show(cmd)}")
        todo.append((sw, cmd))
    if dry or not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // lanes) if lanes > 1 else None
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        (out / "logs").mkdir(exist_ok=True)

    def one(item) -> int:
        sw, cmd = item
        t0 = time.time()
        if threads:
            log(f"  {sw.name}: started in a lane of {threads} thread(s), output in {out / 'logs' / sw.name}.log")
            with open(out / "logs" / f"{sw.name}.log", "a") as f:
                rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        else:
            rc = subprocess.run(cmd, env=env, check=False).returncode
        record_stage(out, f"train:{sw.name}", t0, time.time(), lanes=lanes, threads=threads, rc=rc)
        log(f"  {sw.name}: {time.time() - t0:.0f} s" + (f" (exit {rc})" if rc else ""))
        return rc

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        codes = list(pool.map(one, todo))
    failed = [sw.name for (sw, _), rc in zip(todo, codes) if rc]
    if failed:
        raise SystemExit(f"error: sweep(s) {', '.join(failed)} failed (see the output above"
                         + (f" and {out / 'logs'}" if threads else "") + "); rerun the same command to resume")


def stage_e1(plan: Plan, models: list[str], out: Path, log, dry: bool) -> list[dict]:
    results = []
    t0 = time.time()
    text = out / "e1" / "text.txt" if dry else e1_text(out)
    for model in [*plan.e1_models, *models]:
        path = _resolve(model, dry)
        name = Path(path).name if model != SMOLLM2 else "SmolLM2-135M-Instruct"
        slug = _slug(name)
        js = out / "e1" / f"{slug}.json"
        cmd = [*_cli(), "jump", path, "--text", str(text), "--seq-len", str(plan.e1_seq_len), "--num-seqs",
               str(plan.e1_num_seqs), "--json", str(js)]
        if dry:
            log(f"$ {_show(cmd)}")
            continue
        if _json(js) is None:
            log(f"$ {_show(cmd)}")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = _json(js)
        res.update(name=name, slug=slug)
        results.append(res)
    if not dry:
        record_stage(out, "e1", t0, time.time())
        log(f"  e1: {time.time() - t0:.0f} s")
    return results


def stage_eval(plan: Plan, out: Path, log, dry: bool) -> list[dict]:
    """``llama-jreg eval`` of every complete run (skipped when its JSON is for the run's final step), then one
    result per run (``llama_jreg.analysis.study.run_result``)."""
    from llama_jreg.analysis.study import run_result

    results = []
    t0 = time.time()
    for sw in plan.sweeps:
        for run in run_dirs(out, sw):
            res = run_result(run, sw.experiment)
            js = out / "eval" / sw.name / f"{run.name}.json"
            cmd = [*_cli(), "eval", str(run), "--json", str(js)]
            if dry:
                log(f"$ {_show(cmd)}")
                continue
            ev = _json(js)
            if res["complete"] and (ev is None or ev.get("step") != res["steps"]):
                log(f"$ {_show(cmd)}")
                js.parent.mkdir(parents=True, exist_ok=True)
                with open(js.with_suffix(".txt"), "w") as f:
                    subprocess.run(cmd, check=True, stdout=f)
                ev = _json(js)
            if ev is not None and ev.get("step") == res["steps"]:
                res = run_result(run, sw.experiment, ev)
            results.append(res)
    if dry:
        log("$ llama-jreg eval RUN_DIR --json OUT/eval/<sweep>/<run>.json   (every run of the sweeps above)")
    else:
        record_stage(out, "eval", t0, time.time())
        log(f"  eval: {time.time() - t0:.0f} s")
    return results


README_START, README_END = "<!-- results-summary: written by scripts/reproduce.py --readme -->", "<!-- /results-summary -->"


def write_readme_table(readme: Path, table: str) -> None:
    """Put ``table`` between the README's results-summary markers (the same table as docs/results.md's
    Summary, so the README never shows numbers the report does not)."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {readme} has no {README_START} ... {README_END} block; add the two marker lines "
                         "where the table goes")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}", encoding="utf-8")


def stage_report(args, plan: Plan, out: Path, results: list[dict], e1: list[dict], argv_used: list[str]) -> Path:
    from llama_jreg.analysis.study import machine, make_plots, render_report, summary_table

    (out / "results.json").write_text(json.dumps({"e1": e1, "runs": results}, indent=1) + "\n")
    figs = make_plots(results, e1, out / "figures")
    command = COMMANDS.get(args.scale, f"python scripts/reproduce.py --scale {args.scale} --out {args.out}")
    meta = {
        "title": f"JREG reproduction study, `{args.scale}` scale",
        "command": command,
        "argv": "python scripts/reproduce.py " + " ".join(
            "'…'" if prev == "--note" else shlex.quote(a) for prev, a in zip(["", *argv_used[:-1]], argv_used)),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall": wall_time(results, out),
        "sweeps": [(sw.name, _show(sweep_command(sw, Path(args.out), dry=True))) for sw in plan.sweeps],
        "notes": [f"Scale `{args.scale}`: {plan.about}."] + list(args.note or [])
                 + [f"{sum(1 for r in results if not r['complete'])} run(s) still short of their last step "
                    "(marked running; not evaluated)."] * any(not r["complete"] for r in results),
    }
    # the summary table alone, for the README (its link points at docs/results.md)
    (out / "headline.md").write_text(summary_table(results) + "\n")
    if args.readme:
        write_readme_table(Path(args.readme), summary_table(results))
    report = out / "report.md"
    report.write_text(render_report(meta, results, e1, figs, lambda p: Path(p).relative_to(out).as_posix()))
    if args.docs:
        docs = Path(args.docs)
        fig_dir = docs.parent / docs.stem
        fig_dir.mkdir(parents=True, exist_ok=True)
        keep = {Path(p).name for p in figs.values()}
        for old in fig_dir.glob("*.png"):  # figures of an earlier report that this one no longer has
            if old.name not in keep:
                old.unlink()
        for p in figs.values():
            shutil.copyfile(p, fig_dir / Path(p).name)
        docs.write_text(render_report(meta, results, e1, figs, lambda p: f"{docs.stem}/{Path(p).name}"))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(PLANS), default="quick", metavar="quick|cpu|gpu")
    p.add_argument("--out", required=True, help="output dir (runs, eval JSON, results.json, report.md)")
    p.add_argument("--models", nargs="*", default=[], help="E1: more HF Llama dirs (or checkpoints, GGUF files)")
    p.add_argument("--docs", help="also write the report here (e.g. docs/results.md), its figures next to it")
    p.add_argument("--readme", help="also put the summary table into this README between its results-summary "
                                    "markers")
    p.add_argument("--note", action="append", metavar="TEXT",
                   help="a line for the report's notes, e.g. where some runs came from (repeatable)")
    p.add_argument("--only", help="train only these sweeps (comma-separated names, e.g. e4_continued)")
    p.add_argument("--lanes", type=int, default=1, metavar="N",
                   help="run N sweeps at a time, each with cpus/N threads (make reproduce: 2 on 2 cores)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="no training: evaluate complete runs and report")
    args = p.parse_args(argv)
    if args.lanes < 1:
        p.error(f"--lanes {args.lanes}: give 1 or more (the number of sweeps run at a time)")
    if args.readme:
        text = Path(args.readme).read_text(encoding="utf-8") if Path(args.readme).is_file() else ""
        if README_START not in text or README_END not in text:
            p.error(f"--readme {args.readme}: no results-summary block; add the lines {README_START} and "
                    f"{README_END} where the table goes")
    plan = PLANS[args.scale]
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
    if not args.report_only:
        stage_sweeps(plan, out, log, args.dry_run, only, args.lanes)
    e1 = stage_e1(plan, args.models, out, log, args.dry_run)
    results = stage_eval(plan, out, log, args.dry_run)
    if args.dry_run:
        return 0
    t0 = time.time()
    report = stage_report(args, plan, out, results, e1, list(sys.argv[1:] if argv is None else argv))
    record_stage(out, "report", t0, time.time())
    log(f"  report: {time.time() - t0:.0f} s")
    print(f"wrote {report}, {out / 'results.json'}" + (f", {args.docs}" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
