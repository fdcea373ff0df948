"""Running the v2 study (:mod:`llama_jreg.study.design`): its runs one at a time per lane (``--lanes N``, one
thread each), in the design's fixed order, each evaluated as it finishes (``llama-jreg eval --unit-gain-lens``)
and archived. A stage that depends on the screening waits for it: a lane takes the first run whose inputs are
known, else waits for the runs in flight, else stops. A rerun resumes: a finished run with its evaluation is
skipped, an unfinished one continues (``resume=auto``). ``--max-hours H``: no run starts after H hours."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from llama_jreg.study.archive import archive_run
from llama_jreg.study.design import Design, Job, eval_done, jobs, screen_outcome
from llama_jreg.study.results import run_complete, run_result
from llama_jreg.study.run import _cli, _lane_env, _resolve, record_stage, show


def train_command(job: Job, out: Path, dry: bool = False) -> list[str]:
    return [*_cli(), "train", *[_resolve(o, dry) for o in job.train_args(out)]]


def eval_command(job: Job, out: Path) -> list[str]:
    return [*_cli(), "eval", str(job.run_dir(out)), "--unit-gain-lens", "--json", str(job.eval_json(out)),
            *job.eval_args]


def job_state(job: Job, out: Path) -> str:
    """``done`` (finished and evaluated), ``eval`` (finished, not evaluated) or ``train``."""
    run = job.run_dir(out)
    if not run_complete(run, job.stage):
        return "train"
    return "done" if eval_done(job, out, run_result(run, job.stage)["steps"]) is not None else "eval"


class Lanes:
    """The scheduler: :meth:`run` starts ``lanes`` threads that each take :meth:`next_job` until none is left."""

    def __init__(self, design: Design, out: Path, log, lanes: int = 2, max_hours: float | None = None,
                 archive: Path | None = None):
        self.design, self.out, self.log, self.lanes, self.archive = design, out, log, lanes, archive
        self.deadline = None if max_hours is None else time.time() + 3600 * max_hours
        self.cond = threading.Condition()
        self.taken: set[str] = set()
        self.inflight = 0
        self.started = 0
        self.failed: list[str] = []
        self.stopped_by_clock = False
        self.env = _lane_env(1)
        self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def next_job(self) -> tuple[Job, str] | None:
        """The first job in order that is neither taken nor done; waits while later stages depend on runs in
        flight; None when nothing is left (or the clock has run out)."""
        with self.cond:
            while True:
                todo, _ = jobs(self.design, screen_outcome(self.design, self.out))
                for job in todo:
                    if job.key in self.taken:
                        continue
                    state = job_state(job, self.out)
                    if state == "done":
                        self.taken.add(job.key)
                        if self.archive is not None:
                            archive_run(self.out, self.archive, job.rel, f"seed_{job.seed}")
                        continue
                    if self.deadline is not None and time.time() >= self.deadline:
                        self.stopped_by_clock = True
                        return None
                    self.taken.add(job.key)
                    self.inflight += 1
                    return job, state
                if self.inflight == 0:
                    return None
                self.cond.wait()

    def _call(self, cmd: list[str], logf: Path) -> int:
        with open(logf, "a") as f:
            f.write(f"$ {show(cmd)}\n")
            f.flush()
            return subprocess.run(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode

    def run_one(self, job: Job, state: str) -> bool:
        """Train (a failed run is rerun once with the same command), evaluate, archive; True on success."""
        logf = self.out / "logs" / job.rel / f"seed_{job.seed}.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if state == "train":
            self.log(f"  {job.key}: training (output in {logf})")
            rc = self._call(train_command(job, self.out), logf)
            if rc != 0:
                self.log(f"  {job.key}: exit {rc}; rerun once with the same command")
                rc = self._call(train_command(job, self.out), logf)
            record_stage(self.out, f"train:{job.key}", t0, time.time(), lanes=self.lanes, threads=1, rc=rc)
            if rc != 0:
                return False
        job.eval_json(self.out).parent.mkdir(parents=True, exist_ok=True)
        t1 = time.time()
        rc = self._call(eval_command(job, self.out), logf)
        record_stage(self.out, f"eval:{job.key}", t1, time.time(), lanes=self.lanes, threads=1, rc=rc)
        if rc != 0:
            return False
        if self.archive is not None:
            archive_run(self.out, self.archive, job.rel, f"seed_{job.seed}")
        self.log(f"  {job.key}: done in {time.time() - t0:.0f} s")
        return True

    def _lane(self) -> None:
        while (item := self.next_job()) is not None:
            job, state = item
            ok = False
            try:
                ok = self.run_one(job, state)
            finally:
                with self.cond:
                    self.inflight -= 1
                    self.started += 1
                    if not ok:
                        self.failed.append(job.key)
                    self.cond.notify_all()

    def run(self) -> dict:
        threads = [threading.Thread(target=self._lane, daemon=True) for _ in range(max(1, self.lanes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"started": self.started, "failed": self.failed, "stopped_by_clock": self.stopped_by_clock}


def progress(design: Design, out: Path) -> dict:
    """Per stage, how many of its runs (known so far) are evaluated and trained, and whether the list is final."""
    todo, final = jobs(design, screen_outcome(design, out))
    stages: dict[str, list[int]] = {}  # stage -> [evaluated, trained, known]
    for job in todo:
        cnt = stages.setdefault(job.stage, [0, 0, 0])
        state = job_state(job, out)
        cnt[0] += state == "done"
        cnt[1] += state != "train"
        cnt[2] += 1
    done = sum(c[0] for c in stages.values())
    return {"stages": stages, "final": final, "done": done, "total": len(todo),
            "complete": final and done == len(todo)}


def dry_run(design: Design, out: Path, log) -> None:
    """Print the commands of every stage (later stages for their first seed, with the rule that picks them)."""
    todo, _ = jobs(design, {s: s % 2 == 1 for s in range(1, design.max_seeds + 1)})  # an example outcome
    shown = set()
    for job in todo:
        if job.stage == "screen" and job.seed > 1 or (job.stage, job.arm) in shown:
            continue
        shown.add((job.stage, job.arm))
        log(f"$ {show(train_command(job, out, dry=True))}")
        log(f"$ {show(eval_command(job, out))}")
    d = design
    log(f"# screen: seeds 1-{d.seeds} (then +{d.block} at a time while fewer than {d.min_growers} grew, up to "
        f"{d.max_seeds}); arms: the first {d.n_arms} growing seeds; control: the first {d.n_control} non-growing; "
        f"continued: seeds 1-{d.continued_seeds}")
