"""A catalogue of bad inputs (docs/bad_inputs.md): configs, data files, tokenizers, checkpoints, CLI arguments.

Each case runs the real CLI (``python -m llama_jreg ...``) in a subprocess and must end with exit status 2,
exactly one line on stderr that starts with ``error: `` and names the problem, no traceback, and nothing that
existed before overwritten or deleted (sha256 + mtime of every file in the shared world and in the case's own
directory are compared before and after; no new file may appear in the shared world).

One module-scoped world is prepared once: a small jsonl corpus, its preparation (tokenizer + shards), a
finished 2-step training run with a checkpoint, a second tokenizer, a GPT-2 HF directory and a few bad files.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_train_helpers import env_for_subprocess

WORDS = ["the", "king", "queen", "lord", "lady", "night", "day", "sword", "crown", "love", "death", "heart",
         "blood", "fair", "foul", "speak", "hear", "see", "thou", "thee", "thy", "hath", "doth", "shall", "will",
         "come", "go", "stay", "1599", "42", "café", "naïve"]

MODEL = ["model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
         "model.ffn_dim=128", "model.vocab_size=512", "model.max_seq_len=64"]
TRAIN = [*MODEL, "data.seq_len=32", "data.micro_batch_size=2", "data.val_sequences=4", "data.val_fraction=0.1",
         "data.vocab_size=512", "data.tokenizer_train_chars=200000", "data.num_proc=1",
         "trainer.max_steps=2", "trainer.ckpt_every=2", "trainer.eval_every=2", "trainer.eval_batches=1",
         "trainer.jump_every=2", "trainer.log_every=1", "trainer.progress=false", "schedule.warmup_steps=1"]


def docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Document {i}.\n" + "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(20))
            for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def cli(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_jreg", *args], cwd=cwd, check=False, capture_output=True,
                          env={**env_for_subprocess(), "LLAMA_JREG_CACHE": str(cache)}, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_size, p.stat().st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    cache = w / "cache"
    cache.mkdir()
    corpus = write_jsonl(w / "corpus.jsonl", docs(40, 0))
    other = write_jsonl(w / "other.jsonl", docs(40, 1))
    prepared = w / "prepared"
    from llama_jreg.config import load_config
    from llama_jreg.data.prepare import prepare
    from llama_jreg.data.tokenizer import train_tokenizer
    from llama_jreg.train.trainer import train

    data = ["data=local", f"data.files=[{corpus}]", f"data.prepared_dir={prepared}"]
    run = w / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMA_JREG_CACHE", str(cache))
        prepare(load_config([*TRAIN, *data]).data, log=lambda _m: None)
        train(load_config([*TRAIN, *data, f"run.dir={run}"]))
    train_tokenizer(docs(20, 2), w / "other_tokenizer.model", vocab_size=400, max_chars=50_000)
    (w / "latin1.txt").write_bytes("Ein schöner Tag, café crème.\n".encode("latin-1") * 200)
    (w / "empty.txt").write_text("  \n\n")
    for i in range(3):
        (w / f"small{i}.txt").write_text(f"a short document {i}\n")
    hf = w / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 50}))
    (w / "a_file").write_text("a file, not a directory\n")
    _init_from_sources(w)
    return {"root": w, "cache": cache, "corpus": corpus, "other": other, "prepared": prepared, "run": run,
            "ckpt": run / "checkpoints" / "step_00000002", "data": data}


def _init_from_sources(w: Path) -> None:
    """What init_from cases start from: a real GPT-2 dir, GGUFs of another architecture / an unreadable tensor
    type, a tiny HF Llama (vocab 320) and one whose tokenizer (258 tokens) exceeds its vocab (64)."""
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.hf_assets import make_tiny_gguf, make_tiny_hf_llama

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64)).save_pretrained(
        str(w / "gpt2_hf"))
    make_tiny_gguf(w / "gpt2.gguf", arch="gpt2")
    make_tiny_gguf(w / "f64.gguf", arch="llama", dtype=np.float64)
    make_tiny_hf_llama(w / "hf_llama", vocab_size=320)
    make_tiny_hf_llama(w / "hf_llama_small_vocab", vocab_size=64)


def _copy_ckpt(w, tmp: Path, edit=None) -> Path:
    dst = tmp / "ckpt" / "step_00000002"
    shutil.copytree(w["ckpt"], dst)
    if edit:
        edit(dst)
    return dst


def _truncate(ck: Path):
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(ck: Path):
    f = ck / "optimizer.pt"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


def _copy_run(w, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(w["run"], dst)
    return dst


def _other_prep(w, tmp: Path) -> Path:
    dst = tmp / "prepared"
    shutil.copytree(w["prepared"], dst)
    shutil.copyfile(w["root"] / "other_tokenizer.model", dst / "tokenizer.model")  # a valid but other model
    return dst


def _mix(w, tmp: Path, weight_a: str, weight_b: str, file_b=None, name_b: str = "b") -> str:
    """A two-source ``data.mixture`` override (the corpus, and ``file_b`` or the other corpus)."""
    return (f"data.mixture=[{{name: a, weight: {weight_a}, files: [{w['corpus']}]}}, "
            f"{{name: {name_b}, weight: {weight_b}, files: [{file_b or w['other']}]}}]")


def _choice_file(tmp: Path, second_line: str) -> Path:
    """A choice-task jsonl whose second line is ``second_line``."""
    p = tmp / "items.jsonl"
    p.write_text('{"context": "the king", "choices": ["speaks", "hears", "sees"], "gold": 0}\n' + second_line + "\n")
    return p


def _full_dir(tmp: Path) -> Path:
    d = tmp / "full"
    d.mkdir()
    (d / "keep.txt").write_text("precious\n")
    return d


# (id, argv builder (world, case tmp dir) -> argv, what the error line must contain, what is protected)
CASES = [
    # ---- configs
    ("negative-jreg-weight", lambda w, t: ["train", "jreg.weight=-1"], "jreg.weight=-1.0 must be >= 0", "no run dir"),
    ("negative-z-loss", lambda w, t: ["train", "optim.z_loss=-1"], "optim.z_loss=-1.0 must be >= 0", "no run dir"),
    ("document-mask-on-induction", lambda w, t: ["train", "data=induction", "data.document_mask=true"],
     "data=induction has one sequence per row and no EOS", "no run dir"),
    ("document-positions-without-mask", lambda w, t: ["train", "data.document_positions=true"],
     "needs data.document_mask=true", "no run dir"),
    ("unknown-size", lambda w, t: ["train", "model=huge"], "unknown model 'huge'; choose model=", "no run dir"),
    ("unknown-experiment", lambda w, t: ["train", "experiment=bogus"], "unknown experiment 'bogus'; choose experiment=",
     "no run dir"),
    ("unknown-jreg-mode", lambda w, t: ["train", "jreg.mode=sideways"], "unknown jreg.mode='sideways'", "no run dir"),
    ("unknown-jreg-stream", lambda w, t: ["train", "jreg.stream=after"], "unknown jreg.stream='after'", "no run dir"),
    ("jreg-l0-negative", lambda w, t: ["train", "jreg.l0=-2"], "jreg.l0=-2 must be >= 2", "no run dir"),
    ("negative-loss-chunk", lambda w, t: ["train", "trainer.loss_chunk_tokens=-1"],
     "trainer.loss_chunk_tokens=-1 must be >= 0", "no run dir"),
    ("profile-step-zero", lambda w, t: ["train", "trainer.profile_from=0"],
     "trainer.profile_from=0 and trainer.profile_steps=3 must be >= 1", "no run dir"),
    ("profile-after-the-end", lambda w, t: ["train", "trainer.max_steps=10", "trainer.profile_from=50"],
     "trainer.profile_from=50 is after trainer.max_steps=10", "no run dir"),
    ("unknown-rope-scaling", lambda w, t: ["train", "model.rope_scaling=ntk"], "unknown model.rope_scaling='ntk'",
     "no run dir"),
    ("unknown-key", lambda w, t: ["train", "trainer.nope=3"], "trainer.nope", "no run dir"),
    ("mistyped-key", lambda w, t: ["train", "jreg.wieght=5"],
     "unknown config key jreg.wieght; did you mean jreg.weight?", "no run dir"),
    ("mistyped-key-with-plus", lambda w, t: ["train", "+jreg.wieght=5"],
     "unknown config key jreg.wieght; did you mean jreg.weight?", "no run dir"),
    ("mistyped-trainer-key-with-plus", lambda w, t: ["train", "+trainer.max_step=3"],
     "unknown config key trainer.max_step; did you mean trainer.max_steps?", "no run dir"),
    ("data-files-with-shakespeare", lambda w, t: ["train", "data=shakespeare", f"data.files=[{w['corpus']}]"],
     "data.files is read by data=local (or data=hf), not by data=shakespeare", "no run dir"),
    ("induction-key-with-a-text-source", lambda w, t: ["train", *TRAIN, *w["data"], "data.induction.num_triggers=3"],
     "data.induction.num_triggers is read by data=induction only (this run uses data=local)", "no run dir"),
    ("text-key-with-induction", lambda w, t: ["train", "data=induction", f"data.files=[{w['corpus']}]"],
     "data.files is read by the text sources, not by data=induction", "no run dir"),
    ("wrong-type", lambda w, t: ["train", "trainer.max_steps=many"], "trainer.max_steps", "no run dir"),
    ("seq-longer-than-context", lambda w, t: ["train", "data.seq_len=100000"], "longer than the model context",
     "no run dir"),
    ("heads-not-dividing-width", lambda w, t: ["train", "model.n_heads=5"], "does not divide model.dim=256",
     "no run dir"),
    ("flash-without-flash-attn", lambda w, t: ["train", "model.attn_backend=flash"], "flash-attn is not installed",
     "no run dir"),
    ("sweep-list-without-m", lambda w, t: ["train", "jreg.weight=0,0.1"], "add -m", "no run dir"),
    ("unquoted-equals-in-a-path", lambda w, t: ["train", f"init_from={t / 'a=b'}"],
     "must be quoted: 'init_from=\"", "no run dir"),
    ("unclosed-list", lambda w, t: ["train", "data.files=[a.txt"], "with their brackets closed", "no run dir"),
    ("run-dir-escapes-root", lambda w, t: ["train", f"run.root={t / 'root'}", "run.dir=../escape"],
     "resolves outside run.root", "nothing outside run.root"),
    ("global-batch-not-multiple", lambda w, t: ["train", *TRAIN, *w["data"], "trainer.global_batch_size=3",
                                                f"run.dir={t / 'r'}"], "not a multiple", "shared data"),
    ("async-checkpoint-full-format", lambda w, t: ["train", "trainer.async_checkpoint=true",
                                                   "trainer.checkpoint_format=full"],
     "trainer.async_checkpoint=true writes sharded checkpoints only", "no run dir"),
    # ---- weighted mixtures (data.mixture)
    ("mixture-weight-not-positive", lambda w, t: ["train", *TRAIN, "data=local", _mix(w, t, "-0.5", "1")],
     "data.mixture source 'a': weight=-0.5 must be > 0", "no run dir"),
    ("mixture-all-weights-zero", lambda w, t: ["train", *TRAIN, "data=local", _mix(w, t, "0", "0")],
     "data.mixture: all weights are zero", "no run dir"),
    ("mixture-missing-source", lambda w, t: ["train", *TRAIN, "data=local", _mix(w, t, "1", "1", t / "nope.jsonl")],
     "data.mixture source 'b': ", "no run dir"),
    ("mixture-empty-source", lambda w, t: ["train", *TRAIN, "data=local",
                                           _mix(w, t, "1", "1", w["root"] / "empty.txt")],
     "data.mixture source 'b': its files are empty", "no run dir"),
    ("mixture-duplicate-name", lambda w, t: ["train", *TRAIN, "data=local", _mix(w, t, "1", "1", name_b="a")],
     "data.mixture: the name 'a' is used twice", "no run dir"),
    # ---- data files and tokenizer
    ("missing-data-file", lambda w, t: ["train", *TRAIN, "data=local", f"data.files=[{t / 'nope.jsonl'}]",
                                        f"run.dir={t / 'r'}"], "matches no file", "the cache"),
    ("empty-corpus", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['root'] / 'empty.txt'}]",
                                   f"--out={t / 'p'}"], "empty corpus", "the cache"),
    ("non-utf8-file", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['root'] / 'latin1.txt'}]",
                                    f"data.tokenizer={w['prepared'] / 'tokenizer.model'}", f"--out={t / 'p'}"],
     "latin1.txt is not valid UTF-8", "the cache"),
    ("tokenizer-bigger-than-vocab", lambda w, t: ["train", *TRAIN, *w["data"], "model.vocab_size=300",
                                                  "data.vocab_size=300", f"run.dir={t / 'r'}"],
     "model.vocab_size=300", "the prepared data"),
    ("tokenizer-hash-mismatch", lambda w, t: ["train", *TRAIN, "data=local", f"data.files=[{w['corpus']}]",
                                              f"data.prepared_dir={_other_prep(w, t)}", f"run.dir={t / 'r'}"],
     "does not match the manifest's tokenizer hash", "the prepared data"),
    ("data-tokenizer-not-the-prepared-one", lambda w, t: ["train", *TRAIN, *w["data"],
                                                          f"data.tokenizer={w['root'] / 'other_tokenizer.model'}",
                                                          f"run.dir={t / 'r'}"],
     "was tokenized with tokenizer sha256", "the prepared data"),
    ("missing-tokenizer-file", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['corpus']}]",
                                             f"data.tokenizer={t / 'nope.model'}", f"--out={t / 'p'}"],
     "nope.model not found", "the cache"),
    ("tokenizer-not-sentencepiece", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['corpus']}]",
                                                  f"data.tokenizer={w['corpus']}", f"--out={t / 'p'}"],
     "corpus.jsonl is not a SentencePiece model", "the cache"),
    ("corpus-too-small", lambda w, t: ["train", *TRAIN, "data=local",
                                       f"data.files=[{','.join(str(w['root'] / f'small{i}.txt') for i in range(3))}]",
                                       f"data.tokenizer={w['prepared'] / 'tokenizer.model'}",
                                       f"data.prepared_dir={t / 'p'}", f"run.dir={t / 'r'}"],
     "of one training and one validation sequence of data.seq_len+1=33; add at least", "the cache"),
    ("prepare-into-other-preparation", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['other']}]",
                                                     f"--out={w['prepared']}"],
     "already holds a different preparation", "the existing preparation"),
    ("prepare-into-non-empty-dir", lambda w, t: ["prepare-data", *TRAIN, "data=local", f"data.files=[{w['corpus']}]",
                                                 f"--out={_full_dir(t)}"],
     "is not a prepared data directory", "the directory's files"),
    # ---- checkpoints and run dirs
    ("resume-missing-checkpoint", lambda w, t: ["train", *TRAIN, *w["data"], f"resume={t / 'nope'}",
                                                f"run.dir={t / 'r'}"], "no such checkpoint", "no run dir"),
    ("resume-truncated-checkpoint", lambda w, t: ["train", *TRAIN, *w["data"],
                                                  f"resume={_copy_ckpt(w, t, _truncate)}", f"run.dir={t / 'r'}"],
     "model.safetensors does not match its sha256", "the checkpoint"),
    ("resume-altered-checkpoint", lambda w, t: ["train", *TRAIN, *w["data"], f"resume={_copy_ckpt(w, t, _flip)}",
                                                f"run.dir={t / 'r'}"],
     "optimizer.pt does not match its sha256", "the checkpoint"),
    ("resume-checkpoint-without-manifest", lambda w, t: ["train", *TRAIN, *w["data"],
                                                         f"resume={_copy_ckpt(w, t, lambda c: (c / 'manifest.json').unlink())}",
                                                         f"run.dir={t / 'r'}"],
     "has no manifest.json", "the checkpoint"),
    ("resume-not-a-checkpoint", lambda w, t: ["train", *TRAIN, *w["data"], f"resume={w['prepared']}",
                                              f"run.dir={t / 'r'}"], "is not a checkpoint manifest", "the directory"),
    ("resume-with-other-data", lambda w, t: ["train", *TRAIN, *w["data"], "data.seq_len=16",
                                             f"resume={w['ckpt']}", f"run.dir={t / 'r'}"],
     "trained on other data", "the checkpoint"),
    ("resume-auto-with-other-data", lambda w, t: ["train", *TRAIN, *w["data"], "data.seq_len=16", "resume=auto",
                                                  f"run.dir={_copy_run(w, t)}"],
     "trained on other data", "the run dir: config.yaml, metrics.jsonl, checkpoints"),
    ("resume-auto-with-another-model", lambda w, t: ["train", "model.n_layers=3", "resume=auto",
                                                     f"run.dir={_copy_run(w, t)}"],
     "model.n_layers=3 differs from the run's", "the run dir: config.yaml, metrics.jsonl, checkpoints"),
    ("run-dir-with-checkpoints-no-resume", lambda w, t: ["train", *TRAIN, *w["data"], f"run.dir={_copy_run(w, t)}"],
     "already holds checkpoints", "the run dir: config.yaml, metrics.jsonl, checkpoints"),
    ("unwritable-run-dir", lambda w, t: ["train", *TRAIN, *w["data"], f"run.dir={w['root'] / 'a_file' / 'run'}"],
     "cannot write to run.dir", "the file in the way"),
    # ---- init_from (continued pre-training)
    ("init-from-missing-path", lambda w, t: ["train", *TRAIN, *w["data"], f"init_from={t / 'nope'}",
                                             f"run.dir={t / 'r'}"], "no such file or directory", "no run dir"),
    ("init-from-non-llama", lambda w, t: ["train", *TRAIN, *w["data"], f"init_from={w['root'] / 'gpt2_hf'}",
                                          f"run.dir={t / 'r'}"], "not a Llama model: model_type='gpt2'", "no run dir"),
    ("init-from-gguf-other-architecture", lambda w, t: ["train", *TRAIN, *w["data"],
                                                        f"init_from={w['root'] / 'gpt2.gguf'}", f"run.dir={t / 'r'}"],
     "GGUF architecture 'gpt2' is not supported", "no run dir"),
    ("init-from-gguf-unsupported-quantisation", lambda w, t: ["train", *TRAIN, *w["data"],
                                                              f"init_from={w['root'] / 'f64.gguf'}", f"run.dir={t / 'r'}"],
     "GGUF quantisation F64 cannot be de-quantised", "no run dir"),
    ("init-from-tokenizer-bigger-than-vocab", lambda w, t: ["train", "data=local", f"data.files=[{w['corpus']}]",
                                                            f"init_from={w['root'] / 'hf_llama_small_vocab'}",
                                                            "data.seq_len=32", f"run.dir={t / 'r'}"],
     "has 258 tokens but init_from=", "no run dir"),
    ("init-from-contradicting-override", lambda w, t: ["train", "data=local", f"data.files=[{w['corpus']}]",
                                                       f"init_from={w['root'] / 'hf_llama'}", "model.n_layers=3",
                                                       "data.seq_len=32", f"run.dir={t / 'r'}"],
     "model.n_layers=3 contradicts init_from=", "no run dir"),
    # ---- task evaluation (tasks=[...] in training, eval-tasks)
    ("unknown-task", lambda w, t: ["train", "tasks=[induction,clozee]"], "unknown task 'clozee'", "no run dir"),
    ("task-file-malformed-row", lambda w, t: ["train", *TRAIN, *w["data"],
                                              f"tasks=[choice:{_choice_file(t, '{context: the queen}')}]",
                                              f"run.dir={t / 'r'}"], "items.jsonl line 2 is not JSON",
     "the task file, the prepared data"),
    ("task-gold-out-of-range", lambda w, t: ["train", *TRAIN, *w["data"], "tasks=[choice:" + str(_choice_file(
        t, '{"context": "the queen", "choices": ["a", "b", "c"], "gold": 3}')) + "]", f"run.dir={t / 'r'}"],
     "gold=3 is out of range for 3 choices", "the task file, the prepared data"),
    ("task-needs-a-source-the-run-lacks", lambda w, t: ["train", *TRAIN, *w["data"], "tasks=[induction]",
                                                        f"run.dir={t / 'r'}"],
     "needs the synthetic induction source", "the prepared data"),
    ("eval-tasks-unknown-task", lambda w, t: ["eval-tasks", str(w["run"]), "--tasks", "cloze,multiple"],
     "unknown task 'multiple'", "-"),
    ("eval-tasks-lm-eval-offline", lambda w, t: ["eval-tasks", str(w["run"]), "--tasks", "lm-eval:hellaswag"],
     "lm-eval could not load the data of 'hellaswag'", "-"),
    # ---- analysis / export commands
    ("jump-missing-path", lambda w, t: ["jump", str(t / "nope"), "--text", str(w["corpus"])],
     "no such file or directory", "-"),
    ("eval-on-a-plain-file", lambda w, t: ["eval", str(w["corpus"]), "--text", str(w["corpus"])],
     "is a file but not a .gguf", "-"),
    ("jump-on-a-data-dir", lambda w, t: ["jump", str(w["prepared"]), "--text", str(w["corpus"])],
     "is not a model", "-"),
    ("jump-non-llama-hf-dir", lambda w, t: ["jump", str(w["root"] / "gpt2"), "--text", str(w["corpus"])],
     "not a Llama model", "-"),
    ("jump-non-utf8-text", lambda w, t: ["jump", str(w["run"]), "--text", str(w["root"] / "latin1.txt")],
     "is not UTF-8 text", "-"),
    ("export-hf-missing-path", lambda w, t: ["export-hf", str(t / "nope"), str(t / "out")],
     "no such file or directory", "no output dir"),
    ("export-hf-into-non-empty-dir", lambda w, t: ["export-hf", str(w["run"]), str(_full_dir(t))],
     "is not empty", "the directory's files"),
    ("export-hf-wrong-kind", lambda w, t: ["export-hf", str(w["corpus"]), str(t / "out")],
     "is a file but not a .gguf", "no output dir"),
    # ---- CLI arguments
    ("unknown-command", lambda w, t: ["bogus-command"], "unknown command", "-"),
    ("unknown-option", lambda w, t: ["export-hf", "--bogus", str(w["run"]), str(t / "out")],
     "unrecognized arguments: --bogus", "no output dir"),
    ("missing-argument", lambda w, t: ["jump"], "the following arguments are required", "-"),
    ("sweep-report-missing-dir", lambda w, t: ["sweep-report", str(t / "nope")], "does not exist", "-"),
]

# the default run (`make test`) keeps one or more cases of every kind; the rest run with the slow tests
FAST = {"negative-jreg-weight", "negative-z-loss", "unknown-size", "unknown-experiment", "unknown-jreg-mode",
        "unknown-key", "mistyped-key-with-plus", "data-files-with-shakespeare", "wrong-type", "seq-longer-than-context", "heads-not-dividing-width", "flash-without-flash-attn",
        "sweep-list-without-m",
        "run-dir-escapes-root", "missing-data-file", "tokenizer-hash-mismatch", "prepare-into-other-preparation",
        "resume-truncated-checkpoint", "resume-auto-with-other-data", "export-hf-into-non-empty-dir",
        "jump-non-llama-hf-dir", "init-from-non-llama", "init-from-contradicting-override", "unknown-command", "unknown-option",
        "unquoted-equals-in-a-path", "unclosed-list", "missing-argument", "sweep-report-missing-dir",
        "async-checkpoint-full-format", "mixture-weight-not-positive", "mixture-empty-source",
        "unknown-task", "task-file-malformed-row", "eval-tasks-unknown-task"}
PARAMS = [pytest.param(*c, id=c[0], marks=() if c[0] in FAST else pytest.mark.slow) for c in CASES]


@pytest.mark.parametrize("name,build,needle,protected", PARAMS)
def test_bad_input(world, tmp_path, name, build, needle, protected):
    case = tmp_path / "case"
    case.mkdir()
    argv = build(world, case)
    before_world, before_case = snapshot(world["root"]), snapshot(case)
    p = cli(argv, cwd=case, cache=world["cache"])
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("error: "), p.stderr[-3000:]
    assert needle in err[0], err[0]
    after_world, after_case = snapshot(world["root"]), snapshot(case)
    assert after_world == before_world, "files of the shared world changed or appeared"
    changed = {k for k in before_case if after_case.get(k) != before_case[k]}
    assert not changed, f"pre-existing files changed or deleted: {changed}"
    assert not (tmp_path / "escape").exists() and not (case.parent / "escape").exists()
    created = sorted(set(after_case) - set(before_case))
    if protected == "no run dir":
        assert not created, created


def test_catalogue_is_documented():
    """docs/bad_inputs.md lists every case of this file (by id)."""
    doc = (REPO / "docs" / "bad_inputs.md").read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in doc]
    assert not missing, missing
