"""Kill -9 trials: SIGKILL a tiny real training run at random moments (some inside a checkpoint save), resume
with ``resume=auto`` until it finishes, and check the result against one uninterrupted run.

    python scripts/kill9_trials.py --trials 20 --seed 0            # a table + a PASS/FAIL summary
    python scripts/kill9_trials.py --trials 3 --seed 1 --steps 12  # quicker
    python scripts/kill9_trials.py --trials 5 --format sharded     # sharded checkpoints (state/, DCP)
    python scripts/kill9_trials.py --trials 5 --async              # sharded, written in the background
                                                                   # (trainer.async_checkpoint=true)

Every launch is the real CLI entry (``llama_jreg.cli.main(["train", ...])``, as ``python -m llama_jreg train``
runs it) in a fresh process, started by this script in ``--child`` mode, which adds two things and nothing
else to the process:

* a slow disk: ``os.fsync`` sleeps ``--fsync-delay`` seconds first (default 20 ms; a save calls it ~10 times),
  so that a checkpoint save is a window a kill can honestly land in; the numbers computed are unchanged;
* one line ``KILL9-RESUME <checkpoint>`` on stderr when the trainer loads a checkpoint (observation only).

Kinds of kill (chosen at random per kill):

* ``random``  - after a random number of logged steps, plus a random 0-150 ms;
* ``in-save`` - after a random number of logged steps, wait until a ``checkpoints/step_*.tmp-*`` directory
  exists (a save is in progress), then a random 0-150 ms more (so some kills fall after the rename, in the
  keep-last clean-up, or in the next step);
* ``in-background`` - (``--async`` only) after a random number of logged steps, wait until a save is being
  written in the background while training goes on (a ``step_N.tmp-*`` dir exists and metrics.jsonl has rows
  past step N), then a random 0-150 ms more;
* ``early``   - (resume launches only) a random 0-1.5 x the measured start-up time after launch: during
  imports, resume discovery, checkpoint loading or the metrics clean-up.

With ``--async`` the shards are written in the background while training goes on, so an ``in-save`` kill
often lands some steps after the save began: the table marks such a kill ``BACKGROUND`` (a ``step_N.tmp-``
dir was left behind while metrics.jsonl already had rows past step N).

After every kill we record whether a ``.tmp-`` / ``.old-`` directory was left behind (the kill landed inside
a save), and compute *independently of the package* (our own sha256 of every file in the manifest) which
checkpoint is the newest complete one; the next launch must resume exactly from it.

A trial passes when, at the end:

1. every launch resumed from the newest complete checkpoint (or started fresh when there was none);
2. no ``.tmp-`` / ``.old-`` leftover remains and every remaining checkpoint verifies;
3. metrics.jsonl has exactly one train row per step 1..N and ``loss, lm_loss, jreg_loss, grad_norm, lr,
   tokens`` equal the uninterrupted run's bit for bit (so do the jump rows' ``psi`` and eval ``val_loss``);
4. in every remaining checkpoint the loader cursor is ``step x global_batch`` and equals the uninterrupted
   run's at that step, and ``tokens`` matches (no sample repeated or skipped);
5. the final weights equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TINY = [
    "model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
    "model.ffn_dim=128", "model.vocab_size=128", "model.max_seq_len=64",
    "data=induction", "data.seq_len=32", "data.micro_batch_size=2", "data.induction.num_train=4096",
    "data.induction.num_val=16", "trainer.global_batch_size=4",  # 2 micro-batches per step
    "trainer.log_every=1", "trainer.jump_every=3", "trainer.eval_every=5", "trainer.eval_batches=2",
    "trainer.progress=false", "schedule=cosine", "schedule.warmup_steps=3", "optim.lr=3e-3",
    "jreg.weight=0.1",
]
GLOBAL_BATCH = 4
SEQ_LEN = 32
TRAIN_KEYS = ("loss", "lm_loss", "jreg_loss", "grad_norm", "lr", "tokens")


# ------------------------------------------------------------------------------------------- child process


def child_main(argv: list[str]) -> int:
    """The launched process: the real CLI, with a slow fsync and a resume announcement."""
    delay = float(os.environ.get("KILL9_FSYNC_DELAY", "0"))
    if delay > 0:
        real_fsync = os.fsync

        def slow_fsync(fd):
            time.sleep(delay)
            return real_fsync(fd)

        os.fsync = slow_fsync
    import torch

    torch.set_num_threads(1)
    from llama_jreg import checkpoint
    from llama_jreg.cli import main

    real_load = checkpoint.CheckpointManager.restore

    def announced_load(self, path):
        print(f"KILL9-RESUME {path}", file=sys.stderr, flush=True)
        return real_load(self, path)

    checkpoint.CheckpointManager.restore = announced_load
    return main(["train", *argv])


# ------------------------------------------------------------------------------------------- inspection


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


REQUIRED = ("scheduler.json", "trainer_state.json", "rng_rank0.pt", "loader_rank0.json", "config.yaml",
            "data_fingerprint")
REQUIRED_MODEL = {"full": ("model.safetensors", "optimizer.pt"),
                  "sharded": ("state/.metadata", "state/__0_0.distcp")}  # one process: one shard file
FORMAT = "full"  # trainer.checkpoint_format of every launch (run_trials sets it)
ASYNC = False  # trainer.async_checkpoint of every launch (run_trials sets it)


def complete(ckpt: Path) -> bool:
    """Our own check (not the package's): a manifest listing the required files, each matching its sha256."""
    try:
        files = json.loads((ckpt / "manifest.json").read_text())["files"]
        if not set(REQUIRED) | set(REQUIRED_MODEL[FORMAT]) <= set(files):
            return False
        return all((ckpt / n).is_file() and (ckpt / n).stat().st_size == m["bytes"] and sha256(ckpt / n) == m["sha256"]
                   for n, m in files.items())
    except (OSError, ValueError, KeyError):
        return False


def step_dirs(run: Path) -> list[Path]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and len(p.name) == 13)


def leftovers(run: Path) -> list[str]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def newest_complete(run: Path) -> Path | None:
    for p in reversed(step_dirs(run)):
        if complete(p):
            return p
    return None


def read_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"kind": "CORRUPT"})
    return out


def count_train_rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    try:
        return path.read_text().count('"kind": "train"')
    except OSError:
        return 0


def _read_model(ckpt: Path) -> dict:
    """The model tensors of a checkpoint, read with safetensors / torch.distributed.checkpoint directly."""
    if not (ckpt / "state").is_dir():
        from safetensors.torch import load_file

        return load_file(str(ckpt / "model.safetensors"))
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    reader = dcp.FileSystemReader(str(ckpt / "state"))
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in reader.read_metadata().state_dict_metadata.items()
          if k.startswith("model.") and hasattr(m, "size")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, storage_reader=reader, no_dist=True)
    sd.pop("model.output.weight", None)  # tied to tok_embeddings (the full format stores it once)
    return {k[len("model."):]: v for k, v in sd.items()}


def weights_digest(ckpt: Path) -> str:
    sd = _read_model(ckpt)
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def snapshot(run: Path) -> dict:
    """What an observer can say about a finished run: rows by step and per-checkpoint loader/token state."""
    rows = read_rows(run)
    ckpts = {}
    for p in step_dirs(run):
        step = int(p.name[5:])
        try:
            loader = json.loads((p / "loader_rank0.json").read_text())
            state = json.loads((p / "trainer_state.json").read_text())
            ckpts[step] = {"cursor": loader["cursor"], "tokens": state["tokens"], "complete": complete(p)}
        except (OSError, ValueError, KeyError):
            ckpts[step] = {"cursor": None, "tokens": None, "complete": False}
    return {"rows": rows, "ckpts": ckpts}


# ------------------------------------------------------------------------------------------- launches


def overrides(run: Path, steps: int, ckpt_every: int, keep_last: int) -> list[str]:
    return [*TINY, f"run.dir={run}", f"trainer.max_steps={steps}", f"trainer.ckpt_every={ckpt_every}",
            f"trainer.keep_last={keep_last}", f"trainer.checkpoint_format={FORMAT}",
            f"trainer.async_checkpoint={str(ASYNC).lower()}", "resume=auto"]


CODE = REPO  # where the launched processes import llama_jreg from (run_trials points it at a frozen copy)


def snapshot_code(work: Path) -> Path:
    """Copy llama_jreg/ and configs/ into the work dir: every launch of every trial runs the same code even
    when the checkout changes meanwhile (otherwise an edit between the reference and a trial shows up as a
    difference that has nothing to do with kills)."""
    dst = work / "code"
    shutil.rmtree(dst, ignore_errors=True)
    for name in ("llama_jreg", "configs"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def code_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "llama_jreg", "configs"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}"
    except OSError:
        return "unknown"


def launch(args: list[str], fsync_delay: float, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(CODE), WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", KILL9_FSYNC_DELAY=str(fsync_delay),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    f = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *args], cwd=CODE, env=env,
                            stdout=f, stderr=f, start_new_session=True)


def resumed_from(log_text: str) -> str | None:
    found = [line.split(" ", 1)[1].strip() for line in log_text.splitlines() if line.startswith("KILL9-RESUME ")]
    return found[-1] if found else None


@dataclass
class Kill:
    kind: str
    after_rows: int  # train rows in metrics.jsonl when the kill was sent
    in_save: bool  # a .tmp-/.old- directory was left behind (the process died inside a checkpoint save)
    leftovers: list[str]
    newest_complete: int  # step of the newest complete checkpoint after the kill (0 = none)
    partial_step_dirs: list[str]  # step_* dirs that are not complete (e.g. an interrupted keep-last deletion)
    background: bool = False  # a step_N.tmp- dir was left while training had already logged rows past step N


@dataclass
class Trial:
    index: int
    kills: list[Kill] = field(default_factory=list)
    resumes: list[tuple[int, int]] = field(default_factory=list)  # (expected step, actual step) per launch
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def _wait_rows(run: Path, proc: subprocess.Popen, n: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if count_train_rows(run) >= n:
            return True
        time.sleep(0.005)
    return False


def _wait_tmp(run: Path, proc: subprocess.Popen, timeout: float) -> bool:
    root = run / "checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if any(".tmp-" in n for n in os.listdir(root)):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    return False


def _wait_background(run: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Until a ``step_N.tmp-`` dir exists while metrics.jsonl has rows past step N (an asynchronous save is
    being written while training goes on)."""
    root = run / "checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            steps = [int(n[5:13]) for n in os.listdir(root) if n.startswith("step_") and ".tmp-" in n]
        except FileNotFoundError:
            steps = []
        if steps and count_train_rows(run) > min(steps):
            return True
        time.sleep(0.002)
    return False


def run_reference(work: Path, steps: int, ckpt_every: int, keep_last: int, fsync_delay: float) -> tuple[dict, float]:
    run = work / "reference"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.time()
    proc = launch(overrides(run, steps, ckpt_every, keep_last), fsync_delay, work / "reference.log")
    rc = proc.wait(timeout=900)
    if rc != 0:
        raise SystemExit(f"reference run failed (exit {rc}); see {work / 'reference.log'}")
    snap = snapshot(run)
    snap["weights"] = weights_digest(step_dirs(run)[-1])
    # start-up time: launch -> first train row, measured separately on a probe run
    return snap, time.time() - t0


def measure_startup(work: Path, steps: int, ckpt_every: int, keep_last: int, fsync_delay: float) -> float:
    run = work / "probe"
    shutil.rmtree(run, ignore_errors=True)
    proc = launch(overrides(run, steps, ckpt_every, keep_last), fsync_delay, work / "probe.log")
    t0 = time.time()
    _wait_rows(run, proc, 1, 300)
    startup = time.time() - t0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(run, ignore_errors=True)
    return startup


def _drive(proc, k: int, n_kills: int, rng: random.Random, run: Path, steps: int, kinds, startup: float,
           left_before: set, trial: Trial) -> None:
    """Launch ``k`` of a trial: kill it (the first ``n_kills`` launches) or let it finish (the last)."""
    if k == n_kills:
        rc = proc.wait(timeout=900)
        if rc != 0:
            trial.problems.append(f"final launch exited {rc}")
        return
    done_rows = count_train_rows(run)
    kind = rng.choice([x for x in kinds if x != "early" or k > 0] or ["random"])
    target = min(steps - 1, max(rng.randint(1, max(1, steps - 2)), done_rows + 1))
    if kind == "early":
        time.sleep(rng.uniform(0, 1.5 * startup))
    elif kind == "random":
        _wait_rows(run, proc, target, 600)
        time.sleep(rng.uniform(0, 0.15))
    elif kind == "in-background":
        _wait_rows(run, proc, target, 600)
        _wait_background(run, proc, 600)
        time.sleep(rng.uniform(0, 0.15))
    else:  # in-save
        _wait_rows(run, proc, target, 600)
        _wait_tmp(run, proc, 600)
        time.sleep(rng.uniform(0, 0.15))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [x for x in leftovers(run) if x not in left_before]  # this process's own leftovers
    newest = newest_complete(run)
    partial = [p.name for p in step_dirs(run) if not complete(p)]
    rows_now = count_train_rows(run)
    background = any(".tmp-" in x and rows_now > int(x[5:13]) for x in left)
    trial.kills.append(Kill(kind, rows_now, bool(left), left, int(newest.name[5:]) if newest else 0,
                            partial, background))


def run_trial(i: int, rng: random.Random, work: Path, ref: dict, steps: int, ckpt_every: int, keep_last: int,
              fsync_delay: float, startup: float, max_kills: int,
              kinds: tuple[str, ...] = ("random", "in-save", "early")) -> Trial:
    trial = Trial(i)
    t0 = time.time()
    run = work / f"trial_{i:03d}"
    shutil.rmtree(run, ignore_errors=True)
    log = work / f"trial_{i:03d}.log"
    log.unlink(missing_ok=True)
    n_kills = rng.randint(1, max_kills)
    args = overrides(run, steps, ckpt_every, keep_last)
    for k in range(n_kills + 1):
        expected = newest_complete(run)
        expected_step = int(expected.name[5:]) if expected else 0
        start_len = log.stat().st_size if log.exists() else 0
        left_before = set(leftovers(run))
        proc = launch(args, fsync_delay, log)
        try:
            _drive(proc, k, n_kills, rng, run, steps, kinds, startup, left_before, trial)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_bytes()[start_len:].decode(errors="replace")
        got = resumed_from(text)
        got_step = int(Path(got).name[5:]) if got else 0
        if got is None and expected_step > 0 and k < n_kills:
            got_step = None  # killed before it loaded a checkpoint (or before it could): nothing to compare
        if got_step is not None:
            trial.resumes.append((expected_step, got_step))
            if got_step != expected_step:
                trial.problems.append(f"launch {k + 1} resumed from step {got_step}, newest complete was {expected_step}")
    trial.problems += check_final(run, ref, steps)
    trial.seconds = time.time() - t0
    return trial


def check_final(run: Path, ref: dict, steps: int) -> list[str]:
    problems = []
    if leftovers(run):
        problems.append(f"leftovers after the final run: {leftovers(run)}")
    snap = snapshot(run)
    if any(r.get("kind") == "CORRUPT" for r in snap["rows"]):
        problems.append("metrics.jsonl has an unreadable line")
    for kind, keys in (("train", TRAIN_KEYS), ("jump", ("psi", "val_psi")), ("eval", ("val_loss",))):
        got = [r for r in snap["rows"] if r.get("kind") == kind]
        want = [r for r in ref["rows"] if r.get("kind") == kind]
        if [r["step"] for r in got] != [r["step"] for r in want]:
            problems.append(f"{kind} rows at steps {[r['step'] for r in got]}, expected {[r['step'] for r in want]}")
            continue
        for g, w in zip(got, want):
            for key in keys:
                if g.get(key) != w.get(key):
                    problems.append(f"{kind} step {g['step']}: {key}={g.get(key)!r} != {w.get(key)!r}")
    train_steps = [r["step"] for r in snap["rows"] if r.get("kind") == "train"]
    if train_steps != list(range(1, steps + 1)):
        problems.append("train rows are not exactly steps 1..N once each")
    for step, c in snap["ckpts"].items():
        if not c["complete"]:
            problems.append(f"step_{step:08d} is not complete")
        if c["cursor"] != step * GLOBAL_BATCH:
            problems.append(f"step_{step:08d}: loader cursor {c['cursor']} != {step * GLOBAL_BATCH}")
        if c["tokens"] != step * GLOBAL_BATCH * SEQ_LEN:
            problems.append(f"step_{step:08d}: tokens {c['tokens']} != {step * GLOBAL_BATCH * SEQ_LEN}")
        if step in ref["ckpts"] and ref["ckpts"][step]["cursor"] != c["cursor"]:
            problems.append(f"step_{step:08d}: cursor differs from the uninterrupted run")
    final = [p for p in step_dirs(run) if p.name == f"step_{steps:08d}"]
    if not final:
        problems.append("no final checkpoint")
    elif weights_digest(final[0]) != ref["weights"]:
        problems.append("final weights differ from the uninterrupted run")
    return problems


# ------------------------------------------------------------------------------------------- report


def table(trials: list[Trial]) -> str:
    lines = ["| trial | kills (kind @ train rows; in save?; leftovers) | resumed from (expected/actual) | result | s |",
             "|---:|---|---|---|---:|"]
    for t in trials:
        kills = "; ".join(f"{k.kind} @ {k.after_rows}{' IN SAVE ' + ','.join(x.split('.')[-1] for x in k.leftovers) if k.in_save else ''}"
                          + (" BACKGROUND" if k.background else "")
                          + (f" partial:{','.join(k.partial_step_dirs)}" if k.partial_step_dirs else "")
                          for k in t.kills)
        res = ", ".join(f"{e}/{a}" for e, a in t.resumes)
        result = "PASS" if t.ok else "FAIL: " + "; ".join(t.problems[:3])
        lines.append(f"| {t.index} | {kills} | {res} | {result} | {t.seconds:.0f} |")
    return "\n".join(lines)


def summary(trials: list[Trial]) -> str:
    kills = [k for t in trials for k in t.kills]
    passed = sum(t.ok for t in trials)
    verdict = "PASS" if passed == len(trials) else "FAIL"
    return (f"{verdict}: {passed}/{len(trials)} trials passed; {len(kills)} kills "
            f"({sum(k.in_save for k in kills)} inside a checkpoint save, "
            f"{sum(k.background for k in kills)} of them during a background write while training went on, "
            f"{sum(k.kind == 'early' for k in kills)} during start-up/resume, "
            f"{sum(bool(k.partial_step_dirs) for k in kills)} left a partially deleted old checkpoint)")


def run_trials(trials: int, seed: int, steps: int = 24, ckpt_every: int = 3, keep_last: int = 2,
               fsync_delay: float = 0.02, max_kills: int = 2, workdir: Path | None = None,
               keep: bool = False, log=print, kinds: tuple[str, ...] = ("random", "in-save", "early"),
               fmt: str = "full", async_save: bool = False) -> list[Trial]:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kill9_"))
    work.mkdir(parents=True, exist_ok=True)
    global CODE, FORMAT, ASYNC
    CODE = snapshot_code(work)
    FORMAT, ASYNC = ("sharded" if async_save else fmt), async_save
    log(f"work dir {work}; code {code_version()} (frozen copy in {CODE}); {FORMAT} checkpoints"
        f"{' written in the background' if ASYNC else ''}; {trials} trials, seed {seed}, "
        f"{steps} steps, ckpt_every {ckpt_every}, keep_last {keep_last}, fsync delay {fsync_delay * 1000:.0f} ms")
    if not ASYNC:
        kinds = tuple(k for k in kinds if k != "in-background")
    ref, ref_s = run_reference(work, steps, ckpt_every, keep_last, fsync_delay)
    startup = measure_startup(work, steps, ckpt_every, keep_last, fsync_delay) if "early" in kinds else 0.0
    log(f"reference run: {ref_s:.1f} s; start-up to the first step: {startup:.1f} s")
    rng = random.Random(seed)
    out = []
    for i in range(trials):
        t = run_trial(i, random.Random(rng.getrandbits(64)), work, ref, steps, ckpt_every, keep_last,
                      fsync_delay, startup, max_kills, kinds)
        log(f"trial {i}: {'PASS' if t.ok else 'FAIL'} ({t.seconds:.0f} s) kills="
            f"{[(k.kind, k.after_rows, k.in_save) for k in t.kills]} resumes={t.resumes} {t.problems[:3]}")
        if t.ok and not keep:
            shutil.rmtree(work / f"trial_{i:03d}", ignore_errors=True)
        out.append(t)
    if not keep and all(t.ok for t in out):
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=24, help="trainer.max_steps of every run")
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--fsync-delay", type=float, default=0.02, help="seconds each fsync sleeps (a slow disk)")
    p.add_argument("--max-kills", type=int, default=2, help="kills per trial: 1..N, at random")
    p.add_argument("--workdir", help="default: a fresh temporary dir (deleted when every trial passed)")
    p.add_argument("--keep", action="store_true", help="keep every run dir")
    p.add_argument("--format", choices=("full", "sharded"), default="full", help="trainer.checkpoint_format")
    p.add_argument("--async", dest="async_save", action="store_true",
                   help="trainer.async_checkpoint=true (implies --format sharded)")
    a = p.parse_args(argv)
    t0 = time.time()
    kinds = ("random", "in-save", "in-background", "early") if a.async_save else ("random", "in-save", "early")
    trials = run_trials(a.trials, a.seed, a.steps, a.ckpt_every, a.keep_last, a.fsync_delay, a.max_kills,
                        Path(a.workdir) if a.workdir else None, a.keep, kinds=kinds, fmt=a.format,
                        async_save=a.async_save)
    print()
    print(table(trials))
    print()
    print(summary(trials) + f"; {time.time() - t0:.0f} s in all")
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
