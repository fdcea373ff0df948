"""The training loop on one process: real runs of a tiny Llama on synthetic induction data, real files.

Resume exactness, checkpoint contents and integrity, metrics rows, non-finite handling, run-dir errors.
Multi-process (DDP / FSDP2) tests are in test_train_dist.py, signals and disk errors in test_train_faults.py.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llama_jreg import UserError
from llama_jreg import checkpoint as ckpt
from llama_jreg.config import load_config
from llama_jreg.model import Llama
from llama_jreg.rows import EvalRow, JumpRow, TrainRow
from llama_jreg.train.metrics import flops_per_token
from llama_jreg.train.trainer import INJECT_NONFINITE_ENV, NonFiniteError
from tests.test_train_helpers import by_step, rows, run_inprocess, tiny

STEPS = 12
KEYS = ("loss", "lm_loss", "jreg_loss", "grad_norm", "lr")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 12 uninterrupted steps (checkpoints every 4)."""
    d = tmp_path_factory.mktemp("straight")
    summary = run_inprocess(tiny(d, f"trainer.max_steps={STEPS}", "trainer.ckpt_every=4", "trainer.keep_last=2",
                                 "trainer.plots=true"))
    return d, summary


def _assert_same_logs(a: Path, b: Path):
    for key in KEYS:
        assert by_step(a, key) == by_step(b, key), key  # bit for bit
    assert by_step(a, "psi", "jump") == by_step(b, "psi", "jump")
    assert by_step(a, "val_psi", "jump") == by_step(b, "val_psi", "jump")
    assert by_step(a, "val_loss", "eval") == by_step(b, "val_loss", "eval")


def test_run_writes_everything(straight):
    d, s = straight
    assert s["steps"] == STEPS and s["tokens"] == STEPS * 2 * 32
    assert s["run_dir"] == str(d) and Path(s["metrics_path"]).is_file()
    assert s["last_checkpoint"].endswith("step_00000012")
    for key in ("final_loss", "final_lm_loss", "zeta_L", "val_loss"):
        assert math.isfinite(s[key])
    assert (d / "config.yaml").is_file()
    assert s["plots"] and all(Path(p).is_file() for p in s["plots"])
    train = rows(d, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    cfg = load_config(tiny(d))
    fpt = flops_per_token(Llama(cfg.model), cfg.data.seq_len)
    for r in train:
        for key in ("step", "tokens", "loss", "lm_loss", "jreg_loss", "jreg_weight", "lr", "grad_norm",
                    "tokens_per_s", "mfu", "memory", "data_wait_frac"):
            assert key in r, key
        assert r["loss"] == pytest.approx(r["lm_loss"] + r["jreg_weight"] * r["jreg_loss"], rel=1e-12)
        assert 0.0 <= r["data_wait_frac"] <= 1.0 and r["memory"] > 0 and r["mfu"] is None  # CPU: no known peak
        # achieved model TFLOP/s = tokens/s x training FLOPs per token of this model at this sequence length
        assert r["tflops"] == pytest.approx(r["tokens_per_s"] * fpt / 1e12, rel=1e-9) and r["tflops"] > 0
    jump = rows(d, "jump")
    assert [r["step"] for r in jump] == [3, 6, 9, 12]
    for r in jump:
        assert len(r["psi"]) == 2 and len(r["val_psi"]) == 2
        assert r["zeta_L"] == pytest.approx(100 * max(0.0, r["psi"][1] - r["psi"][0]))
        assert 0 <= r["psi_post_norm_L"] <= 1 and 0 <= r["val_psi_post_norm_L"] <= 1
    ev = rows(d, "eval")
    assert [r["step"] for r in ev] == [5, 10, 12]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in ev)
    assert s["val_loss"] == ev[-1]["val_loss"] and s["zeta_L"] == jump[-1]["zeta_L"]
    assert s["final_loss"] == train[-1]["loss"]
    # the loss goes down on induction data with lr 3e-3
    assert train[-1]["lm_loss"] < train[0]["lm_loss"]
    # each row as written is its typed row, keys in order (tests/test_rows.py: so are the archives' rows)
    for kind, row_type in (("train", TrainRow), ("jump", JumpRow), ("eval", EvalRow)):
        assert all(list(row_type.from_dict(r).to_dict().items()) == list(r.items()) for r in rows(d, kind)), kind


def test_checkpoint_contents(straight):
    d, _ = straight
    found = ckpt.list_checkpoints(d)
    assert [p.name for p in found] == ["step_00000008", "step_00000012"]  # keep_last=2
    c = found[-1]
    names = {p.name for p in c.iterdir()}
    assert names == {"model.safetensors", "optimizer.pt", "scheduler.json", "trainer_state.json", "rng_rank0.pt",
                     "loader_rank0.json", "config.yaml", "wandb_run_id", "data_fingerprint", "manifest.json"}
    manifest = json.loads((c / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert ckpt.verify(c) is None
    state = json.loads((c / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["world_size"] == 1
    # weights: safetensors, tied head stored once, loads into a Llama
    sd = load_file(str(c / "model.safetensors"))
    assert "output.weight" not in sd and "tok_embeddings.weight" in sd
    from llama_jreg.config import from_yaml

    cfg = from_yaml(c / "config.yaml")
    model = Llama(cfg.model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["output.weight"] and not unexpected
    assert model.output.weight is model.tok_embeddings.weight
    # everything else loads without arbitrary pickle
    torch.load(c / "optimizer.pt", weights_only=True)
    torch.load(c / "rng_rank0.pt", weights_only=True)
    assert not list((d / "checkpoints").glob("*.tmp-*"))


def test_resume_is_bit_exact(straight, tmp_path):
    """12 steps == 6 steps + resume + 6 steps, bit for bit in every logged number."""
    ref, _ = straight
    first = run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "trainer.steps_per_run=6"))
    assert first["interrupted"] and first["steps"] == 6 and first["last_checkpoint"].endswith("step_00000006")
    second = run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "resume=auto"))
    assert second["resumed_from"].endswith("step_00000006") and second["steps"] == STEPS
    _assert_same_logs(ref, tmp_path)
    wid = (Path(first["last_checkpoint"]) / "wandb_run_id").read_text()
    assert (Path(second["last_checkpoint"]) / "wandb_run_id").read_text() == wid  # the same wandb run


def test_two_resumes_in_a_row(straight, tmp_path):
    ref, _ = straight
    for _ in range(3):  # 5 + 5 + 2 steps
        run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "trainer.steps_per_run=5", "resume=auto"))
    _assert_same_logs(ref, tmp_path)
    assert len(rows(tmp_path, "train")) == STEPS  # no duplicated rows


def test_resume_from_a_given_checkpoint_and_rows_after_it_are_dropped(tmp_path):
    run_inprocess(tiny(tmp_path, "trainer.max_steps=8", "trainer.ckpt_every=4", "schedule.warmup_steps=3"))
    # crash after the step-4 checkpoint: continue from it (rows 5..8 of the first run must go)
    s = run_inprocess(tiny(tmp_path, "trainer.max_steps=8", f"resume={tmp_path}/checkpoints/step_00000004"))
    assert s["resumed_from"].endswith("step_00000004")
    assert [r["step"] for r in rows(tmp_path, "train")] == list(range(1, 9))


def test_resume_auto_skips_a_corrupt_checkpoint(straight, tmp_path):
    import shutil

    src, _ = straight
    shutil.copytree(src / "checkpoints", tmp_path / "checkpoints")
    bad = tmp_path / "checkpoints" / "step_00000012" / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping broken checkpoint"):
        assert ckpt.find_latest(tmp_path).name == "step_00000008"
    with pytest.raises(UserError, match="bad checkpoint"):
        run_inprocess(tiny(tmp_path / "other", f"trainer.max_steps={STEPS}", f"resume={bad.parent}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "resume=auto"))
    assert s["resumed_from"].endswith("step_00000008") and s["steps"] == STEPS


def test_resume_with_other_data_fails_loudly(straight, tmp_path):
    src, _ = straight
    with pytest.raises(UserError, match="other data"):
        run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "data.induction.num_triggers=3",
                           f"resume={src}/checkpoints/step_00000012"))


def test_existing_checkpoints_need_resume(straight):
    d, _ = straight
    with pytest.raises(UserError, match="resume=auto"):
        run_inprocess(tiny(d, f"trainer.max_steps={STEPS}"))


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    s = run_inprocess(tiny(tmp_path, "trainer.max_steps=2", "resume=auto"))
    assert s["resumed_from"] is None and s["steps"] == 2


def test_nonfinite_steps_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_NONFINITE_ENV, "3,4")
    s = run_inprocess(tiny(tmp_path, "trainer.max_steps=6", "trainer.ckpt_every=4"))
    assert s["nonfinite_skipped"] == 2 and s["steps"] == 6
    train = {r["step"]: r for r in rows(tmp_path, "train")}
    assert train[3]["loss"] is None and train[4]["loss"] is None and math.isfinite(train[5]["loss"])
    assert train[6]["nonfinite_skipped"] == 2
    # no update happened on the skipped steps: the step-4 checkpoint holds the weights after step 2
    monkeypatch.delenv(INJECT_NONFINITE_ENV)
    ref = tmp_path / "ref"
    run_inprocess(tiny(ref, "trainer.max_steps=6", "trainer.ckpt_every=2"))
    a = load_file(str(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors"))
    b = load_file(str(ref / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() for k in a)


def test_nonfinite_halts(tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_NONFINITE_ENV, "2,3,4")
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        run_inprocess(tiny(tmp_path / "a", "trainer.max_steps=6", "trainer.max_nonfinite_in_a_row=3"))
    with pytest.raises(NonFiniteError, match="trainer.nonfinite=halt"):
        run_inprocess(tiny(tmp_path / "b", "trainer.max_steps=6", "trainer.nonfinite=halt"))
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_unwritable_run_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="cannot write to run.dir"):
        run_inprocess(tiny(blocker / "run", "trainer.max_steps=2"))


def test_global_batch_must_divide(tmp_path):
    with pytest.raises(UserError, match="global_batch_size"):
        run_inprocess(tiny(tmp_path, "trainer.max_steps=2", "trainer.global_batch_size=3"))


def test_activation_checkpointing_gives_the_same_losses(straight, tmp_path):
    ref, _ = straight
    run_inprocess(tiny(tmp_path, "trainer.max_steps=4", f"trainer.max_steps={STEPS}", "trainer.steps_per_run=4",
                       "trainer.activation_checkpointing=true"))
    a, b = by_step(ref, "loss"), by_step(tmp_path, "loss")
    assert all(a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7) for k in b) and len(b) == 4


def test_wandb_offline_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    a = run_inprocess(tiny(tmp_path, "trainer.max_steps=4", "trainer.steps_per_run=2", "logger=wandb",
                           "logger.project=test", "logger.tags=[ci]"))
    b = run_inprocess(tiny(tmp_path, "trainer.max_steps=4", "logger=wandb", "logger.project=test", "resume=auto"))
    run_id = (Path(a["last_checkpoint"]) / "wandb_run_id").read_text().strip()
    assert (Path(b["last_checkpoint"]) / "wandb_run_id").read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # one wandb run, resumed


@pytest.mark.slow
def test_compile_and_activation_checkpointing(straight, tmp_path):
    ref, _ = straight
    run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "trainer.steps_per_run=4", "trainer.compile=true",
                       "trainer.activation_checkpointing=true"))
    a, b = by_step(ref, "loss"), by_step(tmp_path, "loss")
    assert len(b) == 4 and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in b)
    sd = load_file(str(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert not any("_orig_mod" in k for k in sd)  # compiled in place: checkpoints keep plain names


def test_resume_with_another_model_is_a_user_error(straight, tmp_path):
    src, _ = straight
    with pytest.raises(UserError, match="do not fit model"):
        run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "model.ffn_dim=96",
                           f"resume={src}/checkpoints/step_00000012"))


def test_deterministic_mode(straight, tmp_path):
    ref, _ = straight
    run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "trainer.steps_per_run=2", "trainer.deterministic=true"))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    a, b = by_step(ref, "loss"), by_step(tmp_path, "loss")
    assert len(b) == 2 and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in b)


def test_bf16_autocast_on_cpu(tmp_path):
    s = run_inprocess(tiny(tmp_path, "trainer.max_steps=2", "trainer.precision=bf16", "jreg.weight=0.1"))
    assert math.isfinite(s["final_loss"]) and s["final_loss"] > 0


def test_resuming_a_finished_run_does_nothing(straight, tmp_path):
    import shutil

    src, s0 = straight
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    s = run_inprocess(tiny(tmp_path, f"trainer.max_steps={STEPS}", "resume=auto"))
    assert s["steps"] == STEPS and s["final_loss"] == s0["final_loss"] and s["val_loss"] == s0["val_loss"]
    assert len(rows(tmp_path, "train")) == STEPS and [p.name for p in ckpt.list_checkpoints(tmp_path)][-1] == "step_00000012"


def test_profiler_records_the_chosen_steps_and_leaves_training_unchanged(tmp_path):
    """trainer.profile_from=2 profile_steps=2: a Chrome trace with one range per profiled step (2 and 3, no
    other) and the real ops of a step, an ops table, paths in the summary -- and the same losses as without."""
    plain = run_inprocess(tiny(tmp_path / "plain", "trainer.max_steps=4"))
    s = run_inprocess(tiny(tmp_path / "prof", "trainer.max_steps=4", "trainer.profile_from=2",
                           "trainer.profile_steps=2"))
    trace, table = (tmp_path / "prof" / "profile" / f"rank0_steps2-3.{ext}" for ext in ("json", "txt"))
    assert s["profile"] == [str(trace), str(table)]
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"train_step 2", "train_step 3"} <= names and not {"train_step 1", "train_step 4"} & names
    assert {"aten::mm", "Optimizer.step#AdamW.step", "_LinearCrossEntropy"} <= names
    assert "aten::mm" in table.read_text() and "Self CPU" in table.read_text()
    assert by_step(tmp_path / "prof", "loss") == by_step(tmp_path / "plain", "loss")  # profiling changes nothing
    assert plain["final_loss"] == s["final_loss"]


def test_a_run_ending_inside_the_profiled_window_still_writes_it(tmp_path):
    s = run_inprocess(tiny(tmp_path, "trainer.max_steps=3", "trainer.profile_from=3", "trainer.profile_steps=5"))
    assert [Path(p).name for p in s["profile"]] == ["rank0_steps3-3.json", "rank0_steps3-3.txt"]
