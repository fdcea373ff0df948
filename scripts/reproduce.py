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
(``llama_jreg/analysis/study.py``). ``--docs docs/results.md`` also writes the report there, its figures in
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
    tier: int = 0  # the order runs start in: tier 0 (the key cells) before tier 1 (the grids)


@dataclass
class Plan:
    sweeps: list[Sweep] = field(default_factory=list)
    e1_models: list[str] = field(default_factory=lambda: [SMOLLM2])
    e1_seq_len: int = 256
    e1_num_seqs: int = 8
    about: str = ""
    lanes: int = 1  # parallel runs when --lanes is not given
    eval_args: list[str] = field(default_factory=list)  # extra `llama-jreg eval` arguments (quick: fewer batches)


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
           extra: tuple[str, ...] = (), name: str | None = None) -> list[Sweep]:
    """The study's cells of one experiment: the key comparison, lambda = 0 (``<name>_base``) against the
    paper-literal penalty (``jreg=paper``: 1 - cos(h_{L-1}, final_norm(h_L)), ``<name>_paper``) at lambda = 1
    on ``key_seeds``; then the paper penalty at lambda = 0.1 and 10 (``<name>_paper_grid``: with lambda = 1 a
    grid of 3) and our default penalty (``jreg=jump`` at lambda = 1, ``<name>_jump``) on ``grid_seeds``. Seeds
    pair across cells: seed k of every cell starts from the same initialisation and sees the same batches."""
    short, preset = _STUDY[experiment]
    name = name or short
    common = [*preset, "trainer.progress=false", *extra]
    return [Sweep(f"{name}_base", common + ["jreg=jump", "jreg.weight=0", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper", common + ["jreg=paper", "jreg.weight=1", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper_grid", common + ["jreg=paper", "jreg.weight=0.1,10", f"seed={grid_seeds}"],
                  experiment, tier=1),
            Sweep(f"{name}_jump", common + ["jreg=jump", "jreg.weight=1", f"seed={grid_seeds}"], experiment, tier=1)]


_CPU = {e: _cells(e) for e in ("continued", "jump_emergence", "induction")}
_QUICK = {"jump_emergence": ("trainer.max_steps=150", "trainer.jump_every=30"),
          "induction": ("trainer.max_steps=120", "schedule.warmup_steps=12"),
          "continued": ("trainer.max_steps=8", "trainer.jump_every=2", "trainer.eval_every=4",
                        "trainer.ckpt_every=8")}

def _gpu() -> list[Sweep]:
    """The gpu plan's sweeps, at most 5 runs each so that 16 processes share the work evenly: the key cells of
    jump_emergence (6 and 12 layers) and induction on seeds 1-10 (two sweeps each, ``_b`` = seeds 6-10), then
    the grids on seeds 1-5 (the paper penalty's two other lambdas as two sweeps)."""
    key = []
    for seeds, b in (("1,2,3,4,5", ""), ("6,7,8,9,10", "_b")):
        key += [Sweep(sw.name + b, sw.overrides, sw.experiment)
                for sw in (_cells("jump_emergence", seeds)[:2] + _cells("induction", seeds)[:2]
                           + [Sweep(sw.name, sw.overrides, "jump_emergence_12_layers") for sw in
                              _cells("jump_emergence", seeds, extra=("model.n_layers=12",), name="jed")[:2]])]
    grid = []
    for exp in ("jump_emergence", "induction"):
        paper_grid, jump = _cells(exp, grid_seeds="1,2,3,4,5")[2:]
        grid += [Sweep(f"{paper_grid.name}_{w}", [o.replace("0.1,10", w) for o in paper_grid.overrides], exp)
                 for w in ("0.1", "10")] + [jump]
    return key + grid


# --smoke: the same plan (sweeps, names, cells) with a tiny substitute for every run, one seed a cell, on CPU
_SMOKE = ["model.dim=64", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128", "data.seq_len=32",
          "data.micro_batch_size=2", "trainer.max_steps=4", "schedule.warmup_steps=1", "trainer.jump_every=2",
          "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.ckpt_every=4", "trainer.task_n=8",
          "trainer.device=cpu", "trainer.plots=false"]


def smoke(plan: Plan) -> Plan:
    """``plan`` with :data:`_SMOKE` replacing (or added to) every sweep's overrides and each seed list cut to
    its first seed: every sweep, cell and stage runs, in a minute or two on a CPU (tests/test_reproduce.py)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0]

    sweeps = []
    for sw in plan.sweeps:
        mine = {key(o): o for o in _SMOKE}
        ovs = [mine.pop(key(o), o) for o in sw.overrides]
        ovs = [f"seed={o.split('=', 1)[1].split(',')[0]}" if key(o) == "seed" else o for o in ovs]
        sweeps.append(Sweep(sw.name, ovs + list(mine.values()), sw.experiment))
    return Plan(sweeps, plan.e1_models, 64, 2, f"{plan.about} -- smoke substitute", min(plan.lanes, 2), ["--batches", "1"])


PLANS: dict[str, Plan] = {
    "quick": Plan([sw for e, extra in _QUICK.items() for sw in _cells(e, "1", "1", extra)[:2]],
                  eval_args=["--batches", "2"],
                  about="the cpu study's three experiments with one seed, lambda = 0 against the paper penalty "
                        "only, on shortened runs evaluated on 2 validation batches (a check of the pipeline, not "
                        "a result)"),
    # sweep order = the order `--lanes N` starts them in: the key cells (5 seeds) first, the longest
    # (continued) leading, then the grids (3 seeds)
    "cpu": Plan([_CPU[e][i] for i in (0, 1, 2, 3) for e in _CPU],
                about="the jump from scratch (experiment=jump_emergence), induction heads (experiment=induction) "
                      "and SmolLM2-135M continued (experiment=continued); lambda = 0 against the paper penalty at "
                      "lambda = 1 on 5 seeds each, the paper penalty at lambda = 0.1 and 10 and our default "
                      "(jump, lambda = 1) on 3 seeds (about 3.5 hours on 2 CPU cores with --lanes 2)"),
    "gpu": Plan(_gpu(), e1_models=[], lanes=16,
                about="one H200-class GPU without network, 16 runs at a time as processes sharing it: the cpu "
                      "study's from-scratch experiments with 10 seeds in the key cells and 5 in the grid, plus "
                      "jump_emergence with 12 layers (key cells only); no continued pre-training (SmolLM2's "
                      "538 MB of weights cannot travel in the 64 MiB a device call carries); data carried in "
                      "(--bundle); planned for <= 8 minutes, not yet run on a GPU"),
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
    trained = [r for r in rows if r["stage"].startswith("train:")]
    span = trained or rows  # the sweeps' span; without sweeps, the evaluation's and report's
    first = time.strftime("%Y-%m-%d %H:%M", time.gmtime(min(r["start"] for r in span)))
    last = time.strftime("%H:%M UTC", time.gmtime(max(r["end"] for r in span)))
    lanes = sorted({(r.get("lanes", 1), r.get("threads")) for r in trained})
    how = "; ".join(f"{n} lane(s)" + (f" of {t} thread(s) each" if t else "") for n, t in lanes)
    if not how:
        return (f"the training was not timed by this script (no sweep stage in timing.jsonl); {total / 3600:.2f} h "
                f"of evaluation and report ({first} to {last}); {train:.2f} h of training summed over the runs "
                "(their logged step times)")
    return (f"{total / 3600:.2f} h of running, training and evaluation (the sweeps ran {first} to {last} in {how}); "
            f"{train:.2f} h of training summed over the runs (their logged step times)")


# ----------------------------------------------------------------------------------------------- stages


def plan_jobs(plan: Plan, out: Path, only: set[str] | None = None) -> list[tuple[Sweep, list[str], str, Path]]:
    """Every run of the plan as (sweep, job overrides, job name, run dir), in the order lanes start them:
    the key cells (``Sweep.tier`` 0) before the grids, and within a tier seed by seed across the sweeps (seed 1
    of every key cell, then seed 2, ...), so a study stopped part-way has whole paired seeds."""
    from llama_jreg.train.command import expand_sweep

    jobs = []
    for k, sw in enumerate(plan.sweeps):
        if only and sw.name not in only:
            continue
        for i, (ovs, name) in enumerate(expand_sweep(sw.overrides)):
            jobs.append(((sw.tier, i, k), (sw, ovs, name, out / sw.name / name)))
    return [job for _, job in sorted(jobs, key=lambda j: j[0])]


def job_command(sw: Sweep, overrides: list[str], name: str, run_dir: Path, dry: bool = False) -> list[str]:
    """The one run ``train -m`` makes of this job of the sweep (same run dir, logger group and run name)."""
    return [*_cli(), "train", *[_resolve(o, dry) for o in overrides], "resume=auto", f'run.dir="{run_dir}"',
            f'logger.group="{sw.name}"', f'logger.run_name="{name}"']  # quoted: job names hold '='"


def _done(run: Path, experiment: str) -> bool:
    from llama_jreg.analysis.study import run_result

    try:
        return run_result(run, experiment)["complete"]
    except (OSError, ValueError, KeyError):
        return False


def stage_sweeps(plan: Plan, out: Path, log, dry: bool, only: set[str] | None, lanes: int = 1,
                 archive: Path | None = None) -> None:
    """Run the plan's runs (:func:`plan_jobs`) that are not complete, ``lanes`` at a time (each a ``train``
    process with ``cpus // lanes`` threads, its output in ``OUT/logs/<sweep>/<run>.log``; one lane: the default
    threads, output to the terminal). Each finished run is evaluated at once (:func:`evaluate`) and, with
    ``archive``, recorded there (:func:`archive_run`)."""
    for sw in plan.sweeps:
        if not only or sw.name in only:
            log(f"$ {_show(sweep_command(sw, out, dry))}")
    jobs = plan_jobs(plan, out, only)
    if dry:
        return
    for sw in plan.sweeps:  # the sweep index `train -m` writes, so that a sweep dir reads the same either way
        if not only or sw.name in only:
            from llama_jreg.train.command import expand_sweep

            (out / sw.name).mkdir(parents=True, exist_ok=True)
            index = {"sweep_dir": str(out / sw.name), "jobs": [{"name": n, "overrides": o, "run_dir": str(out / sw.name / n)}
                                                               for o, n in expand_sweep(sw.overrides)]}
            (out / sw.name / "sweep.json").write_text(json.dumps(index, indent=2))
    todo = [j for j in jobs if not _done(j[3], j[0].experiment)]
    log(f"  {len(jobs) - len(todo)} of {len(jobs)} run(s) complete; {len(todo)} to train, {lanes} at a time")
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // lanes) if lanes > 1 else None
    env = _lane_env(lanes)

    def one(job) -> int:
        sw, ovs, name, run_dir = job
        cmd = job_command(sw, ovs, name, run_dir)
        t0 = time.time()
        if threads:
            logf = out / "logs" / sw.name / f"{name}.log"
            logf.parent.mkdir(parents=True, exist_ok=True)
            log(f"  {sw.name}/{name}: started ({threads} thread(s), output in {logf})")
            with open(logf, "a") as f:
                f.write(f"$ {_show(cmd)}\n")
                f.flush()
                rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        else:
            log(f"$ {_show(cmd)}")
            rc = subprocess.run(cmd, env=env, check=False).returncode
        record_stage(out, f"train:{sw.name}/{name}", t0, time.time(), lanes=lanes, threads=threads, rc=rc)
        log(f"  {sw.name}/{name}: {time.time() - t0:.0f} s" + (f" (exit {rc})" if rc else ""))
        if rc == 0:
            evaluate(sw, run_dir, out, env, log, plan.eval_args)
            if archive is not None:
                archive_run(out, archive, sw.name, name)
        return rc

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        codes = list(pool.map(one, todo))
    failed = [f"{sw.name}/{name}" for (sw, _, name, _), rc in zip(todo, codes) if rc]
    if failed:
        raise SystemExit(f"error: run(s) {', '.join(failed)} failed (see the output above"
                         + (f" and {out / 'logs'}" if threads else "") + "); rerun the same command to resume")


# --archive DIR: the study's record, small enough to commit (no checkpoints), from which a fresh clone resumes
_ARCHIVE_SKIP = (".png", ".pt", ".safetensors", ".bin", ".tmp")


def archive_run(out: Path, archive: Path, sweep: str, name: str) -> bool:
    """Copy a complete, evaluated run into ``archive`` (``<sweep>/<run>/`` with the run dir's files, no
    checkpoints or figures, and ``eval/<sweep>/<run>.json``), and the study's ``timing.jsonl`` and E1 JSON.
    Returns False (copies nothing) while the run is incomplete or not evaluated."""
    run, js = out / sweep / name, out / "eval" / sweep / f"{name}.json"
    ev = _json(js)
    if ev is None or not run.is_dir():
        return False
    dst = archive / sweep / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():
        if f.is_file() and not f.name.endswith(_ARCHIVE_SKIP):
            shutil.copyfile(f, dst / f.name)
    if (out / sweep / "sweep.json").is_file():
        shutil.copyfile(out / sweep / "sweep.json", archive / sweep / "sweep.json")
    (archive / "eval" / sweep).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(js, archive / "eval" / sweep / js.name)
    _merge_lines(out / "timing.jsonl", archive / "timing.jsonl")
    for e1 in (out / "e1").glob("*.json"):
        (archive / "e1").mkdir(exist_ok=True)
        shutil.copyfile(e1, archive / "e1" / e1.name)
    return True


def _merge_lines(src: Path, dst: Path) -> None:
    """Append to ``dst`` the lines of ``src`` it lacks (both JSON-lines logs of the same study)."""
    if not src.is_file():
        return
    have = set(dst.read_text().splitlines()) if dst.is_file() else set()
    new = [line for line in src.read_text().splitlines() if line.strip() and line not in have]
    if new:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "a") as f:
            f.write("".join(line + "\n" for line in new))


def restore(archive: Path, out: Path, log) -> int:
    """Put the archived runs that ``out`` lacks (or holds incomplete) into ``out``, with their evaluations, the
    E1 JSON and the timing rows: a fresh clone then resumes the study where the archive ends. Returns how many
    runs were restored."""
    n = 0
    for ev in sorted(archive.glob("eval/*/*.json")):
        sweep, name = ev.parent.name, ev.stem
        src, dst = archive / sweep / name, out / sweep / name
        if not (src / "config.yaml").is_file() or (dst.is_dir() and _done(dst, "")):
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copyfile(f, dst / f.name)
        (out / "eval" / sweep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ev, out / "eval" / sweep / ev.name)
        if (archive / sweep / "sweep.json").is_file() and not (out / sweep / "sweep.json").is_file():
            shutil.copyfile(archive / sweep / "sweep.json", out / sweep / "sweep.json")
        n += 1
    for e1 in archive.glob("e1/*.json"):
        if not (out / "e1" / e1.name).is_file():
            (out / "e1").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(e1, out / "e1" / e1.name)
    _merge_lines(archive / "timing.jsonl", out / "timing.jsonl")
    if n:
        log(f"  restored {n} complete run(s) from {archive}")
    return n


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


def evaluate(sw: Sweep, run: Path, out: Path, env: dict, log, eval_args: list[str] = ()) -> dict | None:
    """``llama-jreg eval RUN --json OUT/eval/<sweep>/<run>.json`` of a complete run, unless that JSON exists
    for the run's final step; returns the evaluation (None while the run is incomplete)."""
    from llama_jreg.analysis.study import run_result

    res = run_result(run, sw.experiment)
    js = out / "eval" / sw.name / f"{run.name}.json"
    ev = _json(js)
    if res["complete"] and (ev is None or ev.get("step") != res["steps"]):
        cmd = [*_cli(), "eval", str(run), "--json", str(js), *eval_args]
        log(f"$ {_show(cmd)}")
        js.parent.mkdir(parents=True, exist_ok=True)
        with open(js.with_suffix(".txt"), "w") as f:
            subprocess.run(cmd, check=True, stdout=f, env=env)
        ev = _json(js)
    return ev if ev is not None and ev.get("step") == res["steps"] else None


def stage_eval(plan: Plan, out: Path, log, dry: bool, lanes: int = 1, archive: Path | None = None) -> list[dict]:
    """:func:`evaluate` every complete run, ``lanes`` at a time (each with ``cpus // lanes`` threads), then one
    result per run (``llama_jreg.analysis.study.run_result``), in plan order; with ``archive``, every evaluated
    run is recorded there."""
    from concurrent.futures import ThreadPoolExecutor

    from llama_jreg.analysis.study import run_result

    t0 = time.time()
    items = [(sw, run) for sw in plan.sweeps for run in run_dirs(out, sw)]
    if dry:
        for sw, run in items:
            log(f"$ {_show([*_cli(), 'eval', str(run), '--json', str(out / 'eval' / sw.name / f'{run.name}.json')])}")
        log("$ llama-jreg eval RUN_DIR --json OUT/eval/<sweep>/<run>.json   (every run of the sweeps above)")
        return [run_result(run, sw.experiment) for sw, run in items]
    env = _lane_env(lanes)

    def one(item) -> dict:
        sw, run = item
        ev = evaluate(sw, run, out, env, log, plan.eval_args)
        if ev is not None and archive is not None:
            archive_run(out, archive, sw.name, run.name)
        return run_result(run, sw.experiment, ev)

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        results = list(pool.map(one, items))
    record_stage(out, "eval", t0, time.time(), lanes=lanes)
    log(f"  eval: {time.time() - t0:.0f} s")
    return results


def _lane_env(lanes: int) -> dict:
    """The environment of one of ``lanes`` parallel processes: ``cpus // lanes`` threads each (one lane: as is)."""
    env = dict(os.environ)
    if lanes > 1:
        threads = str(max(1, (os.cpu_count() or 1) // lanes))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


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


def data_configs(plan: Plan) -> list[str]:
    """The distinct data preparations the plan's runs read (one ``prepare-data`` override string each: the
    sweep's first job without its JREG and seed choices, with the experiment's SmolLM2 runs left out)."""
    from llama_jreg.train.command import expand_sweep

    seen: list[str] = []
    for sw in plan.sweeps:
        job = expand_sweep(sw.overrides)[0][0]
        keep = " ".join(o for o in job if not o.startswith(("jreg", "seed=", "trainer.", "tasks=", "init_from=")))
        if SMOLLM2 not in " ".join(job) and keep not in seen:
            seen.append(keep)
    return seen


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=sorted(PLANS), default="quick", metavar="quick|cpu|gpu")
    p.add_argument("--out", help="output dir (runs, eval JSON, results.json, report.md); not with --bundle")
    p.add_argument("--models", nargs="*", default=[], help="E1: more HF Llama dirs (or checkpoints, GGUF files)")
    p.add_argument("--docs", help="also write the report here (e.g. docs/results.md), its figures next to it")
    p.add_argument("--readme", help="also put the summary table into this README between its results-summary "
                                    "markers")
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
    args = p.parse_args(argv)
    plan = smoke(PLANS[args.scale]) if args.smoke else PLANS[args.scale]
    args.lanes = plan.lanes if args.lanes is None else args.lanes
    if args.lanes < 1:
        p.error(f"--lanes {args.lanes}: give 1 or more (the number of sweeps run at a time)")
    if args.readme:
        text = Path(args.readme).read_text(encoding="utf-8") if Path(args.readme).is_file() else ""
        if README_START not in text or README_END not in text:
            p.error(f"--readme {args.readme}: no results-summary block; add the lines {README_START} and "
                    f"{README_END} where the table goes")
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
        from llama_jreg.train.command import expand_sweep

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


if __name__ == "__main__":
    sys.exit(main())
