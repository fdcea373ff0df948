"""Shared helpers of the training tests (no tests here): tiny configs, in-process and torchrun runs, metrics readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "test_train_driver.py"

# a 2-layer, 64-wide Llama on synthetic induction data: ~0.1 s a step on one CPU core
TINY = [
    "model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
    "model.ffn_dim=128", "model.vocab_size=128", "model.max_seq_len=64",
    "data=induction", "data.seq_len=32", "data.micro_batch_size=2", "data.induction.num_train=4096",
    "data.induction.num_val=16",
    "trainer.log_every=1", "trainer.jump_every=3", "trainer.eval_every=5", "trainer.eval_batches=2",
    "trainer.progress=false", "trainer.plots=false", "schedule=cosine", "schedule.warmup_steps=3", "optim.lr=3e-3",
]


def tiny(run_dir, *extra: str) -> list[str]:
    """TINY for ``run_dir`` plus ``extra``; with another data source in ``extra`` (``data=local``, ...), without
    TINY's ``data.induction.*`` keys, which only ``data=induction`` reads (the config refuses them otherwise)."""
    base = TINY
    if any(e.startswith("data=") and e != "data=induction" for e in extra):
        base = [o for o in TINY if not o.startswith("data.induction.") and o != "data=induction"]
    return [*base, f"run.dir={run_dir}", *extra]


def run_inprocess(overrides: list[str]) -> dict:
    from llama_jreg.train.setup import build_config
    from llama_jreg.train.trainer import train

    return train(build_config(overrides))


def env_for_subprocess() -> dict:
    """The environment of a CLI subprocess in the tests: one thread, this checkout, offline hubs and wandb,
    and no LLAMA_JREG_DEBUG (so user errors are one line, not a traceback)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), WANDB_MODE="offline",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("LLAMA_JREG_DEBUG", None)
    return env


def run_torchrun(nproc: int, overrides: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N tests/train_driver.py OVERRIDES`` (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(DRIVER), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def rows(run_dir, kind: str = "train") -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def by_step(run_dir, key: str, kind: str = "train") -> dict[int, float]:
    return {r["step"]: r[key] for r in rows(run_dir, kind)}


def summary_from_stdout(stdout: str) -> dict:
    """The ``SUMMARY {json}`` line a test driver prints. Several ranks share one stdout pipe, so another
    process's output can follow the JSON on the same line: decode the first JSON value only."""
    import json

    line = next(x for x in stdout.splitlines() if x.startswith("SUMMARY "))
    return json.JSONDecoder().raw_decode(line[len("SUMMARY "):])[0]
