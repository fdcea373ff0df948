"""``build_data``: one call that gives the trainer its tokenizer, this rank's loader and the validation set."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_jreg import UserError
from llama_jreg.data.config import DataConfig
from llama_jreg.data.loader import (
    LOADER_VERSION,
    GlobalOrderLoader,
    PackedSequences,
    SampleSet,
    fixed_batches,
)
from llama_jreg.data.prepare import (
    check_complete,
    prepare,
    read_manifest,
    tokenizer_file,
    tokenizer_spec,
    validation_tokens,
)
from llama_jreg.data.sources import cache_root, make_source
from llama_jreg.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, train_tokenizer


@dataclass
class DataBundle:
    """What ``build_data`` returns.

    ``tokenizer`` is None for ``data=induction`` (token ids are the data). ``train`` is this rank's infinite
    loader with ``state_dict()``/``load_state_dict()``. ``fingerprint`` identifies data + tokenizer + packing;
    ``manifest`` is the prepared directory's manifest (``{}`` for induction and streaming).
    """

    tokenizer: Tokenizer | HFTokenizer | None
    train: Any
    fingerprint: str
    manifest: dict[str, Any] = field(default_factory=dict)
    validation: SampleSet | None = None
    micro_batch_size: int = 8
    val_limit: int | None = None
    prepared_dir: Path | None = None

    def val_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` fixed micro-batches of the validation set, identical on every rank and every call.

        They cycle through the first ``data.val_sequences`` validation sequences (``num_val`` for induction).
        """
        assert self.validation is not None
        return fixed_batches(self.validation, n, self.micro_batch_size, self.val_limit)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def build_data(data_cfg: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1, model_vocab: int) -> DataBundle:
    """Tokenizer, this rank's train loader and the validation set for ``data_cfg``.

    Prepares the data on first use (cached by fingerprint, atomic, safe to call again from every rank).
    """
    cfg = data_cfg
    if cfg.seq_len < 2 or cfg.micro_batch_size < 1:
        raise UserError("data.seq_len must be >= 2 and data.micro_batch_size >= 1")
    if cfg.source == "induction":
        return _build_induction(cfg, seed, rank, world_size, model_vocab)
    if cfg.streaming:
        return _build_streaming(cfg, seed, rank, world_size, model_vocab)
    return _build_prepared(cfg, seed, rank, world_size, model_vocab)


def _build_prepared(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    directory = Path(cfg.prepared_dir).expanduser().resolve() if cfg.prepared_dir else None
    manifest = read_manifest(directory) if directory else None
    if manifest is None:  # not prepared yet (or prepared_dir unset): prepare, a no-op when cached
        directory, manifest = prepare(cfg)
    check_complete(directory, manifest)
    tok = load_tokenizer(directory / tokenizer_file(manifest))
    if tok.sha256 != manifest["tokenizer"]["sha256"]:
        raise UserError(f"{directory}/{tokenizer_file(manifest)} does not match the manifest's tokenizer hash; "
                        "re-run prepare-data with --force")
    if cfg.tokenizer and tokenizer_spec(cfg)["file_sha256"] != tok.sha256:
        raise UserError(f"prepared data {directory} was tokenized with tokenizer sha256 {tok.sha256[:12]}, not "
                        f"data.tokenizer={cfg.tokenizer}; re-prepare with that tokenizer or drop data.tokenizer")
    tok.check_fits(model_vocab)
    nval = validation_tokens(manifest["stream"]["tokens"], cfg, f"prepared data {directory}")
    val = PackedSequences.from_prepared(directory, manifest, cfg.seq_len, 0, nval)
    train = PackedSequences.from_prepared(directory, manifest, cfg.seq_len, nval)
    fingerprint = _hash({"data": manifest["fingerprint"], "seq_len": cfg.seq_len, "validation_tokens": nval,
                         "loader": LOADER_VERSION})
    loader = GlobalOrderLoader(train, batch_size=cfg.micro_batch_size, seed=seed, rank=rank,
                               world_size=world_size, fingerprint=fingerprint)
    return DataBundle(tok, loader, fingerprint, manifest, val, cfg.micro_batch_size, cfg.val_sequences, directory)


def _build_induction(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    from llama_jreg.data.synthetic import InductionSequences, build_bigram

    ind = cfg.induction
    if ind.vocab_size is None:
        ind.vocab_size = model_vocab
    if ind.vocab_size > model_vocab:
        raise UserError(f"data.induction.vocab_size={ind.vocab_size} is larger than model.vocab_size={model_vocab}; "
                        "lower the first or raise the second")
    bigram = build_bigram(ind, seed, cache_root(cfg))
    train = InductionSequences(ind, bigram, seq_len=cfg.seq_len, seed=seed, split="train")
    val = InductionSequences(ind, bigram, seq_len=cfg.seq_len, seed=seed, split="validation")
    fingerprint = _hash({"induction": asdict(ind), "seed": seed, "seq_len": cfg.seq_len, "loader": LOADER_VERSION})
    loader = GlobalOrderLoader(train, batch_size=cfg.micro_batch_size, seed=seed, rank=rank,
                               world_size=world_size, fingerprint=fingerprint)
    return DataBundle(None, loader, fingerprint, {}, val, cfg.micro_batch_size, None, None)


def streaming_tokenizer(cfg: DataConfig, source) -> Tokenizer | HFTokenizer:
    """``data.tokenizer``, or one trained on the stream's first characters, cached under ``<cache>/tokenizers``."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.vocab_size is None:
        raise UserError("data.vocab_size is not set; set data.vocab_size (or model.vocab_size) to train a tokenizer")
    key = _hash({"source": source.identity(), "tokenizer": tokenizer_spec(cfg)})
    path = cache_root(cfg) / "tokenizers" / f"{key}.model"
    if path.is_file():
        return Tokenizer(path)
    return train_tokenizer(source.documents(), path, cfg.vocab_size, cfg.tokenizer_train_chars)


def _build_streaming(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    from llama_jreg.data.streaming import STREAMING_VERSION, StreamingLoader, holdout_validation

    source = make_source(cfg)
    tok = streaming_tokenizer(cfg, source)
    tok.check_fits(model_vocab)
    held_docs, val_tokens = holdout_validation(source, tok, cfg.seq_len, cfg.val_sequences)
    val = PackedSequences([val_tokens], cfg.seq_len)
    if len(val) < 1:
        raise UserError(f"{source.describe()} has {val_tokens.size} tokens, fewer than one sequence of "
                        f"data.seq_len+1={cfg.seq_len + 1}; add text or lower data.seq_len")

    def make_dataset():  # every rank reads the whole training stream (the loader deals out the windows)
        return source.dataset().skip(held_docs)

    fingerprint = _hash({"streaming": source.identity(), "tokenizer": tok.sha256, "seq_len": cfg.seq_len,
                         "val_sequences": cfg.val_sequences, "loader": LOADER_VERSION, "order": STREAMING_VERSION})
    loader = StreamingLoader(make_dataset, tok, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size, rank=rank,
                             world_size=world_size, fingerprint=fingerprint, read_error=source.read_error)
    return DataBundle(tok, loader, fingerprint, {}, val, cfg.micro_batch_size, cfg.val_sequences, None)
