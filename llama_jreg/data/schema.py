"""Typed schema of the ``data`` config group (configs/data/*.yaml), and its checks.

``DataConfig.validate(model_max_seq_len, model_vocab)`` checks values without reading any file: the source
exists, the packing fits the model, a mixture is well formed, and no key is set that the chosen source does not
read (``data.induction.*`` with a text source, ``data.files`` with ``data=induction``). Checks that read files
(a mixture's files exist and hold text) are ``llama_jreg.data.mixture.check_mixture``, run where the data are
built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from llama_jreg import UserError

#: ``data.source`` values (one configs/data/NAME.yaml each); the text sources have a tokenizer
TEXT_SOURCES = ("shakespeare", "local", "hf")
SOURCES = (*TEXT_SOURCES, "induction")
#: the keys only a text source reads (with data=induction they would be ignored)
TEXT_KEYS = ("files", "hf_path", "hf_name", "tokenizer", "mixture", "streaming", "storage_options")


@dataclass
class InductionConfig:
    """Synthetic bigram-with-trigger sequences (Bietti et al. 2023, "Birth of a Transformer")."""

    num_triggers: int = 5  # K trigger tokens per sequence
    bigram: str = "random"  # "random" (Dirichlet), "shakespeare" (the cached corpus) or a text file's path
    num_train: int = 100_000  # number of training sequences (deterministic per (seed, index))
    num_val: int = 256  # validation sequences
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

    def validate(self, i: int) -> float:
        """Name, weight and what it reads (no file is opened); returns the weight."""
        where = f"data.mixture source {self.name!r}" if self.name else f"data.mixture[{i}]"
        if not self.name or not str(self.name).strip():
            raise UserError(f"data.mixture[{i}] has no name; give every source one: {{name: web, weight: 0.7, "
                            "files: [...]}")
        if "/" in self.name or any(c.isspace() for c in self.name):
            raise UserError(f"{where}: a name may not contain '/' or spaces (it becomes the metric val_loss/<name>)")
        if self.weight is None:
            raise UserError(f"{where} has no weight; add weight: W (> 0)")
        if not self.files and not self.hf_path:
            raise UserError(f"{where} reads nothing; give it files: [...] (local files) or hf_path: NAME")
        return float(self.weight)


@dataclass
class DataConfig:
    source: str = "shakespeare"  # shakespeare | local | hf | induction
    # local: text / jsonl / parquet files or globs, read with HF datasets; local paths or object-storage URLs
    # (s3://bucket/corpus/*.jsonl), read through fsspec with storage_options (llama_jreg/storage.py)
    files: list[str] = field(default_factory=list)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for s3:// files (endpoint_url, ...)
    text_field: str = "text"  # the text column of jsonl / parquet / csv files
    text_sample_by: str = "document"  # .txt files: one document per file | paragraph | line
    # hf: a hub dataset, streamed
    hf_path: str | None = None
    hf_name: str | None = None  # the dataset's config name
    hf_split: str = "train"  # the split read
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
    document_positions: bool = False  # with document_mask: RoPE positions restart per document
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

    def validate(self, model_max_seq_len: int, model_vocab: int) -> DataConfig:
        """Value checks (no file is read). Raises UserError with one line."""
        if self.source not in SOURCES:
            raise UserError(f"unknown data source {self.source!r}; choose data={'|'.join(SOURCES)}")
        if self.seq_len > model_max_seq_len:
            raise UserError(
                f"data.seq_len={self.seq_len} is longer than the model context model.max_seq_len={model_max_seq_len}; "
                "lower data.seq_len or raise model.max_seq_len"
            )
        if self.seq_len < 2 or self.micro_batch_size < 1:
            raise UserError("data.seq_len must be >= 2 and data.micro_batch_size >= 1")
        if self.document_mask and self.source == "induction":
            raise UserError("data.document_mask=true needs documents separated by EOS, and data=induction has one "
                            "sequence per row and no EOS; drop data.document_mask")
        if self.document_positions and not self.document_mask:
            raise UserError("data.document_positions=true restarts RoPE positions per document and needs "
                            "data.document_mask=true; set both, or drop data.document_positions")
        self._check_unread_keys()
        if self.mixture:
            self.validate_mixture()
        elif self.source == "local" and not self.files:
            raise UserError("data=local needs files: add data.files=[path/to/corpus.jsonl,...]")
        if self.source == "hf" and not self.hf_path and not self.mixture:
            raise UserError("data=hf needs a dataset: add data.hf_path=NAME (e.g. HuggingFaceFW/fineweb-edu)")
        if self.vocab_size is not None and self.vocab_size > model_vocab:
            raise UserError(
                f"data.vocab_size={self.vocab_size} is larger than model.vocab_size={model_vocab}; "
                "lower data.vocab_size or raise model.vocab_size"
            )
        return self

    def _check_unread_keys(self) -> None:
        """A key the chosen source does not read is refused, naming the group that reads it."""
        default = DataConfig()
        if self.source == "induction":
            for key in TEXT_KEYS:
                if getattr(self, key) != getattr(default, key):
                    raise UserError(f"data.{key} is read by the text sources, not by data=induction (synthetic "
                                    f"sequences); pick data={'|'.join(TEXT_SOURCES)}, or drop data.{key}")
            return
        ind, ind_default = self.induction, InductionConfig()
        for f in fields(InductionConfig):
            if f.name != "vocab_size" and getattr(ind, f.name) != getattr(ind_default, f.name):
                raise UserError(f"data.induction.{f.name} is read by data=induction only (this run uses "
                                f"data={self.source}); add data=induction, or drop data.induction.{f.name}")
        if self.source == "shakespeare" and (self.hf_path or self.hf_name):
            key = "hf_path" if self.hf_path else "hf_name"
            raise UserError(f"data.{key} is read by data=hf, not by data=shakespeare; add data=hf")

    def validate_mixture(self) -> None:
        if self.source == "induction":
            raise UserError("data.mixture mixes text sources; it cannot be used with data=induction (use data=local)")
        seen: set[str] = set()
        weights = []
        for i, src in enumerate(self.mixture):
            if src.name in seen:
                raise UserError(f"data.mixture: the name {src.name!r} is used twice; give every source its own name")
            weights.append(src.validate(i))
            seen.add(src.name)
        if weights and all(w == 0 for w in weights):
            raise UserError("data.mixture: all weights are zero; give every source a weight > 0")
        for i, (src, w) in enumerate(zip(self.mixture, weights)):
            if not math.isfinite(w) or w <= 0:
                raise UserError(f"data.mixture source {src.name!r}: weight={src.weight} must be > 0 (drop the source "
                                "to leave it out)")
