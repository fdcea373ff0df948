"""Sharded checkpoints (torch.distributed.checkpoint): real torchrun runs on CPU (gloo).

A sharded checkpoint written by N processes resumes on M (4 -> 2, 2 -> 1, 1 -> 2) with the losses of an
uninterrupted run; full and sharded checkpoints resume from each other; analysis loading consolidates a
sharded checkpoint in one process; ``verify`` covers the shards; keep-last removes old sharded checkpoints.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from llama_jreg import checkpoint as ckpt
from tests.test_train_helpers import by_step, run_inprocess, run_torchrun, summary_from_stdout, tiny

STEPS = 8
GLOBAL = ["trainer.global_batch_size=8", f"trainer.max_steps={STEPS}", "trainer.ckpt_every=4",
          "trainer.keep_last=5"]
SHARDED = "trainer.checkpoint_format=sharded"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 1-process run (global batch 8 = 4 micro-batches of 2)."""
    d = tmp_path_factory.mktemp("ref")
    run_inprocess(tiny(d, *GLOBAL))
    return d


def _max_loss_diff(a, b) -> float:
    x, y = by_step(a, "loss"), by_step(b, "loss")
    assert sorted(x) == sorted(y) == list(range(1, STEPS + 1))
    return max(abs(x[k] - y[k]) for k in x)


def _inprocess_quiet(overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "resuming a N-process checkpoint" warning
        return run_inprocess(overrides)


def _half_way(run):
    return run / "checkpoints" / "step_00000004"


def test_resolve_format():
    assert ckpt.resolve_format("auto", "fsdp") == "sharded"
    assert ckpt.resolve_format("auto", "ddp") == "full"
    assert ckpt.resolve_format("full", "fsdp") == "full"
    assert ckpt.resolve_format("sharded", "ddp") == "sharded"


def test_unknown_checkpoint_format_is_a_user_error():
    from llama_jreg import UserError
    from llama_jreg.config import load_config

    with pytest.raises(UserError, match="trainer.checkpoint_format='zip'; choose auto, sharded, full"):
        load_config(["trainer.checkpoint_format=zip"])


@pytest.mark.slow
def test_four_ranks_reshard_to_two(reference, tmp_path):
    """FSDP2 on 4 processes writes 4 shards (format auto = sharded); 2 processes resume from them."""
    run_torchrun(4, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "trainer.steps_per_run=4"))
    ck = _half_way(tmp_path)
    assert ckpt.checkpoint_format(ck) == "sharded" and not (ck / "model.safetensors").exists()
    assert sorted(p.name for p in (ck / "state").glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(4)]
    manifest = json.loads((ck / "manifest.json").read_text())
    assert manifest["format"] == "sharded" and "state/__3_0.distcp" in manifest["files"]
    assert ckpt.verify(ck) is None
    proc = run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "resume=auto"))
    summary = summary_from_stdout(proc.stdout)
    assert summary["resumed_from"].endswith("step_00000004")
    assert _max_loss_diff(reference, tmp_path) < 1e-5
    assert ckpt.checkpoint_format(tmp_path / "checkpoints" / "step_00000008") == "sharded"


@pytest.mark.slow
def test_two_ranks_sharded_resume_on_one_process_writing_full(reference, tmp_path):
    """2 -> 1, and sharded -> full: the 1-process continuation (parallel=ddp: format auto = full; a resume reads
    the run's own config.yaml, parallel=fsdp, unless told otherwise) reads the sharded checkpoint; its own
    checkpoint is a full one."""
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "trainer.steps_per_run=4"))
    assert ckpt.checkpoint_format(_half_way(tmp_path)) == "sharded"
    s = _inprocess_quiet(tiny(tmp_path, *GLOBAL, "parallel=ddp", "resume=auto"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    assert _max_loss_diff(reference, tmp_path) < 1e-5
    assert ckpt.checkpoint_format(tmp_path / "checkpoints" / "step_00000008") == "full"


@pytest.mark.slow
def test_one_process_sharded_resumes_on_two_ranks(reference, tmp_path):
    """1 -> 2: a sharded checkpoint of one process (plain tensors) is sharded over 2 FSDP2 ranks on load."""
    _inprocess_quiet(tiny(tmp_path, *GLOBAL, SHARDED, "trainer.steps_per_run=4"))
    ck = _half_way(tmp_path)
    assert ckpt.checkpoint_format(ck) == "sharded" and ckpt.verify(ck) is None
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "resume=auto"))
    assert _max_loss_diff(reference, tmp_path) < 1e-5


@pytest.mark.slow
def test_full_checkpoint_resumes_into_sharded_and_keep_last(reference, tmp_path):
    """full -> sharded: a DDP (full) checkpoint continues under FSDP2, which writes sharded ones; keep_last=1
    deletes the older (full) one."""
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=ddp", "trainer.steps_per_run=4"))
    assert ckpt.checkpoint_format(_half_way(tmp_path)) == "full"
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "resume=auto", "trainer.keep_last=1"))
    assert _max_loss_diff(reference, tmp_path) < 1e-5
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000008"]
    assert ckpt.checkpoint_format(tmp_path / "checkpoints" / "step_00000008") == "sharded"


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The same 4-step 2-rank FSDP2 run twice: once saving full checkpoints, once sharded ones."""
    out = {}
    for fmt in ("full", "sharded"):
        d = tmp_path_factory.mktemp(fmt)
        run_torchrun(2, tiny(d, "trainer.global_batch_size=8", "trainer.max_steps=4", "trainer.ckpt_every=4",
                             "parallel=fsdp", f"trainer.checkpoint_format={fmt}"))
        out[fmt] = d / "checkpoints" / "step_00000004"
    return out


@pytest.mark.slow
def test_read_model_state_consolidates_shards_in_one_process(twin):
    full, sharded = ckpt.read_model_state(twin["full"]), ckpt.read_model_state(twin["sharded"])
    assert ckpt.checkpoint_format(twin["sharded"]) == "sharded"
    full.setdefault("output.weight", full["tok_embeddings.weight"])  # tied: the full format stores it once
    assert full.keys() == sharded.keys()
    for k in full:
        assert sharded[k].dtype == torch.float32 and torch.equal(full[k], sharded[k]), k


@pytest.mark.slow
def test_analysis_commands_load_a_sharded_checkpoint(twin, tmp_path):
    from llama_jreg.commands.export_hf import export_hf
    from llama_jreg.load import load_model

    a, _, info_a = load_model(twin["full"])
    b, _, info_b = load_model(twin["sharded"].parent.parent)  # the run dir: its newest checkpoint
    assert info_b["step"] == 4 and info_b["path"].endswith("step_00000004")
    x = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)
    out = tmp_path / "hf"
    export_hf(twin["sharded"], out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


@pytest.mark.slow
def test_verify_covers_every_shard(twin, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(twin["sharded"].parent.parent, run)
    ck = run / "checkpoints" / "step_00000004"
    shard = ck / "state" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert ckpt.verify(ck) == f"{ck}: state/__1_0.distcp does not match its sha256 in the manifest"
    shard.write_bytes(bytes(data[:-1]))
    assert "state/__1_0.distcp does not match" in ckpt.verify(ck)
    (ck / "state" / "extra.distcp").write_bytes(b"x")
    assert ckpt.verify(ck) == f"{ck}: state/extra.distcp is not in the manifest"
    with pytest.warns(UserWarning, match="skipping broken checkpoint"):
        assert ckpt.find_latest(run) is None


@pytest.mark.slow
def test_kill9_inside_a_sharded_save_then_resume_auto(tmp_path):
    """One trial of scripts/kill9_trials.py with sharded checkpoints, the kill aimed inside a save: the
    leftover ``.tmp-`` dir is cleaned, the run resumes from the newest complete checkpoint and ends
    bit-identical to an uninterrupted run (losses, loader cursors, final weights)."""
    from tests.test_reliability import kill9  # scripts/kill9_trials.py, loaded once

    trials = kill9.run_trials(1, seed=4, steps=6, ckpt_every=2, keep_last=2, max_kills=1, kinds=("in-save",),
                              workdir=tmp_path, keep=True, log=lambda _m: None, fmt="sharded")
    t = trials[0]
    assert t.ok, t.problems
    assert t.kills[0].in_save and t.resumes[-1][0] == t.resumes[-1][1]
    final = tmp_path / "trial_000" / "checkpoints" / "step_00000006"
    assert ckpt.checkpoint_format(final) == "sharded" and ckpt.verify(final) is None


@pytest.mark.slow
def test_bench_ckpt_script_runs(tmp_path):
    """scripts/bench_ckpt.py at a tiny size on 2 ranks: one row per format and rank, timings and peaks > 0;
    the asynchronous rows split the stall into start + commit and took real training steps meanwhile."""
    import subprocess
    import sys

    from tests.test_train_helpers import REPO, env_for_subprocess

    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "bench_ckpt.py"), "--model", "tiny", "--set", "n_layers=2", "--set", "dim=64",
           "--set", "n_heads=4", "--set", "n_kv_heads=2", "--set", "ffn_dim=128", "--set", "vocab_size=128",
           "--formats", "full,sharded,async,async", "--train-seq", "8", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["world"] == 2 and sorted((r["format"], r["rank"]) for r in res["rows"]) == [
        ("async", 0), ("async", 0), ("async", 1), ("async", 1), ("full", 0), ("full", 1), ("sharded", 0), ("sharded", 1)]
    for r in res["rows"]:
        assert r["save"]["s"] > 0 and r["load"]["s"] > 0 and r["save"]["peak_gib"] > 0 and r["bytes"] > 0
        assert 0 < r["stall_s"] <= r["save"]["s"]
        if r["format"] == "async":
            assert r["stall_s"] == pytest.approx(r["start_s"] + r["commit_s"]) and r["background_s"] > 0
            assert all(t > 0 for t in r["steps_during"])
    assert sorted(r["async_save"] for r in res["rows"] if r["format"] == "async") == [1, 1, 2, 2]
    assert len(res["base_steps"]) == 2
    assert "sharded  rank 1: save" in proc.stdout and "async#2  rank 1: save" in proc.stdout


# ------------------------------------------------------------------------------------------- async save


class _Cursor:
    def __init__(self):
        self.cursor = 7

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}


def _tiny_model_and_optimizer():
    from llama_jreg.config import load_config
    from llama_jreg.model import Llama
    from llama_jreg.train.optim import Schedule, build_optimizer

    cfg = load_config(tiny("unused"))
    torch.manual_seed(0)
    model = Llama(cfg.model)
    opt = build_optimizer(model, cfg.optim, torch.device("cpu"))
    model(torch.randint(0, 128, (2, 16)), labels=torch.randint(0, 128, (2, 16))).loss.backward()
    opt.step()  # AdamW state exists
    return model, opt, Schedule(opt, cfg.schedule, cfg.optim.lr, 10)


def _save(run, step, model, opt, sched, background, keep_last=5):
    from llama_jreg.train.state import TrainState

    states = {"model": ckpt.ModelPart(model), "optim": ckpt.OptimizerPart(model, opt),
              "scheduler": ckpt.JsonPart(sched), "loader": ckpt.RankPart(_Cursor()),
              "trainer_state": ckpt.JsonPart(TrainState(step=step, wandb_run_id="x", data_fingerprint="fp"))}
    return ckpt.CheckpointManager(run, states, fmt="sharded", keep_last=keep_last, background=background).save(step)


def test_async_save_writes_the_staged_state_and_commits_only_at_wait(tmp_path):
    """The state is copied when the save starts (the step after it changes the weights, the checkpoint keeps
    the old ones); the step dir appears only at ``wait`` (before it, only ``.tmp-``); the next save finalises
    the previous one first; keep-last prunes at the commit; ``close`` on a pending save leaves only ``.tmp-``."""
    model, opt, sched = _tiny_model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = next(iter(opt.state.values()))["exp_avg"]
    bg = ckpt.AsyncCheckpointer()
    path = _save(tmp_path, 1, model, opt, sched, bg, keep_last=1)
    assert path.name == "step_00000001" and not path.exists() and ckpt.list_checkpoints(tmp_path) == []
    assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]
    with torch.no_grad():  # what the next optimizer step does while the shards are written
        for p in model.parameters():
            p.add_(1.0)
        exp_avg.fill_(5.0)
    assert bg.wait() == path and ckpt.verify(path) is None
    assert json.loads((path / "manifest.json").read_text())["format"] == "sharded"
    saved = ckpt.read_model_state(path)
    assert saved.keys() == before.keys() and all(torch.equal(saved[k], before[k]) for k in before)
    assert bg.wait() is None  # nothing in flight

    path2 = _save(tmp_path, 2, model, opt, sched, bg, keep_last=1)
    path3 = _save(tmp_path, 3, model, opt, sched, bg, keep_last=1)  # finalises step 2 (and prunes step 1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002"] and ckpt.verify(path2) is None
    assert torch.equal(ckpt.read_model_state(path2)["norm.weight"], before["norm.weight"] + 1.0)
    with pytest.warns(UserWarning, match="step_00000003 was still being written when the run stopped"):
        bg.close()
    assert not path3.exists() and any(".tmp-" in p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpt.find_latest(tmp_path) == path2


def test_async_checkpoint_needs_the_sharded_format():
    from llama_jreg import UserError
    from llama_jreg.config import load_config

    with pytest.raises(UserError, match="trainer.async_checkpoint=true writes sharded checkpoints only"):
        load_config(["trainer.async_checkpoint=true", "trainer.checkpoint_format=full"])
    assert ckpt.resolve_format("auto", "ddp", async_save=True) == "sharded"


def test_async_run_matches_the_uninterrupted_run(reference, tmp_path):
    """A 1-process run with background saves: the same losses bit for bit, every checkpoint complete and
    sharded, the final weights equal to the synchronous run's."""
    s = run_inprocess(tiny(tmp_path, *GLOBAL, "trainer.async_checkpoint=true"))
    assert s["last_checkpoint"].endswith("step_00000008")
    assert by_step(tmp_path, "loss") == by_step(reference, "loss")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000008"]
    for p in ckpt.list_checkpoints(tmp_path):
        assert ckpt.checkpoint_format(p) == "sharded" and ckpt.verify(p) is None
    got = ckpt.read_model_state(tmp_path / "checkpoints" / "step_00000008")
    want = ckpt.read_model_state(reference / "checkpoints" / "step_00000008")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_async_two_ranks_resume_on_one(reference, tmp_path):
    """2 FSDP2 ranks saving in the background stop after 4 steps (the stop waits for the write); one process
    resumes from that checkpoint and ends with the uninterrupted run's losses."""
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "trainer.async_checkpoint=true",
                         "trainer.steps_per_run=4"))
    ck = _half_way(tmp_path)
    assert ckpt.verify(ck) is None and sorted(p.name for p in (ck / "state").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    s = _inprocess_quiet(tiny(tmp_path, *GLOBAL, "resume=auto", "trainer.async_checkpoint=true"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    assert _max_loss_diff(reference, tmp_path) < 1e-5


@pytest.mark.slow
def test_kill9_during_background_writes_then_resume_auto(tmp_path):
    """scripts/kill9_trials.py --async: kills aimed inside saves, which now run while training goes on; every
    resume takes the newest complete checkpoint and the run ends bit-identical to an uninterrupted one."""
    from tests.test_reliability import kill9

    # a slower disk (100 ms per fsync) keeps each background write open over a few training steps
    trials = kill9.run_trials(2, seed=1, steps=12, ckpt_every=3, keep_last=2, fsync_delay=0.1, max_kills=1,
                              kinds=("in-background",), workdir=tmp_path, keep=True, log=lambda _m: None,
                              async_save=True)
    assert all(t.ok for t in trials), kill9.table(trials)
    assert all(k.background for t in trials for k in t.kills), kill9.table(trials)
