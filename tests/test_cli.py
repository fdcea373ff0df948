"""Each CLI journey end to end, as a user runs it: a real subprocess of `python -m llama_jreg` on a tiny model.

train -> resume -> a 2-value sweep + report -> bad overrides.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TINY = [
    "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128",
    "model.vocab_size=512", "data.seq_len=64", "data.micro_batch_size=4", "data.max_documents=6",
    "data.val_sequences=8", "trainer.eval_batches=2", "trainer.progress=false", "schedule.warmup_steps=2",
]


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "llama_jreg", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def rows(run_dir: Path, kind: str) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in out if r.get("kind") == kind]


def test_help_lists_commands_and_keys(tmp_path):
    out = cli("--help", cwd=tmp_path).stdout
    for name in ("train", "prepare-data", "sweep-report", "jump", "plot", "eval", "ffn-concepts", "export-hf",
                 "generate", "lm-eval"):
        assert name in out
    out = cli("train", "--help", cwd=tmp_path).stdout
    for key in ("jreg.weight", "trainer.max_steps", "resume=auto|PATH", "hydra.sweep.dir", "data.files"):
        assert key in out


def test_train_then_resume_on_shakespeare(tmp_path):
    run = tmp_path / "runs" / "r"
    common = ["data=shakespeare", *TINY, "trainer.log_every=2", "trainer.jump_every=4", "trainer.eval_every=4",
              "trainer.ckpt_every=4", f"run.dir={run}", "jreg.weight=0.1"]
    p = cli("train", *common, "trainer.max_steps=4", cwd=tmp_path)
    assert "run summary" in p.stdout and "zeta_L" in p.stdout
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "step_00000004").is_dir()
    assert (run / "checkpoints" / "step_00000004" / "tokenizer.model").exists()
    jump = rows(run, "jump")
    assert jump and len(jump[-1]["psi"]) == 2 and jump[-1]["zeta_L"] >= 0
    train_rows = rows(run, "train")
    assert {"step", "tokens", "loss", "lm_loss", "jreg_loss", "lr", "grad_norm", "tokens_per_s"} <= set(train_rows[0])
    # resume=auto continues from step 4 to 8 in the same run dir
    cli("train", *common, "trainer.max_steps=8", "resume=auto", cwd=tmp_path)
    steps = [r["step"] for r in rows(run, "train")]
    assert steps[-1] == 8 and (run / "checkpoints" / "step_00000008").is_dir()


def test_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    cli("train", "-m", "jreg.weight=0,0.5", "data=induction", *TINY, "model.vocab_size=64",
        "data.induction.num_val=8", "trainer.max_steps=4", "trainer.log_every=2", "trainer.jump_every=2",
        "trainer.eval_every=4", "trainer.ckpt_every=4", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0_jreg.weight=0", "1_jreg.weight=0.5"]
    index = json.loads((sweep / "sweep.json").read_text())
    assert [j["name"] for j in index["jobs"]] == runs
    out = cli("sweep-report", str(sweep), cwd=tmp_path).stdout
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| jreg.weight |")
    assert lines[2].startswith("| 0 |") and lines[3].startswith("| 0.5 |")
    for name in ("val_loss_vs_lambda.png", "zeta_L_vs_lambda.png", "psi_per_layer.png"):
        assert (sweep / "plots" / name).stat().st_size > 1000
    # the two runs really differ only in lambda: the lambda=0 run logs no regularizer loss
    r0 = rows(sweep / runs[0], "train")
    r1 = rows(sweep / runs[1], "train")
    assert all(r["jreg_loss"] == 0 for r in r0) and any(r["jreg_loss"] > 0 for r in r1)


@pytest.mark.parametrize("args,needle", [
    (["train", "jreg.weight=-1"], "jreg.weight=-1.0 must be >= 0"),
    (["train", "model=huge"], "unknown model 'huge'"),
    (["train", "trainer.nope=3"], "trainer.nope"),
    (["train", "jreg.weight=0,0.1"], "add -m"),
    (["train", "data.seq_len=100000"], "longer than the model context"),
    (["sweep-report", "/no/such/sweep"], "does not exist"),
    (["bogus-command"], "unknown command"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    p = cli(*args, cwd=tmp_path, check=False)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("name", ["train", "prepare-data", "sweep-report", "jump", "plot", "eval", "ffn-concepts",
                                  "generate", "export-hf", "lm-eval", "eval-tasks"])
def test_help_shows_no_rest_markup(name, capsys):
    from llama_jreg.cli import COMMANDS, main

    assert name in COMMANDS
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: llama-jreg" in out
    assert "``" not in out  # module docstrings' reST literals are shown with single backticks


def test_sweeps_silence_wandb_unless_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), WANDB_MODE="offline")
    common = ["train", "-m", "seed=1,2", "data=induction", *TINY, "model.vocab_size=64",
              "data.induction.num_val=8", "trainer.max_steps=1", "trainer.eval_every=1", "logger=wandb", "logger.project=t"]

    def sweep(name, **extra):
        p = subprocess.run([sys.executable, "-m", "llama_jreg", *common, f"hydra.sweep.dir={tmp_path / name}"],
                           cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("wandb:")]

    assert sweep("quiet") == []
    assert len(sweep("loud", WANDB_SILENT="false")) >= 4  # asked for: wandb's own lines for both runs
