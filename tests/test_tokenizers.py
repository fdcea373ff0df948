"""HF tokenizers (tokenizer.json) in the data pipeline: ids equal transformers' AutoTokenizer, BOS/EOS around
documents, the data fingerprint, uint32 shards for vocabularies over 65,535 and the embedding-size check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llama_jreg import UserError
from llama_jreg.data import build_data
from llama_jreg.data.prepare import data_fingerprint, prepare
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import make_source
from llama_jreg.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from tests.hf_assets import TEXT, make_bpe_tokenizer

SAMPLES = ["Hello world", "  leading spaces and trailing  ", "digits 1234567 and 3.14159", "café naïve — “quoted” ’tis",
           "line one\nline two\n\n\ttab", "<|im_start|> looks special", "日本語のテキスト", "emoji 🙂👍", ""]


def quiet(_msg: str) -> None:
    pass


def local_cfg(files: list[str], cache: Path, tokenizer: str, **kw) -> DataConfig:
    base = {"source": "local", "files": files, "tokenizer": tokenizer, "seq_len": 16, "micro_batch_size": 2,
            "val_fraction": 0.25, "val_sequences": 2, "cache_dir": str(cache), "num_proc": 1}
    base.update(kw)
    return DataConfig(**base)


def write_docs(directory: Path, docs: list[str]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return [str(path)]


def test_smollm2_tokenizer_ids_equal_autotokenizer():
    from transformers import AutoTokenizer

    from llama_jreg.interop.smollm2 import smollm2_dir

    d = smollm2_dir()
    ours = load_tokenizer(d)
    assert isinstance(ours, HFTokenizer) and ours.path == str(d / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(str(d))
    assert ours.vocab_size == len(theirs) == 49152
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.add_bos is False  # SmolLM2's post-processor adds nothing in front of a text
    for text in SAMPLES + TEXT[:3]:
        want = theirs(text)["input_ids"]
        assert ours.encode(text, bos=ours.add_bos) == want, text
        assert ours.encode_document(text) == want + [theirs.eos_token_id]
        assert ours.decode(ours.encode(text)) == theirs.decode(want)
    assert ours.encode_batch(SAMPLES) == [theirs(t, add_special_tokens=False)["input_ids"] for t in SAMPLES]


def test_bos_added_when_the_tokenizer_adds_one(tmp_path):
    from transformers import AutoTokenizer

    path = make_bpe_tokenizer(tmp_path / "tok", add_bos=True)
    tok = load_tokenizer(path)
    theirs = AutoTokenizer.from_pretrained(str(path.parent))
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_id == 0
    for text in TEXT[:3]:
        assert tok.encode(text, bos=tok.add_bos) == theirs(text)["input_ids"]
    # prepared shards: every document is BOS + ids + EOS
    docs = [TEXT[0], TEXT[1], TEXT[2], TEXT[0] + " again"]
    cfg = local_cfg(write_docs(tmp_path / "c", docs), tmp_path / "cache", str(path))
    out, manifest = prepare(cfg, log=quiet)
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and manifest["tokenizer"]["add_bos"] is True
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").exists()
    stream = np.fromfile(out / "tokens_00000.bin", dtype=manifest["dtype"]).tolist()
    assert stream == sum((tok.encode(d, bos=True, eos=True) for d in docs), [])


def test_fingerprint_includes_the_tokenizer(tmp_path):
    files = write_docs(tmp_path / "c", TEXT[:4])
    a = make_bpe_tokenizer(tmp_path / "a", vocab_size=300)
    b = make_bpe_tokenizer(tmp_path / "b", vocab_size=280)
    c = make_bpe_tokenizer(tmp_path / "c_bos", vocab_size=300, add_bos=True)  # same vocab, BOS added
    prints = {data_fingerprint(make_source(cfg), cfg)
              for cfg in (local_cfg(files, tmp_path, str(p)) for p in (a, b, c))}
    assert len(prints) == 3
    # the copy in a prepared dir loads to the same identity, so build_data accepts it
    cfg = local_cfg(files, tmp_path / "cache", str(a))
    out, manifest = prepare(cfg, log=quiet)
    assert load_tokenizer(out / "tokenizer.json").sha256 == load_tokenizer(a).sha256 == manifest["tokenizer"]["sha256"]
    bundle = build_data(cfg, seed=0, model_vocab=300)
    assert isinstance(bundle.tokenizer, HFTokenizer)


def test_vocab_over_65535_uses_uint32_shards_and_must_fit_the_embedding(tmp_path):
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers

    words = [f"w{i}" for i in range(70_000)]
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tk = RustTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "tok").mkdir()
    tk.save(str(tmp_path / "tok" / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tok")  # a directory with tokenizer.json; EOS found as </s>
    assert tok.vocab_size == 70_002 and tok.eos_id == 1 and not tok.add_bos
    docs = [" ".join(words[69_999 - i - 1700 * j] for j in range(40)) for i in range(6)]  # ids up to 70,001
    cfg = local_cfg(write_docs(tmp_path / "c", docs), tmp_path / "cache", str(tmp_path / "tok"), val_fraction=0.5)
    out, manifest = prepare(cfg, log=quiet)
    assert manifest["dtype"] == "uint32"
    stream = np.fromfile(out / "tokens_00000.bin", dtype=np.uint32)
    assert stream.max() > 65535
    assert stream.tolist() == sum((tok.encode(d, eos=True) for d in docs), [])
    assert build_data(cfg, seed=0, model_vocab=70_002).tokenizer.vocab_size == 70_002
    with pytest.raises(UserError, match=r"has 70002 tokens but model.vocab_size=65536"):
        build_data(cfg, seed=0, model_vocab=65536)


def test_load_tokenizer_dispatch_and_bad_files(tmp_path):
    from llama_jreg.data.tokenizer import train_tokenizer

    sp = train_tokenizer(TEXT, tmp_path / "sp" / "tokenizer.model", vocab_size=300, max_chars=100_000)
    assert isinstance(load_tokenizer(tmp_path / "sp"), Tokenizer)
    assert load_tokenizer(tmp_path / "sp" / "tokenizer.model").sha256 == sp.sha256
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="is not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path / "empty")
