"""Failures a long run meets: SIGTERM / SIGINT (save at the next step boundary, exit cleanly) and a full disk
(clear error, earlier checkpoints intact). Real subprocesses, real signals, a real write limit."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_jreg import checkpoint as ckpt
from tests.test_train_helpers import (
    DRIVER,
    REPO,
    TINY,
    env_for_subprocess,
    rows,
    run_inprocess,
    summary_from_stdout,
    tiny,
)


def _start(overrides, torchrun: int = 0, **kw) -> subprocess.Popen:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               str(DRIVER), *overrides]
    else:
        cmd = [sys.executable, str(DRIVER), *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env_for_subprocess(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    path = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        if path.is_file() and sum(1 for line in path.read_text().splitlines() if '"train"' in line) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("no training rows appeared")


def _summary(stdout: str) -> dict:
    return summary_from_stdout(stdout)


@pytest.mark.parametrize("sig,extra", [(signal.SIGTERM, ()), pytest.param(signal.SIGINT, (), marks=pytest.mark.slow),
                                       pytest.param(signal.SIGTERM, ("trainer.async_checkpoint=true",),
                                                    marks=pytest.mark.slow, id="SIGTERM-async")])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig, extra):
    """(async: the stop waits for the background write, so the reported checkpoint is complete)"""
    proc = _start(tiny(tmp_path, "trainer.max_steps=100000", "trainer.ckpt_every=100000", *extra))
    _wait_for_rows(tmp_path, 3, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    s = _summary(out)
    assert s["interrupted"] and s["stop_reason"] == sig.name and 3 <= s["steps"] < 100000
    assert "checkpoint saved" in out
    last = ckpt.list_checkpoints(tmp_path)[-1]
    assert last.name == f"step_{s['steps']:08d}" and ckpt.verify(last) is None
    # and the run continues from there
    s2 = run_inprocess(tiny(tmp_path, f"trainer.max_steps={s['steps'] + 2}", "trainer.ckpt_every=100000",
                            "resume=auto"))
    assert s2["steps"] == s["steps"] + 2
    assert [r["step"] for r in rows(tmp_path)] == list(range(1, s["steps"] + 3))


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("extra", [(), ("trainer.checkpoint_format=sharded",), ("trainer.async_checkpoint=true",)],
                         ids=["full", "sharded", "async"])
def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, extra):
    """(async: the background write of step 4 fails; the error comes when the step-6 save or the end of the
    run waits for it, with the same message, and its .tmp- dir is removed)"""
    run_inprocess(tiny(tmp_path, "trainer.max_steps=6", "trainer.steps_per_run=2", "trainer.ckpt_every=2", *extra))
    good = tmp_path / "checkpoints" / "step_00000002"
    assert ckpt.verify(good) is None
    # the weights file (~330 kB) no longer fits: the step-4 checkpoint cannot be written
    proc = _start(tiny(tmp_path, "trainer.max_steps=6", "trainer.ckpt_every=2", "resume=auto", *extra),
                  preexec_fn=_limit_file_size(100_000))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    msg = err.strip().splitlines()[-1]
    assert msg.startswith("error: could not write checkpoint") and "step_00000004" in msg
    assert "earlier checkpoints are intact" in msg
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"]
    assert ckpt.verify(good) is None
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_sigterm_to_a_two_process_job(tmp_path):
    """As SLURM's scancel / preemption does: SIGTERM to every process of the job (agent and workers)."""
    proc = _start(tiny(tmp_path, "trainer.max_steps=100000", "trainer.ckpt_every=100000",
                       "trainer.global_batch_size=4"), torchrun=2)
    _wait_for_rows(tmp_path, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    found = ckpt.list_checkpoints(tmp_path)
    assert found, (out, err[-3000:])
    last = found[-1]
    assert ckpt.verify(last) is None
    assert (last / "rng_rank1.pt").is_file() and (last / "loader_rank1.json").is_file()
    step = int(last.name.split("_")[1])
    assert step >= 3
    s = run_inprocess(tiny(tmp_path, f"trainer.max_steps={step + 2}", "trainer.ckpt_every=100000",
                           "trainer.global_batch_size=4", "resume=auto"))
    assert s["steps"] == step + 2


def test_sigterm_stops_a_sweep_not_just_its_current_run(tmp_path):
    """A preempted `train -m` sweep: the running job checkpoints and the sweep ends there (the later jobs are
    not started); the same command with resume=auto then finishes every job."""
    sweep = tmp_path / "sweep"
    over = [o for o in TINY if o != "trainer.plots=false"] + ["trainer.ckpt_every=100000", "seed=1,2",
                                                               f"hydra.sweep.dir={sweep}"]
    cmd = [sys.executable, "-m", "llama_jreg", "train", "-m", *over]
    proc = subprocess.Popen([*cmd, "trainer.max_steps=100000"], cwd=REPO, env=env_for_subprocess(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_rows(sweep / "0_seed=1", 3, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a sweep that went on to its next job would train for 100,000 steps
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "[sweep] stopped by SIGTERM in run 1/2 (0_seed=1); 1 run(s) not started" in out
    assert ckpt.list_checkpoints(sweep / "0_seed=1") and not (sweep / "1_seed=2").exists()
    steps = len(rows(sweep / "0_seed=1"))
    done = subprocess.run([*cmd, f"trainer.max_steps={steps + 1}", "resume=auto"], cwd=REPO,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in rows(sweep / "0_seed=1")] == list(range(1, steps + 2))
    assert [r["step"] for r in rows(sweep / "1_seed=2")] == list(range(1, steps + 2))


def test_a_run_stopped_before_its_first_row_still_ends_cleanly(tmp_path):
    """trainer.steps_per_run=1 with trainer.log_every=10 stops before any row is written: the summary (which
    plots the run when trainer.plots=true) must not fail on the missing metrics.jsonl."""
    over = [o for o in tiny(tmp_path) if o not in ("trainer.plots=false", "trainer.log_every=1")]
    s = run_inprocess([*over, "trainer.plots=true", "trainer.log_every=10", "trainer.max_steps=20",
                       "trainer.steps_per_run=1"])
    assert s["interrupted"] and s["steps"] == 1 and s["plots"] == []
    assert ckpt.list_checkpoints(tmp_path)[-1].name == "step_00000001"
