"""trainer.malloc_tuning: on CPU with glibc the trainer keeps freed memory in the heap, so the activations a
training step allocates and frees again every step stop page-faulting.

Each case runs in a fresh process: mallopt settings are process-wide and cannot be observed "before" in a
process where another test has already built a Trainer."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.test_train_helpers import REPO, env_for_subprocess

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning is glibc-only (elsewhere it is a documented no-op)")

# tiny's step shapes (8 x 256 tokens: 5.5 MiB MLP activations, a 32 MiB loss-chunk buffer, an 8 MiB head
# gradient) with 2 layers: what page-faults under glibc's defaults (its dynamic mmap threshold absorbs
# smaller blocks)
MODEL = ["model=tiny", "model.n_layers=2", "data=induction", "data.seq_len=256", "data.micro_batch_size=8",
         "data.induction.vocab_size=128", "data.induction.num_train=512", "data.induction.num_val=8",
         "trainer.device=cpu", "trainer.progress=false", "trainer.plots=false", "trainer.eval_batches=1"]

PROBE = """
import resource, sys
from llama_jreg.config import load_config
from llama_jreg.train.allocator import tune_cpu_allocator
from llama_jreg.train.trainer import Trainer
tr = Trainer(load_config(sys.argv[1:]))
batches = [tr._next_batches() for _ in range(2)]
for i in range(6):  # warm-up: the heap reaches its steady layout
    tr.train_step(batches[i % 2])
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(8):
    tr.train_step(batches[i % 2])
print(tr.malloc_tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 8, tune_cpu_allocator())
tr.close()
"""


def faults_per_step(tmp_path, tuning: str) -> tuple[str, int, str]:
    args = [*MODEL, f"run.dir={tmp_path / tuning}", f"trainer.malloc_tuning={tuning}"]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuned, n, again = proc.stdout.split()[-3:]
    return tuned, int(n), again


def test_tuning_removes_the_page_faults_of_the_training_step(tmp_path):
    off, n_off, _ = faults_per_step(tmp_path, "false")
    on, n_on, again = faults_per_step(tmp_path, "true")
    assert off == "False" and on == "True" and again == "True"  # a second call is a no-op that reports it
    assert n_off > 1000, n_off  # glibc's defaults: the step's large temporaries fault their pages in again
    assert n_on < n_off / 10, (n_on, n_off)
