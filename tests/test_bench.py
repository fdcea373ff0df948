"""The benchmark scripts run end to end and print their tables (tiny shapes; the numbers are not judged here --
speed is measured by the scripts themselves, never by a timed test)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.test_train_helpers import REPO, env_for_subprocess

pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: int = 600) -> str:
    env = env_for_subprocess()
    env.pop("OMP_NUM_THREADS", None)
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                       check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_bench_cpu_prints_every_table():
    out = _run(["scripts/bench_cpu.py", "--rounds", "1", "--steps", "1", "--warmup", "1", "--batch", "1",
                "--seq", "32", "--threads", "1", "--profile-steps", "1", "--jreg-toggle"])
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (transformers LlamaForCausalLM|ours[^|]*?) \| (.*)$",
                                                        out, re.M)}
    for name in ("transformers LlamaForCausalLM", "ours jreg=0.1 (jump)", "ours jreg=0"):
        assert name in rows, out
    # ours vs transformers ratio is printed for our rows
    assert re.search(r"^\| ours jreg=0 \| [\d.]+ \|.*\| [\d.]+x \| [\d.]+x \| [\d.]+x \|$", out, re.M), out
    share = re.search(r"^\| ours jreg=0\.1 \(jump\) \| ([\d.]+) \| ([\d.]+)% \|$", out, re.M)
    assert share and float(share.group(1)) > 0 and 0 < float(share.group(2)) < 100, out
    flop = re.search(r"-> a step doing only those FLOPs at that rate takes ([\d.]+) s", out)
    assert flop and float(flop.group(1)) > 0, out
    for name in ("transformers LlamaForCausalLM", "ours jreg=0"):
        assert re.search(rf"^\| {re.escape(name)} \| [\d.]+ \| \d+% \| [\d.]+x \|$", out, re.M), out
    # where the time goes: every kind of op for transformers and ours; the fused loss runs no log-softmax
    for kind in ("matmuls", "attention", "zero fills", "AdamW step", "everything else", "profiled step"):
        assert re.search(rf"^\| {kind}[^|]* \| \d+ \| \d+ \|$", out, re.M), out
    assert re.search(r"^\| log-softmax / NLL[^|]* \| \d+ \| 0 \|$", out, re.M), out
    # page faults and system time per step, for every variant; our trainer tuned glibc's malloc (process-wide)
    for name in ("transformers LlamaForCausalLM", "ours jreg=0"):
        assert re.search(rf"^\| {re.escape(name)} \| [\d,]+ \| [\d.]+ \|$", out, re.M), out
    assert re.search(r"^# glibc malloc tuning .*: (on -- process-wide|off)", out, re.M), out
    if "malloc tuning (trainer.malloc_tuning, llama_jreg/train/allocator.py): on" in out:
        # the reference loop ran in its own process; the one in this process (our allocator settings) too
        assert re.search(r"^\| transformers LlamaForCausalLM, our malloc tuning \| [\d.]+ \|", out, re.M), out
        assert re.search(r"^\| ours jreg=0 \| [\d.]+x \| [\d.]+x \| [\d.]+x \|$", out, re.M), out
    # the JREG A/B on one trainer (--jreg-toggle) next to the one between two trainers
    assert re.search(r"^\| ours step time \| [+-][\d.]+% \|", out, re.M), out
    assert re.search(r"^\| ours jreg=0\.1 \(jump\) vs the same trainer with JREG switched off \| [+-][\d.]+% \|", out,
                     re.M), out
    mem = re.search(r"JREG activation-memory overhead: \+([\d.]+) MiB", out)
    # 3 (B, T) fp32 vectors per layer: 3 * 6 * 1 * 32 * 4 bytes
    assert mem and float(mem.group(1)) == pytest.approx(3 * 6 * 32 * 4 / 2**20, abs=1e-3), out


def test_bench_gpu_script_runs_on_cpu_as_a_smoke_test(tmp_path):
    """The whole GPU script on CPU: the micro-batch search (every size up to --max-batch fits on CPU), the
    interleaved JREG on / off timing, the table and the JSON rows."""
    jsonl = tmp_path / "rows.jsonl"
    out = _run(["scripts/bench_gpu.py", "--device", "cpu", "--sizes", "tiny", "--seq", "16", "--max-batch", "3",
                "--steps", "2", "--rounds", "2", "--warmup", "1", "--compile", "off", "--attn", "sdpa",
                "--out", str(jsonl)])
    ours = re.search(r"^\| tiny \| ours \| sdpa \| off \| 3 \| [\d,]+ \| [\d.]+ \| [\d.]+% \| - \| - \| "
                     r"[+-][\d.]+% \|  \|$", out, re.M)
    assert ours, out
    assert re.search(r"^\| tiny \| transformers \| sdpa \| off \| 3 \| ", out, re.M), out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["impl"], r["micro_batch"]) for r in rows] == [("ours", 3), ("transformers", 3)]
    assert rows[0]["steps_timed"] == 2 and rows[0]["jreg_off"]["steps_timed"] == 2 and rows[1]["jreg_off"] is None
    assert all(r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in rows)


def test_bench_gpu_compiled_rows_on_cpu():
    """compile on: the probe re-runs the compiled blocks at a new micro-batch, the timing toggles JREG's
    statistics (a second graph), and the transformers model is compiled whole -- all of it runs."""
    out = _run(["scripts/bench_gpu.py", "--device", "cpu", "--sizes", "tiny", "--seq", "16", "--max-batch", "2",
                "--steps", "2", "--rounds", "2", "--warmup", "1", "--compile", "on", "--attn", "sdpa"])
    assert re.search(r"^\| tiny \| ours \| sdpa \| on \| 2 \| [\d,]+ \| .* [+-][\d.]+% \|  \|$", out, re.M), out
    assert re.search(r"^\| tiny \| transformers \| sdpa \| on \| 2 \| [\d,]+ \| ", out, re.M), out


def test_bench_gpu_time_limit_skips_the_rows_left():
    out = _run(["scripts/bench_gpu.py", "--device", "cpu", "--sizes", "tiny", "--seq", "16", "--micro-batch", "1",
                "--steps", "1", "--rounds", "1", "--warmup", "1", "--compile", "off", "--attn", "sdpa",
                "--time-limit", "0"])
    assert "not run: tiny/ours/sdpa/compile off, tiny/transformers/sdpa/compile off" in out, out
    assert not re.search(r"^\| tiny \| ours", out, re.M), out


def test_bench_ops_prints_every_table():
    out = _run(["scripts/bench_ops.py", "--only", "loss", "zloss", "docmask", "adamw", "rmsnorm", "rope", "mlp",
                "generate", "--rounds", "1", "--iters", "1", "--tokens", "64", "--threads", "1", "--gen-tokens", "8"])
    for title in ("LM head + CE fwd+bwd, 64 tokens x 256, vocab 8192", "vocab 32000", "AdamW step",
                  "RMSNorm fwd+bwd", "RoPE rotation", "SwiGLU MLP fwd+bwd", "greedy generation of 8 tokens",
                  "attention fwd+bwd, q (1, 8, 256, 32)"):
        assert title in out, out
    assert re.search(r"^\| fused \(our default\) \| [\d.]+ \| [\d.]+ \|$", out, re.M), out
    assert re.search(r"^\| materialised logits \(chunk 0\) \| [\d.]+ \| [\d.]+ \|$", out, re.M), out
    for row in ("fused CE \\+ z-loss \\(optim.z_loss=1e-4\\)", "SDPA, document mask", "building the document mask"):
        assert re.search(rf"^\| {row}[^|]* \| [\d.]+ \| [\d.]+ \|$", out, re.M), out


def test_bench_cpu_document_mask_variant():
    out = _run(["scripts/bench_cpu.py", "--rounds", "1", "--steps", "1", "--warmup", "1", "--batch", "1",
                "--seq", "32", "--threads", "1", "--no-hf", "--no-jreg", "--document-mask", "--doc-len", "8"])
    assert "ours jreg=0.1" not in out
    assert re.search(r"^\| ours jreg=0, document mask \| [\d.]+ \|", out, re.M), out
    assert re.search(r"^\| ours jreg=0 with vs without data.document_mask \| [+-][\d.]+% \|", out, re.M), out
    assert re.search(r"^\| ours jreg=0, document mask \| [\d.]+ \|$", out, re.M), out  # saved-tensor memory row
