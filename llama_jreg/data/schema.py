"""Typed schema of the ``data`` config group (configs/data/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class InductionConfig:
    """Synthetic bigram-with-trigger sequences (Bietti et al. 2023, "Birth of a Transformer")."""

    num_triggers: int = 5  # K trigger tokens per sequence
    bigram: str = "random"  # "random" (Dirichlet), "shakespeare" (the cached corpus) or a text file's path
    num_train: int = 100_000  # number of training sequences (deterministic per (seed, index))
    num_val: int = 256
    vocab_size: int | None = None  # defaults to model.vocab_size
    triggers: str = "per_sequence"  # per_sequence: K triggers drawn per sequence | top: the K most frequent tokens
    alpha: float = 0.1  # Dirichlet concentration of each row of the random bigram matrix


@dataclass
class MixtureSource:
    """One source of a weighted mixture (``data.mixture``, llama_jreg/data/mixture.py): local files or an HF
    dataset. Keys left null take the value of the enclosing ``data`` config."""

    name: str | None = None  # unique; names the source in tokens_by_source and val_loss/<name>
    weight: float | None = None  # > 0; shares are weight / sum of weights (of windows, hence of tokens)
    files: list[str] = field(default_factory=list)  # local files or globs (or data_files of an hf_path)
    hf_path: str | None = None  # a hub dataset (or a datasets builder such as text / parquet with files)
    hf_name: str | None = None
    hf_split: str = "train"
    text_field: str | None = None
    text_sample_by: str | None = None
    streaming: bool | None = None  # null: true for an hf_path source, data.streaming for local files


@dataclass
class DataConfig:
    source: str = "shakespeare"  # shakespeare | local | hf | induction
    # local: text / jsonl / parquet files or globs, read with HF datasets; local paths or object-storage URLs
    # (s3://bucket/corpus/*.jsonl), read through fsspec with storage_options (llama_jreg/storage.py)
    files: list[str] = field(default_factory=list)
    storage_options: dict[str, Any] = field(default_factory=dict)  # e.g. {endpoint_url: ..., key: ..., secret: ...}
    text_field: str = "text"
    text_sample_by: str = "document"  # .txt files: one document per file | paragraph | line
    # hf: a hub dataset, streamed
    hf_path: str | None = None
    hf_name: str | None = None
    hf_split: str = "train"
    # tokenizer: a SentencePiece .model to load, or None to train one (BPE, byte fallback, split digits)
    tokenizer: str | None = None
    vocab_size: int | None = None  # tokenizer vocab when training one; defaults to model.vocab_size
    tokenizer_train_chars: int = 20_000_000  # characters sampled to train the tokenizer
    # packing and batching
    seq_len: int = 256
    micro_batch_size: int = 8  # sequences per rank per micro-batch
    val_fraction: float = 0.01  # share of the prepared token stream held out for validation (its head)
    val_sequences: int = 64  # fixed validation set size (sequences); validation always holds them if the corpus can
    # packed documents: attention does not cross the EOS that ends each document inside a sequence (the batches
    # carry per-token document ids derived from EOS; llama_jreg/attention.py), and with document_positions the
    # RoPE positions restart at 0 in every document
    document_mask: bool = False
    document_positions: bool = False
    # preparation
    streaming: bool = False  # tokenise on the fly from `datasets` streaming instead of prepared shards
    prepared_dir: str | None = None  # where shards + manifest go; default: <cache_dir>/prepared/<fingerprint>
    cache_dir: str | None = None  # default: $LLAMA_JREG_CACHE or ~/.cache/llama_jreg
    num_proc: int | None = None  # tokenisation processes; default: all cores
    max_documents: int | None = None  # cap (useful for tests)
    induction: InductionConfig = field(default_factory=InductionConfig)
    # weighted mixture of sources (llama_jreg/data/mixture.py); when set, it replaces source/files/hf_*:
    # data.mixture=[{name: web, weight: 0.7, files: [web/*.jsonl]}, {name: code, weight: 0.3, files: [code.txt]}]
    mixture: list[MixtureSource] = field(default_factory=list)
