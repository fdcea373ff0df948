"""Data layer: tokenizer, prepare-data, the packed loader (ranks, resume) and streaming mode, bad input."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_jreg import UserError
from llama_jreg.commands.prepare_data import main as prepare_main
from llama_jreg.data import build_data
from llama_jreg.data.prepare import FORMAT_VERSION, prepare, read_manifest
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.tokenizer import Tokenizer, train_tokenizer

WORDS = ["the", "king", "queen", "lord", "lady", "night", "day", "sword", "crown", "love", "death", "heart", "blood", "fair", "foul", "speak", "hear", "see", "thou", "thee", "thy", "hath", "doth", "shall", "will", "come", "go", "stay", "1599", "42", "Ænon", "café", "naïve", "—", "“quoted”", "’tis"]


def make_docs(n: int = 40, words: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(words // 12)]
        docs.append(f"Document {i}.\n" + "\n".join(lines) + "\n")
    return docs


def write_txt(directory: Path, docs: list[str]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (directory / f"doc_{i:03d}.txt").write_text(d, encoding="utf-8")
    return sorted(str(p) for p in directory.glob("*.txt"))


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return str(path)


def local_cfg(files: list[str], cache: Path, **kw) -> DataConfig:
    base = {"source": "local", "files": list(files), "vocab_size": 512, "tokenizer_train_chars": 200_000, "seq_len": 32,
                "micro_batch_size": 4, "val_fraction": 0.1, "val_sequences": 6, "cache_dir": str(cache)}
    base.update(kw)
    return DataConfig(**base)


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs()
    return {"root": root, "docs": docs, "jsonl": write_jsonl(root / "c.jsonl", docs),
            "txt": write_txt(root / "txt", docs)}


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """One preparation of the jsonl corpus shared by the loader tests."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = local_cfg([corpus["jsonl"]], cache)
    out, manifest = prepare(cfg, log=quiet)
    return cfg, out, manifest


def take(loader, n):
    return [next(loader) for _ in range(n)]


def rows(batches) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for b in batches for r in b["input_ids"]]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_llama_ids(corpus, tmp_path):
    tok = train_tokenizer(corpus["docs"], tmp_path / "t.model", vocab_size=512, max_chars=100_000)
    assert (tok.unk_id if hasattr(tok, "unk_id") else tok.sp.unk_id()) == 0
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
    assert tok.vocab_size == 512
    for text in corpus["docs"][:3] + ["  two  spaces\n\nnew lines\ttab", "unseen 字 emoji 🎭 and digits 31415"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    ids = tok.encode("hi", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    digits = [tok.sp.IdToPiece(i) for i in tok.encode("31415")]
    assert all(len(p.strip("▁")) <= 1 for p in digits)  # split_digits
    again = Tokenizer(tmp_path / "t.model")
    assert again.sha256 == tok.sha256 and len(tok.sha256) == 64


# ---------------------------------------------------------------- prepare-data


def test_prepare_manifest_and_tokens_decode_back(prepared, corpus):
    _cfg, out, m = prepared
    assert m["tokenizer"]["sha256"] == Tokenizer(out / "tokenizer.model").sha256
    assert m["dtype"] == "uint16" and m["stream"]["documents"] == len(corpus["docs"])
    tok = Tokenizer(out / "tokenizer.model")
    stream = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in m["stream"]["shards"]])
    assert stream.size == m["stream"]["tokens"]
    docs = np.split(stream, np.flatnonzero(stream == tok.eos_id) + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == corpus["docs"]  # every document, in source order


def windows(samples) -> list[tuple[int, ...]]:
    return [tuple(samples.window(i).tolist()) for i in range(len(samples))]


def test_validation_is_the_head_of_the_stream_and_disjoint_from_train(prepared):
    cfg, out, m = prepared
    stream = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in m["stream"]["shards"]])
    n = stream.size
    for seq_len, val_sequences in ((32, 6), (16, 40), (64, 3)):
        c = DataConfig(**{**cfg.__dict__, "seq_len": seq_len, "val_sequences": val_sequences})
        assert n >= 2 * (val_sequences * seq_len + 1)  # the corpus is big enough for the guarantee
        b = build_data(c, seed=0, model_vocab=512)
        assert b.prepared_dir == out  # another seq_len reuses the same preparation
        val, train = b.validation, b.train.samples
        assert len(val) >= val_sequences
        assert len(b.val_batches(1 + val_sequences // c.micro_batch_size)) >= 1
        nval = val.num_tokens
        assert nval >= max(cfg.val_fraction * n, val_sequences * seq_len + 1) and nval + train.num_tokens == n
        assert windows(val) == [tuple(stream[i * seq_len:i * seq_len + seq_len + 1].tolist()) for i in range(len(val))]
        assert train.window(0).tolist() == stream[nval:nval + seq_len + 1].tolist()
        last = (len(val) - 1) * seq_len + seq_len + 1  # tokens used by validation (inputs and labels)
        assert last <= nval  # so no validation token is ever a training input or label

    # a corpus with fewer tokens than 2 * (val_sequences * seq_len + 1): validation is its first half
    c = DataConfig(**{**cfg.__dict__, "val_sequences": n // 32})
    b = build_data(c, seed=0, model_vocab=512)
    assert b.validation.num_tokens == n // 2 and 1 <= len(b.validation) < c.val_sequences
    assert len(b.train.samples) >= len(b.validation)
    # too short for one training and one validation sequence: one line saying how much text is missing
    c = DataConfig(**{**cfg.__dict__, "seq_len": n // 2})
    with pytest.raises(UserError, match=rf"has {n:,} tokens, fewer than the {2 * (n // 2 + 1):,} of one training "
                                        rf"and one validation sequence.*add at least {2 * (n // 2 + 1) - n} tokens"):
        build_data(c, seed=0, model_vocab=512)


def test_prepare_is_idempotent_and_refuses_other_data_without_force(prepared, corpus, tmp_path):
    cfg, out, m = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    out2, m2 = prepare(cfg, log=quiet)  # same fingerprint: no-op
    assert out2 == out and m2 == m
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    other = local_cfg(corpus["txt"][:20], Path(cfg.cache_dir))
    with pytest.raises(UserError, match="different preparation.*--force"):
        prepare(other, out=out, log=quiet)
    assert read_manifest(out) == m  # nothing lost
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # --force replaces it, through the CLI entry point (Hydra overrides + --out)
    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "manifest.json").write_text(json.dumps(m))
    argv = ["data=local", f"data.files=[{corpus['txt'][0]},{corpus['txt'][1]},{corpus['txt'][2]}]",
            "data.vocab_size=400", f"data.cache_dir={tmp_path}", "data.val_fraction=0.3", "--out", str(forced)]
    with pytest.raises(UserError, match="--force"):
        prepare_main(argv)
    assert prepare_main(argv + ["--force"]) == 0
    m3 = read_manifest(forced)
    assert m3["fingerprint"] != m["fingerprint"] and m3["stream"]["documents"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".forced")]  # temp dirs cleaned up
    assert prepare_main(argv) == 0  # idempotent re-run without --force


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        prepare_main(["--help"])
    assert e.value.code == 0
    assert "--force" in capsys.readouterr().out


def test_txt_jsonl_parquet_give_the_same_tokens(corpus, tmp_path, prepared):
    """local text files (one doc per file), jsonl and parquet (through the hf code path) agree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _cfg, out, m = prepared
    tok = str(out / "tokenizer.model")
    pq_path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": corpus["docs"]}), pq_path)
    variants = {
        "txt": local_cfg(corpus["txt"], tmp_path, tokenizer=tok),
        "glob": local_cfg([str(Path(corpus["txt"][0]).parent / "*.txt")], tmp_path, tokenizer=tok),
        "jsonl": local_cfg([corpus["jsonl"]], tmp_path, tokenizer=tok),
        "hf-parquet": local_cfg([str(pq_path)], tmp_path, tokenizer=tok, source="hf", hf_path="parquet",
                                text_field="body"),
    }
    streams = {}
    for name, c in variants.items():
        d, man = prepare(c, log=quiet)
        assert man["tokenizer"]["sha256"] == m["tokenizer"]["sha256"]
        streams[name] = np.fromfile(d / man["stream"]["shards"][0]["file"], dtype=np.uint16)
    assert all(np.array_equal(s, streams["jsonl"]) for s in streams.values())


# ---------------------------------------------------------------- loader


def test_batches_shapes_and_shifted_labels(prepared):
    cfg, out, m = prepared
    b = build_data(cfg, seed=3, model_vocab=512)
    batch = next(b.train)
    assert batch["input_ids"].shape == (4, 32) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    stream = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in m["stream"]["shards"]])
    row = batch["input_ids"][0].numpy()
    starts = [i for i in range(stream.size - 32) if np.array_equal(stream[i:i + 32], row)]
    assert starts and stream[starts[0] + 32] == batch["labels"][0, -1].item()
    assert b.fingerprint and b.manifest["fingerprint"] == m["fingerprint"]
    vb = b.val_batches(3)
    assert len(vb) == 3 and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(vb, b.val_batches(3)))
    assert vb[0]["input_ids"].shape == (4, 32)


def test_two_ranks_union_equals_one_rank_and_no_overlap(prepared):
    cfg, _, _ = prepared
    one = build_data(cfg, seed=7, model_vocab=512)
    r0 = build_data(cfg, seed=7, rank=0, world_size=2, model_vocab=512)
    r1 = build_data(cfg, seed=7, rank=1, world_size=2, model_vocab=512)
    n = one.train.state_dict()["samples_per_epoch"]
    steps = n // 8 + 3  # a bit more than one epoch (2 ranks x 4 sequences per step)
    single = rows(take(one.train, 2 * steps))
    paired, seen0, seen1 = [], [], []
    for _ in range(steps):
        seen0 += rows([next(r0.train)])
        seen1 += rows([next(r1.train)])
        paired += seen0[-4:] + seen1[-4:]
    assert single == paired
    assert not set(seen0[: n // 2 - 4]) & set(seen1[: n // 2 - 4])  # within an epoch the ranks never overlap
    first_epoch = single[:n]
    assert len(set(first_epoch)) == len(first_epoch)  # an epoch visits every window once
    assert one.train.state_dict()["cursor"] == r0.train.state_dict()["cursor"] == r1.train.state_dict()["cursor"]
    assert one.train.state_dict()["epoch"] >= 1


@pytest.mark.parametrize("k", [1, 5])
def test_resume_twice_and_with_another_world_size(prepared, k):
    cfg, _, _ = prepared
    B = cfg.micro_batch_size
    ref = rows(take(build_data(cfg, seed=1, model_vocab=512).train, 4 * k + 3))

    a = build_data(cfg, seed=1, model_vocab=512)
    got = rows(take(a.train, k))
    state = json.loads(json.dumps(a.train.state_dict()))  # must survive JSON
    b = build_data(cfg, seed=1, model_vocab=512)
    b.train.load_state_dict(state)
    got += rows(take(b.train, k))
    c = build_data(cfg, seed=1, model_vocab=512)  # second resume in a row
    c.train.load_state_dict(b.train.state_dict())
    got += rows(take(c.train, 2 * k))
    assert got == ref[: 4 * k * B]

    # 2 ranks -> 1 rank: the single rank continues with exactly the next samples
    w0 = build_data(cfg, seed=1, rank=0, world_size=2, model_vocab=512)
    w1 = build_data(cfg, seed=1, rank=1, world_size=2, model_vocab=512)
    two = []
    for _ in range(k):
        two += rows([next(w0.train)]) + rows([next(w1.train)])
    solo = build_data(cfg, seed=1, model_vocab=512)
    solo.train.load_state_dict(w0.train.state_dict())
    two += rows(take(solo.train, 3))
    assert two == ref[: (2 * k + 3) * B]


def test_resume_refuses_other_data_or_seed(prepared, corpus):
    cfg, _, _ = prepared
    a = build_data(cfg, seed=1, model_vocab=512)
    next(a.train)
    longer = DataConfig(**{**cfg.__dict__, "seq_len": 16})
    with pytest.raises(UserError, match="original data"):
        build_data(longer, seed=1, model_vocab=512).train.load_state_dict(a.train.state_dict())
    with pytest.raises(UserError, match="seed"):
        build_data(cfg, seed=2, model_vocab=512).train.load_state_dict(a.train.state_dict())


# ---------------------------------------------------------------- streaming


def test_streaming_resume_twice_matches_uninterrupted(corpus, tmp_path, prepared):
    _, out, _ = prepared
    small = write_jsonl(tmp_path / "small.jsonl", corpus["docs"][:12])
    cfg = local_cfg([small], tmp_path, streaming=True, tokenizer=str(out / "tokenizer.model"), val_sequences=3)
    ref_bundle = build_data(cfg, seed=0, model_vocab=512)
    ref = rows(take(ref_bundle.train, 90))  # > one pass over the training documents
    assert ref_bundle.train.epoch >= 1
    assert len(ref_bundle.val_batches(2)) == 2

    got, state = [], None
    for chunk in (7, 11, 30, 42):  # three resumes in a row, one across the epoch boundary
        b = build_data(cfg, seed=0, model_vocab=512)
        if state is not None:
            b.train.load_state_dict(state)
        got += rows(take(b.train, chunk))
        state = json.loads(json.dumps(b.train.state_dict()))
    assert got == ref

    # the packed stream is the documents after the held-out ones, each + EOS
    tok = ref_bundle.tokenizer
    stream = [t for d in corpus["docs"][:12] for t in tok.encode(d, eos=True)]
    first = ref[0]
    assert any(tuple(stream[i:i + 32]) == first for i in range(len(stream) - 32))


def test_streaming_ranks_share_one_order_and_resume_with_another_world_size(corpus, tmp_path, prepared):
    """2 ranks see the windows 1 rank sees (in turns of B), and a state resumes at 1, 2 or 3 ranks exactly."""
    _, out, _ = prepared
    cfg = local_cfg(corpus["txt"], tmp_path, streaming=True, tokenizer=str(out / "tokenizer.model"),
                    val_sequences=3)
    B = cfg.micro_batch_size
    ref = rows(take(build_data(cfg, seed=0, model_vocab=512).train, 24))

    def ranks(w: int, state=None):
        loaders = [build_data(cfg, seed=0, rank=r, world_size=w, model_vocab=512).train for r in range(w)]
        if state is not None:
            for lo in loaders:
                lo.load_state_dict(json.loads(json.dumps(state)))
        return loaders

    def step(loaders):  # one micro-batch on every rank, in rank order
        return [row for lo in loaders for row in rows([next(lo)])]

    two = ranks(2)
    got = step(two) + step(two)
    assert got == ref[:4 * B]
    r0, r1 = two
    assert not set(got[:B]) & set(got[B:2 * B])  # the ranks' batches differ
    assert r0.state_dict() == r1.state_dict()  # every rank stands at the same place of the stream
    one = ranks(1, r0.state_dict())  # 2 -> 1
    got += step(one) + step(one)
    three = ranks(3, one[0].state_dict())  # 1 -> 3
    got += step(three) + step(three)
    two = ranks(2, three[2].state_dict())  # 3 -> 2
    got += step(two)
    assert got == ref[:(4 + 2 + 6 + 2) * B]  # no window repeated or skipped


# ---------------------------------------------------------------- bad input


def _stream_windows(loader, n: int) -> list[list[int]]:
    """The next ``n`` windows (inputs + the last label) of a one-rank loader, in order."""
    out = []
    while len(out) < n:
        b = next(loader)
        out += [x + [y[-1]] for x, y in zip(b["input_ids"].tolist(), b["labels"].tolist())]
    return out[:n]


@pytest.mark.parametrize("kind", ["one-txt-file", "jsonl-with-blank-rows"])
def test_streaming_holds_out_the_tokens_preparation_holds_out(tmp_path, prepared, kind):
    """Streaming validates on exactly the prepared validation tokens and trains on the tokens after them, in
    stream order (the prepared loader's windows by index), also when validation ends inside a document (one
    .txt file) and when rows are empty or blank (no document, as in preparation)."""
    _, out, _ = prepared
    if kind == "one-txt-file":
        one = tmp_path / "one.txt"
        one.write_text(" ".join(make_docs(n=3)))
        files = [str(one)]
    else:
        docs = make_docs(n=12, words=36, seed=4)
        docs[1:1] = ["", "   \n"]
        docs.insert(7, "")
        files = [write_jsonl(tmp_path / "blank.jsonl", docs)]
    cfg = local_cfg(files, tmp_path, streaming=True, tokenizer=str(out / "tokenizer.model"))
    stream = build_data(cfg, seed=0, model_vocab=512)
    prep = build_data(DataConfig(**{**cfg.__dict__, "streaming": False}), seed=0, model_vocab=512)
    assert len(stream.validation) == len(prep.validation) == cfg.val_sequences
    assert np.array_equal(stream.validation.arrays[0], np.concatenate(prep.validation.arrays))
    n = len(prep.train.samples)
    assert n >= 8
    want = [prep.train.samples.window(i).tolist() for i in range(n)]
    assert _stream_windows(stream.train, n) == want


def test_streaming_one_file_is_the_same_on_two_ranks_and_after_resume(tmp_path, prepared):
    """One .txt file (training starts inside its only document): 2 ranks deal out the 1-rank order, and a
    state taken on 2 ranks resumes on 1 (and a new epoch starts again after the validation tokens)."""
    _, out, _ = prepared
    one = tmp_path / "one.txt"
    one.write_text(" ".join(make_docs(n=3)))
    cfg = local_cfg([str(one)], tmp_path, streaming=True, tokenizer=str(out / "tokenizer.model"))
    ref_loader = build_data(cfg, seed=0, model_vocab=512).train
    ref = rows(take(ref_loader, 40))
    assert ref_loader.epoch >= 1
    two = [build_data(cfg, seed=0, rank=r, world_size=2, model_vocab=512).train for r in range(2)]
    got = []
    for _ in range(3):
        got += [row for lo in two for row in rows([next(lo)])]
    state = json.loads(json.dumps(two[1].state_dict()))
    one_rank = build_data(cfg, seed=0, model_vocab=512).train
    one_rank.load_state_dict(state)
    got += rows(take(one_rank, 34))
    assert got == ref


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match="matches no file"):
        build_data(local_cfg([str(tmp_path / "nope.jsonl")], tmp_path), seed=0, model_vocab=512)
    with pytest.raises(UserError, match="matches no file"):
        build_data(local_cfg([str(tmp_path / "*.txt")], tmp_path), seed=0, model_vocab=512)


def test_empty_corpus(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("   \n\n")
    with pytest.raises(UserError, match="empty corpus|no non-empty"):
        build_data(local_cfg([str(p)], tmp_path), seed=0, model_vocab=512)


def test_non_utf8_is_named_and_nothing_prepared_is_lost(tmp_path, corpus, prepared):
    _, good_out, good = prepared
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Ein schöner Tag, café crème\n".encode("latin-1") * 50)
    files = corpus["txt"][:5] + [str(bad)]
    with pytest.raises(UserError, match=r"latin1\.txt is not valid UTF-8"):
        build_data(local_cfg(files, tmp_path, tokenizer=str(good_out / "tokenizer.model")), seed=0, model_vocab=512)
    with pytest.raises(UserError, match="UTF-8"):
        prepare(local_cfg(files, tmp_path, tokenizer=str(good_out / "tokenizer.model")), out=good_out,
                force=True, log=quiet)
    assert read_manifest(good_out) == good
    assert not [p for p in good_out.parent.iterdir() if ".tmp-" in p.name]


def test_tokenizer_larger_than_model_vocab(prepared):
    cfg, _, _ = prepared
    with pytest.raises(UserError, match="model.vocab_size=256"):
        build_data(cfg, seed=0, model_vocab=256)


def test_preparation_of_an_older_format_is_refused(prepared, tmp_path):
    cfg, out, m = prepared
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "manifest.json").write_text(json.dumps({**m, "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(UserError, match=f"has format {FORMAT_VERSION - 1}, this llama-jreg reads format "
                                        f"{FORMAT_VERSION}; re-run .*--force"):
        build_data(DataConfig(**{**cfg.__dict__, "prepared_dir": str(old)}), seed=0, model_vocab=512)


def test_manifest_with_other_tokenizer_hash(prepared, corpus, tmp_path):
    cfg, out, _ = prepared
    other = train_tokenizer(corpus["docs"][::-1], tmp_path / "other.model", vocab_size=400, max_chars=50_000)
    with_other = DataConfig(**{**cfg.__dict__, "tokenizer": other.path, "prepared_dir": str(out)})
    with pytest.raises(UserError, match="tokeni[sz]ed with"):
        build_data(with_other, seed=0, model_vocab=512)
    with pytest.raises(UserError, match="different tokenizer"):
        prepare(with_other, log=quiet)


def test_corpus_too_small_for_one_sequence(corpus, tmp_path, prepared):
    _, out, _ = prepared
    tiny = [str(tmp_path / f"t{i}.txt") for i in range(3)]
    for i, p in enumerate(tiny):
        Path(p).write_text(f"a short document {i}\n")
    cache = tmp_path / "cache"
    for files in (tiny, tiny[:1]):
        cfg = local_cfg(files, cache, tokenizer=str(out / "tokenizer.model"))
        with pytest.raises(UserError, match=r"has \d+ tokens, fewer than the 66 of one training and one validation "
                                            r"sequence of data.seq_len\+1=33; add at least \d+ tokens"):
            build_data(cfg, seed=0, model_vocab=512)
    assert not list((cache / "prepared").iterdir())  # nothing prepared, no temporary directory left


def test_jsonl_without_the_text_field(corpus, tmp_path, prepared):
    _, out, _ = prepared
    p = write_jsonl(tmp_path / "x.jsonl", corpus["docs"][:4], field="content")
    with pytest.raises(UserError, match="text_field"):
        build_data(local_cfg([p], tmp_path, tokenizer=str(out / "tokenizer.model")), seed=0, model_vocab=512)


# ---------------------------------------------------------------- one file / many files with the default data keys

SMALL_MODEL = ["model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
               "model.ffn_dim=128", "model.vocab_size=512", "model.max_seq_len=256", "trainer.max_steps=2",
               "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.ckpt_every=2", "trainer.jump_every=2",
               "trainer.log_every=1", "trainer.progress=false", "trainer.plots=false", "schedule.warmup_steps=1"]


@pytest.mark.slow
def test_one_txt_file_trains_with_the_default_data_keys(tmp_path):
    """One plain .txt file (one document) is prepared and trained on through the CLI with no data.* key but
    the file; its validation holds data.val_sequences sequences of data.seq_len."""
    import subprocess
    import sys

    from llama_jreg.config import load_config
    from llama_jreg.data.sources import cache_root, fetch_shakespeare
    from tests.test_train_helpers import REPO, env_for_subprocess

    works = [f for f in fetch_shakespeare(cache_root(DataConfig())) if Path(f).name.startswith(("hamlet", "macbeth"))]
    one = tmp_path / "one.txt"
    one.write_text("".join(Path(f).read_text(encoding="utf-8") for f in works), encoding="utf-8")
    args = ["data=local", f"data.files=[{one}]", *SMALL_MODEL]
    env = {**env_for_subprocess(), "LLAMA_JREG_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "llama_jreg", "train", *args, f"run.dir={tmp_path / 'run'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    # the preparation's log says what went where
    assert "1 documents" in run.stdout and "validation = the first 16,385 tokens (64 sequences)" in run.stdout
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if r["kind"] == "train"] == [1, 2]
    assert any(r["kind"] == "eval" and np.isfinite(r["val_loss"]) for r in metrics)

    cfg = load_config([*args, f"data.cache_dir={tmp_path / 'cache'}"]).data
    b = build_data(cfg, seed=0, model_vocab=512)  # the run's preparation, reused
    assert cfg.seq_len == 256 and cfg.val_sequences == 64 and cfg.text_sample_by == "document"
    assert len(b.validation) == 64 and len(b.train.samples) > 64


@pytest.mark.slow
def test_a_folder_of_many_small_files_trains(tmp_path):
    from llama_jreg.config import load_config
    from llama_jreg.train.trainer import train

    folder = tmp_path / "notes"
    write_txt(folder, make_docs(n=300, words=36, seed=5))  # 300 files of a few lines each
    args = ["data=local", f"data.files=[{folder}/*.txt]", f"data.cache_dir={tmp_path / 'cache'}", *SMALL_MODEL,
            f"run.dir={tmp_path / 'run'}"]
    cfg = load_config(args)
    b = build_data(cfg.data, seed=0, model_vocab=512)
    assert b.manifest["stream"]["documents"] == 300
    n = b.manifest["stream"]["tokens"]
    assert len(b.validation) == min(64, (n // 2 - 1) // 256) >= 1
    assert b.validation.num_tokens + b.train.samples.num_tokens == n
    summary = train(cfg)
    assert summary["steps"] == 2 and np.isfinite(summary["val_loss"])
