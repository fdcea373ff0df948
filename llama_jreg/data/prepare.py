"""``llama-jreg prepare-data``: text -> tokenizer -> token shards + ``manifest.json``.

Layout of a prepared directory::

    manifest.json            what is here (written last: a directory with a manifest is complete)
    tokenizer.model          the SentencePiece model the tokens were made with (sha256 in the manifest), or
    tokenizer.json (+ tokenizer_config.json) for a Hugging Face tokenizer (manifest ``tokenizer.file`` says which)
    tokens_00000.bin ...     the whole corpus as one flat token stream in source order, each document followed
                             by EOS (and preceded by BOS when the tokenizer adds one, ``tokenizer.add_bos``);
                             np.uint16 (vocab <= 65535) or np.uint32, np.memmap-able

The shards do not depend on ``data.seq_len``: the train/validation split is a cut of that token stream, made
when the data is loaded (:func:`validation_tokens`). Validation is the first ``V`` tokens, train the rest::

    V = min(max(ceil(data.val_fraction * N), data.val_sequences * data.seq_len + 1), N // 2)

for a stream of ``N`` tokens. So validation always holds ``data.val_sequences`` full sequences of
``data.seq_len + 1`` tokens when ``N >= 2 * (data.val_sequences * data.seq_len + 1)``, whatever the number of
documents (one ``.txt`` file is one document) and of processes; a smaller corpus is cut in half, and one
with fewer than ``2 * (data.seq_len + 1)`` tokens (one training and one validation sequence) is refused.
The two token ranges are disjoint: no token of a validation sequence (input or label) is ever trained on.

The whole directory is built under a temporary name and renamed into place at the end: an interrupted run
leaves nothing half-written, and an existing preparation is never touched unless ``--force`` is given
(then it is replaced only once the new one is complete). Re-running with the same inputs is a no-op: the
``fingerprint`` (hash of source identity + tokenizer + format version) says so.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llama_jreg import UserError, __version__
from llama_jreg.data.mixture import check_mixture, source_config
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import TextSource, cache_root, make_source
from llama_jreg.data.tokenizer import TRAINER_VERSION, Tokenizer, load_tokenizer, train_tokenizer
from llama_jreg.files import short_hash

FORMAT_VERSION = 2  # 2: one token stream, split into train/validation when loading
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"  # SentencePiece; an HF tokenizer is stored as tokenizer.json
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB as uint16)
BATCH_CHARS = 8 << 20  # characters handed to the tokenizer at once


def tokenizer_spec(cfg: DataConfig) -> dict[str, Any]:
    """How the tokenizer is obtained: a given file (by sha256) or a training recipe."""
    if cfg.tokenizer:
        path = Path(cfg.tokenizer).expanduser()
        if not path.exists():
            raise UserError(f"data.tokenizer={cfg.tokenizer} not found; point it at a SentencePiece .model, a "
                            "tokenizer.json (or its directory) or set null")
        return {"file_sha256": load_tokenizer(path).sha256}  # SentencePiece: the file's sha256
    return {"train": {"vocab_size": cfg.vocab_size, "chars": cfg.tokenizer_train_chars, "version": TRAINER_VERSION}}


def data_fingerprint(source: TextSource, cfg: DataConfig, rule: str = "content") -> str:
    """Identity of a preparation: source + tokenizer + format version (the split is made when loading).
    ``rule="path"``: the fingerprint releases before content identity gave it (``TextSource.identity``)."""
    return short_hash({"format": FORMAT_VERSION, "source": source.identity(rule), "tokenizer": tokenizer_spec(cfg)})


VALIDATION_RULE = ("validation = the first V tokens of the stream, train = the rest, with V = min(max(ceil("
                   "data.val_fraction * N), data.val_sequences * data.seq_len + 1), N // 2) for N tokens")


def check_split_keys(cfg: DataConfig) -> None:
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"data.val_fraction={cfg.val_fraction} must be in (0, 1); e.g. 0.01")
    if cfg.val_sequences < 1:
        raise UserError(f"data.val_sequences={cfg.val_sequences} must be >= 1; e.g. 64")


def validation_tokens(num_tokens: int, cfg: DataConfig, what: str) -> int:
    """How many tokens at the head of a ``num_tokens`` stream are validation (see the module docstring).

    ``what`` names the corpus in the one-line refusal of a stream too short for one training and one
    validation sequence of ``data.seq_len + 1`` tokens.
    """
    check_split_keys(cfg)
    window = cfg.seq_len + 1
    if num_tokens < 2 * window:
        raise UserError(f"{what} has {num_tokens:,} tokens, fewer than the {2 * window:,} of one training and one "
                        f"validation sequence of data.seq_len+1={window}; add at least {2 * window - num_tokens:,} "
                        "tokens of text or lower data.seq_len")
    want = max(math.ceil(cfg.val_fraction * num_tokens), cfg.val_sequences * cfg.seq_len + 1)
    return min(want, num_tokens // 2)


def split_summary(num_tokens: int, cfg: DataConfig, what: str) -> str:
    """One line: how many tokens and sequences of ``data.seq_len`` go to each split."""
    val = validation_tokens(num_tokens, cfg, what)
    nval, ntrain = (val - 1) // cfg.seq_len, (num_tokens - val - 1) // cfg.seq_len
    line = (f"split at data.seq_len={cfg.seq_len}: validation = the first {val:,} tokens ({nval:,} sequences), "
            f"train = the other {num_tokens - val:,} tokens ({ntrain:,} sequences)")
    if nval < cfg.val_sequences:
        line += (f"; only {nval} of data.val_sequences={cfg.val_sequences} validation sequences: "
                 f"{2 * (cfg.val_sequences * cfg.seq_len + 1):,} tokens give them all")
    return line


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def obtain_tokenizer(cfg: DataConfig, source: TextSource, directory: Path) -> Tokenizer:
    """Copy ``data.tokenizer`` into ``directory`` (``tokenizer.model`` or ``tokenizer.json``), or train a
    SentencePiece model there (``tokenizer.model``) from the source's first characters. ``directory`` is the
    preparation's private temporary directory."""
    if cfg.tokenizer:
        given = load_tokenizer(cfg.tokenizer)  # a bad file is named by the user's path, not the copy's
        return load_tokenizer(given.save_to(directory))
    if cfg.vocab_size is None:
        raise UserError("data.vocab_size is not set; set data.vocab_size (or model.vocab_size) to train a tokenizer")
    return train_tokenizer(source.documents(), directory / TOKENIZER_FILE, cfg.vocab_size, cfg.tokenizer_train_chars)


class ShardWriter:
    """Appends token arrays to ``<split>_NNNNN.bin`` files of at most ``shard_tokens`` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            head, tokens = tokens[:room], tokens[room:]
            head.tofile(self._file)
            self.shards[-1]["tokens"] += int(head.size)

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 - closed in _open_next/close
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict[str, Any]:
        if self._file is not None:
            self._file.close()
        return {"documents": self.documents, "tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


def _batches(docs: Iterable[str], max_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= max_chars or len(batch) >= 1024:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_WORKER_TOKENIZER: Tokenizer | None = None


def _worker_init(path: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(path)


def _encode(batch: list[str]) -> list[np.ndarray]:
    """Worker: each document -> [BOS if the tokenizer adds one] + its token ids + EOS, as a compact array
    (cheap to send back)."""
    tok = _WORKER_TOKENIZER
    assert tok is not None
    dtype = token_dtype(tok.vocab_size)
    bos = [tok.bos_id] if tok.add_bos else []
    return [np.array(bos + ids + [tok.eos_id], dtype=dtype) for ids in tok.encode_batch(batch, num_threads=1)]


def _encoded_documents(source: TextSource, tok: Tokenizer, processes: int) -> Iterator[np.ndarray]:
    """Token arrays of all documents in source order, tokenised by ``processes`` worker processes."""
    batches = _batches(source.documents(), BATCH_CHARS // max(1, processes) // 4)
    if processes <= 1 or "fork" not in mp.get_all_start_methods():
        _worker_init(tok.path)
        for batch in batches:
            yield from _encode(batch)
        return
    # fork: workers start instantly and inherit nothing they use but the tokenizer path
    with mp.get_context("fork").Pool(processes, initializer=_worker_init, initargs=(tok.path,)) as pool:
        for arrays in pool.imap(_encode, batches):
            yield from arrays


def _tokenize_into(directory: Path, source: TextSource, tok: Tokenizer, cfg: DataConfig,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Tokenise every document (all cores) into one stream of shards, in source order."""
    writer = ShardWriter(directory, "tokens", token_dtype(tok.vocab_size))
    processes = cfg.num_proc or os.cpu_count() or 1
    t0, last = time.perf_counter(), time.perf_counter()
    for tokens in _encoded_documents(source, tok, processes):
        writer.write(tokens)
        writer.documents += 1
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            ntok = sum(s["tokens"] for s in writer.shards)
            log(f"  {writer.documents} documents, {ntok:,} tokens, {ntok / (last - t0):,.0f} tokens/s")
    stream = writer.close()
    if stream["documents"] == 0:
        raise UserError(f"{source.describe()} has no non-empty documents; check data.files / data.text_field")
    return stream


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete preparation in ``directory``, or None if there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e}); re-run prepare-data with --force") from None


def check_complete(directory: Path, manifest: dict[str, Any]) -> None:
    """Every shard the manifest lists exists with the right size (a cheap integrity check)."""
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"prepared data {directory} has format {manifest.get('format_version')}, this llama-jreg reads "
                        f"format {FORMAT_VERSION}; re-run `llama-jreg prepare-data ... --force` on it")
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for shard in manifest["stream"]["shards"]:
        f = directory / shard["file"]
        if not f.is_file() or f.stat().st_size != shard["tokens"] * itemsize:
            raise UserError(f"prepared data {directory} is damaged ({shard['file']} missing or truncated); "
                            "re-run `llama-jreg prepare-data ... --force`")
    name = tokenizer_file(manifest)
    if not (directory / name).is_file():
        raise UserError(f"prepared data {directory} lacks {name}; re-run prepare-data with --force")


def tokenizer_file(manifest: dict[str, Any]) -> str:
    """The tokenizer file of a prepared directory (``tokenizer.model`` or ``tokenizer.json``)."""
    return manifest.get("tokenizer", {}).get("file") or TOKENIZER_FILE


def default_out(cfg: DataConfig, fingerprint: str) -> Path:
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir).expanduser().resolve()
    return cache_root(cfg) / "prepared" / fingerprint


def prepare(cfg: DataConfig, out: str | Path | None = None, force: bool = False,
            log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Prepare ``cfg``'s text source into ``out`` (default: ``data.prepared_dir`` or the cache).

    Returns ``(directory, manifest)``. A no-op when ``out`` already holds this exact preparation.
    """
    check_split_keys(cfg)
    source = make_source(cfg)
    fingerprint = data_fingerprint(source, cfg)
    out = Path(out).expanduser().resolve() if out else default_out(cfg, fingerprint)
    existing = read_manifest(out)
    same = (fingerprint, data_fingerprint(source, cfg, rule="path"))  # (or as an older release knew the files)
    if existing is not None and existing.get("fingerprint") in same:
        check_complete(out, existing)
        return out, existing
    if not force:
        if existing is not None:
            raise UserError(_different_preparation(out, existing, cfg))
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not a prepared data directory; choose another --out "
                            "(data.prepared_dir) or pass --force to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        log(f"preparing {source.describe()} -> {out}")
        tok = obtain_tokenizer(cfg, source, tmp)
        log(f"  tokenizer: {tok.vocab_size} tokens, sha256 {tok.sha256[:12]} ({time.perf_counter() - t0:.1f}s)")
        t1 = time.perf_counter()
        stream = _tokenize_into(tmp, source, tok, cfg, log)
        seconds = time.perf_counter() - t1
        ntok = stream["tokens"]
        split = split_summary(ntok, cfg, source.describe())  # refuses a corpus too small to train on
        manifest = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "source": source.identity(),
            "description": source.describe(),
            "tokenizer": {"file": tok.file_name, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                          "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "add_bos": tok.add_bos,
                          "spec": tokenizer_spec(cfg)},
            "dtype": token_dtype(tok.vocab_size).name,
            "eos_between_documents": True,
            "validation_rule": VALIDATION_RULE,
            "stream": stream,
            "tokenize_seconds": round(seconds, 3),
            "tokens_per_second": round(ntok / max(seconds, 1e-9)),
            "created_unix": int(time.time()),
            "llama_jreg_version": __version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _install(tmp, out, fingerprint, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"  {stream['documents']:,} documents, {ntok:,} tokens, {manifest['tokens_per_second']:,} tokens/s")
    log(f"  {split}")
    return out, read_manifest(out) or manifest


def _install(tmp: Path, out: Path, fingerprint: str, force: bool) -> None:
    """Rename the finished ``tmp`` into ``out``; with ``force`` the old ``out`` goes only after that."""
    old = None
    if out.exists() and force:
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        # someone else installed a preparation meanwhile: fine if it is the same one
        if old is not None and not out.exists():
            os.rename(old, out)  # put the previous preparation back
            old = None
        other = read_manifest(out)
        if other is None or other.get("fingerprint") != fingerprint:
            raise UserError(f"{out} appeared while preparing and holds different data; retry with --force")
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _different_preparation(out: Path, existing: dict[str, Any], cfg: DataConfig) -> str:
    if cfg.tokenizer:
        want = load_tokenizer(cfg.tokenizer).sha256
        have = existing.get("tokenizer", {}).get("sha256")
        if have != want:
            return (f"{out} was tokenized with a different tokenizer (sha256 {str(have)[:12]}, data.tokenizer has "
                    f"{want[:12]}); use another data.prepared_dir/--out or re-prepare with --force")
    return (f"{out} already holds a different preparation ({existing.get('description', '?')}); "
            "use another --out (data.prepared_dir) or pass --force to replace it")


# ----------------------------------------------------------------------------------------------- mixtures


def _mixed_documents(cfg: DataConfig, sources: list, weights: list[float]):
    """The first characters of every source, each contributing its weight's share of data.tokenizer_train_chars."""
    total = sum(weights)
    for src, source, w in zip(cfg.mixture, sources, weights):
        budget, used = cfg.tokenizer_train_chars * w / total, 0
        try:
            for text in source.documents():
                yield text
                used += len(text)
                if used >= budget:
                    break
        except UserError as e:  # name the source in the one error line
            raise UserError(f"data.mixture source {src.name!r}: {e}") from None


def mixture_tokenizer(cfg: DataConfig) -> str:
    """``data.tokenizer``, or the path of a SentencePiece model trained on the mixture (cached by the sources'
    identities, weights and the tokenizer recipe)."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.vocab_size is None:
        raise UserError("data.vocab_size is not set; set data.vocab_size (or model.vocab_size) to train a tokenizer")
    sources = [make_source(source_config(cfg, s, None)) for s in cfg.mixture]
    weights = [float(s.weight) for s in cfg.mixture]
    key = short_hash({"mixture": [(s.identity(), w) for s, w in zip(sources, weights)], "tokenizer": tokenizer_spec(cfg)})
    path = cache_root(cfg) / "tokenizers" / f"mixture-{key}.model"
    if not path.is_file():
        train_tokenizer(_mixed_documents(cfg, sources, weights), path, cfg.vocab_size, cfg.tokenizer_train_chars)
    return str(path)


def prepare_mixture(cfg: DataConfig, log=print) -> list[tuple[str, Path | None]]:
    """``llama-jreg prepare-data`` of a mixture: the shared tokenizer, then every source read from prepared
    shards (streamed sources have nothing to prepare). Returns (name, prepared dir or None) per source."""
    check_mixture(cfg)
    tokenizer = mixture_tokenizer(cfg)
    log(f"mixture tokenizer: {tokenizer}")
    out: list[tuple[str, Path | None]] = []
    for src in cfg.mixture:
        one = source_config(cfg, src, tokenizer)
        if one.streaming:
            log(f"{src.name}: streamed (nothing to prepare)")
            out.append((src.name, None))
            continue
        try:
            directory, manifest = prepare(one, log=log)
        except UserError as e:
            raise UserError(f"data.mixture source {src.name!r}: {e}") from None
        log(f"{src.name}: {directory} ({split_summary(manifest['stream']['tokens'], one, src.name)})")
        out.append((src.name, directory))
    return out
