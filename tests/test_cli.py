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
    (["train", "jreg.wieght=5"], "unknown config key jreg.wieght; did you mean jreg.weight?"),
    (["train", "+jreg.wieght=5"], "unknown config key jreg.wieght; did you mean jreg.weight?"),
    (["train", "+trainer.max_step=3"], "did you mean trainer.max_steps?"),
    (["train", "+foo=1"], "unknown config key foo"),
    (["train", "data=shakespeare", "data.files=[k.txt]"], "data.files is read by data=local"),
    (["train", "data=local", "data.files=[k.txt]", "data.induction.num_triggers=3"], "add data=induction"),
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


def test_print_config_touches_no_network(tmp_path):
    """``--print-config init_from=smollm2`` reads configs only: with an empty cache and no reachable package
    index it prints the config as written and fetches nothing (a run resolves init_from when it is built)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "LLAMA_JREG_CACHE": str(cache),
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "llama_jreg", "train", "--print-config", "init_from=smollm2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "init_from: smollm2" in p.stdout
    assert not cache.exists() and not (tmp_path / "hf").exists()


def test_a_run_says_what_it_uses_first(tmp_path):
    """The first lines of a run name its data (the user's files, not Shakespeare), model, JREG and schedule,
    and a warm-up longer than the run is warned about."""
    corpus = tmp_path / "k.txt"
    corpus.write_text("\n\n".join(f"In the beginning was the word number {i} and more words follow." for i in range(60)))
    run = tmp_path / "r"
    p = cli("train", *TINY, "data.files=[k.txt]", "trainer.max_steps=2", "schedule.warmup_steps=100",
            "trainer.plots=false", f"run.dir={run}", cwd=tmp_path)
    head = p.stdout.splitlines()[:5]
    assert head[0].startswith(f"data: local {corpus}") and head[1].startswith("model: ")
    assert head[2].startswith("jreg: jump weight") and head[3].startswith("schedule: cosine")
    assert head[4].startswith("warning: schedule.warmup_steps=100 is longer than trainer.max_steps=2")
    saved = (run / "config.yaml").read_text()
    assert "source: local" in saved and str(corpus) in saved


def _summary(out: str) -> list[str]:
    """The run summary's value lines (not the paths, which name the run dir either way)."""
    lines = out[out.index("=== llama-jreg run summary ==="):].splitlines()[1:]
    return [line for line in lines if line.split(":")[0].strip() in ("steps", "tokens seen", "final train loss",
                                                                       "final LM loss", "validation loss", "zeta_L",
                                                                       "val zeta_L")]


def test_a_run_dir_is_enough_from_any_directory(tmp_path):
    """A run trained on a relative data.files in one directory resumes with ``run.dir=R resume=auto`` alone from
    another (its own config.yaml, saying so), refuses an override that changes its data, re-prints the same
    summary once finished, and every command that reads a run dir works there."""
    start, other = tmp_path / "start", tmp_path / "other"
    start.mkdir()
    other.mkdir()
    (start / "k.txt").write_text("\n\n".join(f"And the word {i} was with the reader, and the reader read it."
                                             for i in range(80)))
    run = tmp_path / "runs" / "r"
    cli("train", *TINY, "data.files=[k.txt]", "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.jump_every=2",
        "trainer.plots=false", f"run.dir={run}", cwd=start)
    p = cli("train", f"run.dir={run}", "resume=auto", "trainer.max_steps=6", cwd=other)
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'} (step 4)" in p.stdout
    assert p.stdout.startswith(f"data: local {start / 'k.txt'}")
    again = cli("train", f"run.dir={run}", "resume=auto", "trainer.max_steps=6", cwd=other)
    assert f"resumed from {run / 'checkpoints' / 'step_00000006'} (step 6)" in again.stdout
    assert _summary(again.stdout) == _summary(p.stdout) and any("val zeta_L" in x for x in _summary(p.stdout))
    saved = (run / "config.yaml").read_text()
    bad = cli("train", f"run.dir={run}", "resume=auto", "data.seq_len=32", cwd=other, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "error: data.seq_len=32 differs from the run's" in bad.stderr and "trained on other data" in bad.stderr
    assert (run / "config.yaml").read_text() == saved
    fresh = cli("train", f"run.dir={tmp_path / 'typo'}", "resume=auto", *TINY, f"data.files=[{start / 'k.txt'}]",
                "trainer.max_steps=1", "trainer.plots=false", cwd=other)
    assert f"no checkpoint in {tmp_path / 'typo'}: starting a new run" in fresh.stdout
    # every command on the run dir, from another directory
    assert "val" in cli("eval", str(run), cwd=other).stdout
    assert "cloze" in cli("eval-tasks", str(run), "--tasks", "cloze@4", cwd=other).stdout
    cli("plot", str(run), cwd=other)
    cli("generate", str(run), "--prompt", "And the word", "--max-new-tokens", "3", "--temperature", "0", cwd=other)
    cli("jump", str(run), "--text", str(start / "k.txt"), cwd=other)
    cli("export-hf", str(run), str(other / "hf"), cwd=other)
    assert (other / "hf" / "config.json").is_file()
