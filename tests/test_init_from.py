"""``init_from=PATH``: continued pre-training from an HF Llama dir, one of our checkpoints or a run dir.

The start is exact (first-step LM loss = transformers' loss on the same tokens, step-0 jump = the analysis
jump on the same tokens), the architecture and tokenizer come from the source, a relaunch with resume=auto
does not reload the source, forked sweeps share one base, and export-hf keeps the source's tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from llama_jreg import UserError
from llama_jreg.data import build_data
from llama_jreg.train.setup import build_config
from llama_jreg.train.trainer import Trainer, train
from tests.hf_assets import TEXT, make_tiny_hf_llama


def write_corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.jsonl"
    docs = [" ".join(TEXT[i:i + 5]) for i in range(0, len(TEXT), 5)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def run_overrides(tmp: Path, run: Path, *extra: str) -> list[str]:
    corpus = write_corpus(tmp / "corpus")
    return ["data=local", f"data.files=[{corpus}]", "data.seq_len=16", "data.micro_batch_size=2",
            f"data.cache_dir={tmp / 'cache'}", "data.num_proc=1", "data.val_sequences=2", "trainer.eval_batches=1",
            "trainer.progress=false", "trainer.plots=false", "trainer.log_every=1", "trainer.jump_every=2",
            "trainer.max_steps=2", "trainer.ckpt_every=2", "schedule.warmup_steps=1", f"run.dir={run}", *extra]


def rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def hf_lm_loss(hf_dir: Path, batch: dict) -> float:
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(batch["input_ids"]).logits
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), batch["labels"].flatten()))


def check_exact_start(src: Path, run: Path, cfg) -> None:
    """metrics.jsonl of a finished init_from run: step-0 rows and the first step's loss match the source."""
    from llama_jreg.analysis.jump import measure_jump
    from llama_jreg.load import load_model

    data = build_data(cfg.data, seed=cfg.seed, model_vocab=cfg.model.vocab_size)  # the run's batches, again
    first = next(data.train)
    val = data.val_batches(cfg.trainer.eval_batches)[0]
    train_row = rows(run, "train")[0]
    assert train_row["step"] == 1
    assert abs(train_row["lm_loss"] - hf_lm_loss(src, first)) <= 1e-4
    eval0 = rows(run, "eval")[0]
    assert eval0["step"] == 0 and abs(eval0["val_loss"] - hf_lm_loss(src, val)) <= 1e-4
    jump0 = rows(run, "jump")[0]
    model, _, _ = load_model(src)
    ref = measure_jump(model, val["input_ids"])
    assert jump0["step"] == 0 and jump0["psi_batch"] == "validation"
    assert jump0["val_psi"] == pytest.approx(ref["psi"], abs=1e-5)
    assert jump0["val_zeta_L"] == pytest.approx(ref["zeta_L"], abs=1e-4)


def test_init_from_hf_dir_exact_start_records_and_resume(tmp_path):
    from safetensors.torch import load_file

    src = make_tiny_hf_llama(tmp_path / "src")
    run = tmp_path / "run"
    overrides = run_overrides(tmp_path, run, f"init_from={src}", "resume=auto", "model.attn_backend=sdpa")
    cfg = build_config(overrides)
    # architecture and tokenizer from the source; the user's runtime key kept
    assert (cfg.model.n_layers, cfg.model.dim, cfg.model.vocab_size, cfg.model.max_seq_len) == (2, 32, 320, 128)
    assert cfg.model.attn_backend == "sdpa" and cfg.data.tokenizer == str(src / "tokenizer.json")
    summary = train(cfg)
    assert summary["steps"] == 2
    check_exact_start(src, run, cfg)

    want = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    record = json.loads((run / "init_from.json").read_text())
    assert record["kind"] == "hf" and record["weights_sha256"] == {"model.safetensors": want}
    ck = run / "checkpoints" / "step_00000002"
    assert json.loads((ck / "trainer_state.json").read_text())["init_from"] == record
    assert (ck / "tokenizer.json").is_file() and f"init_from: {src}" in (run / "config.yaml").read_text()

    # relaunch with resume=auto (and a changed source): resume wins, the source is not loaded again
    make_tiny_hf_llama(src, seed=1)
    trainer = Trainer(build_config([*overrides[:-3], "trainer.max_steps=4", f"init_from={src}", "resume=auto"]))
    try:
        assert trainer.resumed_from == ck and trainer.step == 2
        saved = load_file(str(ck / "model.safetensors"))
        assert torch.equal(trainer.llama.tok_embeddings.weight, saved["tok_embeddings.weight"])
        assert trainer.init_from["weights_sha256"] == {"model.safetensors": want}  # the record of the first launch
    finally:
        trainer.close()


def test_architecture_overrides_must_agree_with_the_source(tmp_path):
    src = make_tiny_hf_llama(tmp_path / "src")
    base = run_overrides(tmp_path, tmp_path / "run", f"init_from={src}")
    assert build_config([*base, "model.n_layers=2", "model.dim=32"]).model.n_layers == 2  # agreeing: fine
    assert build_config([*base, "model.max_seq_len=64"]).model.max_seq_len == 64  # a shorter context: fine
    with pytest.raises(UserError, match=r"model.n_layers=3 contradicts init_from=.* \(n_layers=2\)"):
        build_config([*base, "model.n_layers=3"])
    with pytest.raises(UserError, match=r"model=small sets vocab_size=\d+ contradicts init_from"):
        build_config([*base, "model=small"])
    with pytest.raises(UserError, match=r"model.max_seq_len=256 is longer than init_from=.*context \(128\)"):
        build_config([*base, "model.max_seq_len=256"])
    with pytest.raises(UserError, match=r"data.seq_len=200 is longer than the model context model.max_seq_len=128"):
        build_config([*base, "data.seq_len=200"])


def test_init_from_smollm2_is_a_path_first(tmp_path, monkeypatch):
    """``init_from=smollm2`` is the cached SmolLM2 dir only when nothing of that name exists: a local directory
    called smollm2 is used as the path it is (and the config records the path given)."""
    src = make_tiny_hf_llama(tmp_path / "smollm2")
    monkeypatch.chdir(tmp_path)
    cfg = build_config(run_overrides(tmp_path, tmp_path / "run", "init_from=smollm2"))
    assert cfg.init_from == "smollm2" and cfg.model.n_layers == 2 and cfg.data.tokenizer == str(src / "tokenizer.json")


@pytest.mark.slow
def test_init_from_smollm2_alias_and_the_continued_preset(tmp_path):
    """``init_from=smollm2`` (as ``experiment=continued`` sets it) resolves to the real SmolLM2-135M dir, and the
    resolved config records that directory: the same config as with the path written out."""
    from llama_jreg.interop.smollm2 import smollm2_dir

    src = smollm2_dir()
    alias = build_config(["experiment=continued", f"run.dir={tmp_path / 'run'}"])
    path = build_config(["experiment=continued", f"init_from={src}", f"run.dir={tmp_path / 'run'}"])
    assert alias.init_from == str(src) and alias == path and alias.model.n_layers == 30


def test_forked_sweep_from_one_base_checkpoint(tmp_path):
    from llama_jreg.train.command import main as train_main

    tiny = ["data=induction", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
            "model.ffn_dim=128", "model.vocab_size=64", "data.seq_len=32", "data.micro_batch_size=4",
            "data.induction.num_val=8", "trainer.eval_batches=1", "trainer.progress=false", "trainer.plots=false",
            "schedule.warmup_steps=1", "trainer.log_every=1", "trainer.jump_every=2"]
    base = tmp_path / "base"
    train_main([*tiny, "jreg.weight=0", "trainer.max_steps=2", f"run.dir={base}"])
    start = base / "checkpoints" / "step_00000002"
    sweep = tmp_path / "sweep"
    # the fork names only runtime keys; the architecture comes from the base checkpoint
    fork = ["data=induction", "data.seq_len=32", "data.micro_batch_size=4", "data.induction.num_val=8",
            "trainer.eval_batches=1", "trainer.progress=false", "trainer.plots=false", "trainer.log_every=1",
            "trainer.jump_every=2", "trainer.max_steps=2", "schedule.warmup_steps=1"]
    train_main(["-m", "jreg.weight=0,1", f"init_from={start}", *fork, f"hydra.sweep.dir={sweep}"])
    runs = [sweep / "0_jreg.weight=0", sweep / "1_jreg.weight=1"]
    evals0 = [rows(r, "eval")[0] for r in runs]
    jumps0 = [rows(r, "jump")[0] for r in runs]
    assert evals0[0]["step"] == evals0[1]["step"] == 0
    assert evals0[0]["val_loss"] == evals0[1]["val_loss"]  # both branches start from the same weights
    assert jumps0[0]["val_psi"] == jumps0[1]["val_psi"]
    base_eval = [r for r in rows(base, "eval") if r["step"] == 2][0]
    assert evals0[0]["val_loss"] == pytest.approx(base_eval["val_loss"], abs=1e-6)  # ... which are the base's
    for r in runs:
        assert json.loads((r / "init_from.json").read_text())["source"] == str(start)
    last = [rows(r, "train")[-1] for r in runs]
    assert last[0]["jreg_loss"] == 0.0 and last[1]["jreg_loss"] > 0 and last[1]["jreg_weight"] == 1.0


def test_init_from_a_run_dir_is_its_newest_checkpoint(tmp_path):
    """A run dir (as the README documents) and its newest checkpoint dir are the same source: same architecture,
    same tokenizer, same start."""
    src = make_tiny_hf_llama(tmp_path / "src")
    base = tmp_path / "base"
    train(build_config(run_overrides(tmp_path, base, f"init_from={src}")))  # a text run with a tokenizer file
    newest = base / "checkpoints" / "step_00000002"
    from_dir = build_config(run_overrides(tmp_path, tmp_path / "a", f"init_from={base}"))
    from_ckpt = build_config(run_overrides(tmp_path, tmp_path / "b", f"init_from={newest}"))
    assert from_dir.model == from_ckpt.model
    assert from_dir.data.tokenizer == from_ckpt.data.tokenizer == str(newest.resolve() / "tokenizer.json")
    train(from_dir)
    train(from_ckpt)
    a, b = rows(tmp_path / "a", "eval")[0], rows(tmp_path / "b", "eval")[0]
    assert a["step"] == b["step"] == 0 and a["val_loss"] == b["val_loss"]
    record = json.loads((tmp_path / "a" / "init_from.json").read_text())
    assert record["source"] == str(newest.resolve()) and record["kind"] == "checkpoint"


def test_export_hf_of_a_continued_run_keeps_the_source_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_jreg.commands.export_hf import export_hf

    src = make_tiny_hf_llama(tmp_path / "src")
    run = tmp_path / "run"
    train(build_config(run_overrides(tmp_path, run, f"init_from={src}")))
    out = export_hf(run, tmp_path / "export")
    theirs, ours = AutoTokenizer.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(out))
    for text in TEXT[:3] + ["café 1599 — new words"]:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    assert hf.config.num_hidden_layers == 2 and hf.config.vocab_size == 320
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (theirs.bos_token_id, theirs.eos_token_id) == (1, 0)


@pytest.mark.slow
def test_smollm2_exact_start(tmp_path):
    """Real SmolLM2-135M: first-step loss = transformers' loss, step-0 jump = the analysis jump (64 tokens)."""
    from llama_jreg.interop.smollm2 import smollm2_dir

    src = smollm2_dir()
    run = tmp_path / "run"
    overrides = run_overrides(tmp_path, run, f"init_from={src}", "trainer.max_steps=1", "data.seq_len=64",
                              "jreg.weight=1")
    cfg = build_config(overrides)
    assert cfg.model.n_layers == 30 and cfg.data.tokenizer == str(src / "tokenizer.json")
    train(cfg)
    check_exact_start(src, run, cfg)


@pytest.mark.slow
def test_init_from_in_a_two_process_run(tmp_path):
    """torchrun with 2 ranks (gloo): both ranks start from the source (step-0 validation = transformers' loss),
    and the run equals one process with 2 accumulation steps: same first-step loss, same final weights."""
    from safetensors.torch import load_file

    from tests.test_train_helpers import run_torchrun, summary_from_stdout

    src = make_tiny_hf_llama(tmp_path / "src")
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["trainer.global_batch_size=4", "trainer.max_steps=3", "trainer.ckpt_every=3", f"init_from={src}"]
    cfg = build_config(run_overrides(tmp_path, one, *common))
    train(cfg)
    proc = run_torchrun(2, run_overrides(tmp_path, two, *common))
    assert summary_from_stdout(proc.stdout)["steps"] == 3
    val = build_data(cfg.data, seed=cfg.seed, model_vocab=cfg.model.vocab_size).val_batches(1)[0]
    assert rows(two, "eval")[0]["step"] == 0
    assert abs(rows(two, "eval")[0]["val_loss"] - hf_lm_loss(src, val)) <= 1e-4
    assert rows(two, "eval")[0]["val_loss"] == pytest.approx(rows(one, "eval")[0]["val_loss"], abs=1e-6)
    assert rows(two, "jump")[0]["val_zeta_L"] == pytest.approx(rows(one, "jump")[0]["val_zeta_L"], abs=1e-5)
    assert [r["lm_loss"] for r in rows(two, "train")] == pytest.approx([r["lm_loss"] for r in rows(one, "train")],
                                                                        abs=1e-5)
    a = load_file(str(one / "checkpoints" / "step_00000003" / "model.safetensors"))
    b = load_file(str(two / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert json.loads((two / "init_from.json").read_text()) == json.loads((one / "init_from.json").read_text())


@pytest.mark.slow
def test_init_from_the_smollm2_gguf_file_equals_its_hf_dir(tmp_path):
    """init_from=<the SmolLM2 .gguf> (weights de-quantised by us, tokenizer built from the GGUF vocabulary)
    starts exactly where init_from=<the HF dir transformers made from the same file> starts: same architecture,
    same token ids, same step-0 validation loss and Psi profile."""
    from llama_jreg.interop.smollm2 import smollm2_dir, smollm2_gguf

    runs = {}
    for name, src in (("gguf", smollm2_gguf()), ("hf", smollm2_dir())):
        run = tmp_path / name
        cfg = build_config(run_overrides(tmp_path, run, f"init_from={src}", "trainer.max_steps=1", "data.seq_len=64",
                                        f"data.cache_dir={tmp_path / ('cache_' + name)}"))
        train(cfg)
        data = build_data(cfg.data, seed=cfg.seed, model_vocab=cfg.model.vocab_size)
        runs[name] = (cfg, next(data.train)["input_ids"], rows(run, "eval")[0], rows(run, "jump")[0])
    (cg, ids_g, ev_g, j_g), (ch, ids_h, ev_h, j_h) = runs["gguf"], runs["hf"]
    assert cg.model == ch.model and cg.model.n_layers == 30
    assert torch.equal(ids_g, ids_h)
    assert ev_g["step"] == ev_h["step"] == 0 and ev_g["val_loss"] == pytest.approx(ev_h["val_loss"], abs=1e-4)
    assert j_g["val_psi"] == pytest.approx(j_h["val_psi"], abs=1e-5)
    assert json.loads((tmp_path / "gguf" / "init_from.json").read_text())["kind"] == "gguf"
