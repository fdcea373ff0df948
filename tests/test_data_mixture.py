"""Weighted mixtures (``data.mixture``, llama_jreg/data/mixture.py): realised shares, one order at any world
size, resume, validation per source, real training runs (one process, and 2 ranks with torchrun resumed on one),
and the config checks.

The two sources are real text read by the real readers: English-like prose in a jsonl file (prepared into
shards) and Python-like code lines in a .txt file read as an ``hf_path: text`` stream, one line a document.
Their vocabularies barely overlap, so every window can be told apart by its tokens, independently of the
loader's own bookkeeping.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from llama_jreg import UserError
from llama_jreg.data import build_data
from llama_jreg.data.mixture import block_counts
from llama_jreg.data.schema import DataConfig, MixtureSource
from tests.test_data import make_docs, rows, take, write_jsonl
from tests.test_train_helpers import TINY, by_step, run_inprocess, run_torchrun
from tests.test_train_helpers import rows as metric_rows


def code_lines(n: int = 400, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v, k = rng.choice("abcdefxyz"), rng.randint(0, 999)
        out.append(f"def f{k}({v}): return [{v} * {k} for {v} in range({rng.randint(1, 99)})]  # {i}")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    web_docs = make_docs(40)
    code = code_lines()
    (root / "code.txt").write_text("\n".join(code) + "\n", encoding="utf-8")
    return {"root": root, "web": write_jsonl(root / "web.jsonl", web_docs), "code": str(root / "code.txt"),
            "web_docs": web_docs, "code_docs": code, "cache": root / "cache"}


def mix_cfg(corpus, w_web: float = 0.7, w_code: float = 0.3, **kw) -> DataConfig:
    base = {"source": "local", "vocab_size": 512, "tokenizer_train_chars": 200_000, "seq_len": 32,
            "micro_batch_size": 4, "val_fraction": 0.1, "val_sequences": 4, "cache_dir": str(corpus["cache"]),
            "mixture": [MixtureSource(name="web", weight=w_web, files=[corpus["web"]]),
                        MixtureSource(name="code", weight=w_code, hf_path="text", files=[corpus["code"]],
                                      text_sample_by="line")]}
    base.update(kw)
    return DataConfig(**base)


def classify(bundle, corpus):
    """A function window -> 'web' | 'code' | None from the tokens only each source's text has."""
    tok = bundle.tokenizer
    web = {t for d in corpus["web_docs"] for t in tok.encode_document(d)}
    code = {t for d in corpus["code_docs"] for t in tok.encode_document(d)}
    only_web, only_code = web - code, code - web

    def which(window) -> str | None:
        a = sum(t in only_web for t in window)
        c = sum(t in only_code for t in window)
        return "web" if a > c else "code" if c > a else None

    return which


def test_realised_shares_match_the_weights_over_100k_tokens(corpus):
    """3,200 windows of 32 tokens (102,400 tokens): the shares told from the tokens are within 2 % of the
    weights (exact at the block boundary of 1,024 windows), and tokens_by_source counts exactly those."""
    b = build_data(mix_cfg(corpus), seed=3, model_vocab=512)
    which = classify(b, corpus)
    counts = {"web": 0, "code": 0, None: 0}
    for i in range(800):  # 800 micro-batches of 4 windows
        for window in next(b.train)["input_ids"].tolist():
            counts[which(window)] += 1
        if i == 255:  # 1,024 windows: one whole block
            assert (counts["web"], counts["code"]) == (717, 307) == tuple(block_counts([0.7, 0.3], 1024))
    assert counts[None] == 0
    n = counts["web"] + counts["code"]
    assert n * 32 >= 100_000
    assert abs(counts["web"] / n - 0.7) < 0.02 and abs(counts["code"] / n - 0.3) < 0.02
    assert b.train.tokens_by_source() == {"web": counts["web"] * 32, "code": counts["code"] * 32}


def test_one_order_at_any_world_size_and_resume(corpus):
    """1 rank, 2 ranks, then a resume on 1 and on 3 ranks (state through JSON): the same windows in the same
    global order, streamed source included."""
    cfg = mix_cfg(corpus)
    B = cfg.micro_batch_size
    uninterrupted = build_data(cfg, seed=5, model_vocab=512).train
    ref = rows(take(uninterrupted, 15))

    w = [build_data(cfg, seed=5, rank=r, world_size=2, model_vocab=512).train for r in range(2)]
    got = []
    for _ in range(3):
        got += rows([next(w[0])]) + rows([next(w[1])])
    assert w[0].state_dict() == w[1].state_dict()
    state = json.loads(json.dumps(w[0].state_dict()))
    solo = build_data(cfg, seed=5, model_vocab=512).train
    solo.load_state_dict(state)
    got += rows(take(solo, 3))
    three = [build_data(cfg, seed=5, rank=r, world_size=3, model_vocab=512).train for r in range(3)]
    for loader in three:
        loader.load_state_dict(json.loads(json.dumps(solo.state_dict())))
    for _ in range(2):
        got += rows([next(three[0])]) + rows([next(three[1])]) + rows([next(three[2])])
    assert got == ref[: 15 * B]
    assert three[0].tokens_by_source() == three[2].tokens_by_source() == uninterrupted.tokens_by_source()
    assert sum(uninterrupted.tokens_by_source().values()) == 15 * B * 32


def test_resume_refuses_other_weights_or_seed(corpus):
    a = build_data(mix_cfg(corpus), seed=1, model_vocab=512).train
    next(a)
    with pytest.raises(UserError, match="original data.mixture"):
        build_data(mix_cfg(corpus, 0.5, 0.5), seed=1, model_vocab=512).train.load_state_dict(a.state_dict())
    with pytest.raises(UserError, match="seed"):
        build_data(mix_cfg(corpus), seed=2, model_vocab=512).train.load_state_dict(a.state_dict())


def test_validation_per_source_is_held_out(corpus):
    """Each source keeps its own validation part: the fixed batches come source after source, and none of
    their windows is ever drawn for training."""
    b = build_data(mix_cfg(corpus), seed=3, model_vocab=512)
    assert b.val_sources() == [("web", 0.7), ("code", 0.3)]
    val = b.val_batches(2)
    assert len(val) == 4 and all(v["input_ids"].shape == (4, 32) for v in val)
    which = classify(b, corpus)
    assert [which(w) for v in val[:2] for w in v["input_ids"].tolist()] == ["web"] * 8
    assert [which(w) for v in val[2:] for w in v["input_ids"].tolist()] == ["code"] * 8
    held = set(rows(val))
    trained = set(rows(take(b.train, 600)))
    assert not held & trained


def test_a_mixture_run_logs_tokens_and_validation_per_source(corpus, tmp_path):
    """A real (one-process) training run: train rows carry tokens_by_source (summing to tokens), eval rows
    val_loss/<name> and val_loss = their weighted mean."""
    mix = (f"data.mixture=[{{name: web, weight: 0.7, files: [{corpus['web']}]}}, {{name: code, weight: 0.3, "
           f"hf_path: text, files: [{corpus['code']}], text_sample_by: line}}]")
    over = [*[o for o in TINY if not o.startswith(("data.induction", "data=", "model.vocab_size"))],
            "model.vocab_size=512", "data=local", mix, "data.vocab_size=512", "data.tokenizer_train_chars=200000",
            "data.val_sequences=4", f"data.cache_dir={corpus['cache']}", "trainer.max_steps=6", "trainer.eval_every=3",
            f"run.dir={tmp_path}"]
    s = run_inprocess(over)
    assert s["steps"] == 6
    train = metric_rows(tmp_path, "train")
    assert all(sum(r["tokens_by_source"].values()) == r["tokens"] for r in train)
    assert train[-1]["tokens_by_source"]["code"] > 0 and train[-1]["tokens_by_source"]["web"] > 0
    evals = metric_rows(tmp_path, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert r["val_loss"] == pytest.approx(0.7 * r["val_loss/web"] + 0.3 * r["val_loss/code"], rel=1e-12)
        assert r["val_loss/web"] != r["val_loss/code"]


@pytest.mark.slow
def test_two_ranks_resume_on_one_with_the_uninterrupted_losses(corpus, tmp_path):
    """torchrun, 2 ranks: 4 steps of a mixture run; one process resumes (resume=auto) to step 8. Losses and
    tokens_by_source equal an uninterrupted one-process run's."""
    mix = (f"data.mixture=[{{name: web, weight: 0.7, files: [{corpus['web']}]}}, {{name: code, weight: 0.3, "
           f"hf_path: text, files: [{corpus['code']}], text_sample_by: line}}]")
    base = [*[o for o in TINY if not o.startswith(("data.induction", "data=", "model.vocab_size"))],
            "model.vocab_size=512", "data=local", mix, "data.vocab_size=512", "data.tokenizer_train_chars=200000",
            "data.val_sequences=4", f"data.cache_dir={corpus['cache']}", "trainer.max_steps=8",
            "trainer.global_batch_size=8", "trainer.ckpt_every=4"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_inprocess([*base, f"run.dir={ref}"])
    run_torchrun(2, [*base, f"run.dir={run}", "trainer.steps_per_run=4"])
    with pytest.warns(UserWarning, match="resuming a 2-process checkpoint"):
        s = run_inprocess([*base, f"run.dir={run}", "resume=auto"])
    assert s["resumed_from"].endswith("step_00000004")
    a, b = by_step(ref, "loss"), by_step(run, "loss")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5
    assert by_step(ref, "tokens_by_source") == by_step(run, "tokens_by_source")


# ------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("mixture,needle", [
    ("[{name: a, weight: -0.5, files: [WEB]}, {name: b, weight: 1, files: [CODE]}]", "weight=-0.5 must be > 0"),
    ("[{name: a, weight: 0, files: [WEB]}, {name: b, weight: 0, files: [CODE]}]", "all weights are zero"),
    ("[{name: a, weight: 1, files: [WEB]}, {name: a, weight: 1, files: [CODE]}]", "the name 'a' is used twice"),
    ("[{name: a, weight: 1, files: [WEB]}, {name: b, weight: 1, files: [ROOT/nope.txt]}]",
     "source 'b': ROOT/nope.txt matches no file"),
    ("[{name: a, weight: 1, files: [WEB]}, {name: b, weight: 1, files: [ROOT/blank.txt]}]",
     "source 'b': its files are empty"),
    ("[{name: a, weight: 1, files: [WEB]}, {name: b, weight: 1}]", "source 'b' reads nothing"),
    ("[{name: a, weight: 1, files: [WEB]}, {weight: 1, files: [CODE]}]", "data.mixture[1] has no name"),
    ("[{name: a, files: [WEB]}]", "source 'a' has no weight"),
])
def test_bad_mixtures_fail_at_config_time(corpus, mixture, needle):
    from llama_jreg.train.setup import build_config

    (corpus["root"] / "blank.txt").write_text("  \n\n")
    text = mixture.replace("WEB", corpus["web"]).replace("CODE", corpus["code"]).replace("ROOT", str(corpus["root"]))
    with pytest.raises(UserError, match=None) as e:
        build_config(["data=local", f"data.mixture={text}"])
    assert needle.replace("ROOT", str(corpus["root"])) in str(e.value)


def test_block_counts_sum_and_round_by_largest_remainder():
    assert block_counts([0.7, 0.3], 1024) == [717, 307]
    assert block_counts([1, 1, 1], 1024) == [342, 341, 341]
    for w in ([0.5, 0.25, 0.25], [3, 1e-3, 7], [1, 2, 3, 4, 5]):
        c = block_counts(w, 4096)
        assert sum(c) == 4096 and np.all(np.abs(np.array(c) - 4096 * np.array(w) / sum(w)) < 1)
