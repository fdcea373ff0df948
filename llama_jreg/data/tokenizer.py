"""SentencePiece tokenizer: load a ``.model`` file or train a Llama-style BPE model.

Llama-style means: BPE, byte fallback (no unknown characters ever), digits split into single tokens,
identity normalisation (the text is kept byte-for-byte), ``unk=0, bos=1, eos=2`` and no pad piece
(``pad_id == -1``; the loader pads nothing, it packs).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from llama_jreg import UserError

#: bump when the training recipe below changes (it is part of every fingerprint built on a trained tokenizer)
TRAINER_VERSION = 1


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """A loaded SentencePiece model plus its file path and sha256."""

    def __init__(self, path: str | Path):
        self.path = str(Path(path).expanduser().resolve())
        if not Path(self.path).is_file():
            raise UserError(f"tokenizer {path} not found; set data.tokenizer to an existing .model file or null")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(self.path)
        except (OSError, RuntimeError) as e:
            raise UserError(f"tokenizer {path} is not a SentencePiece model ({e}); point data.tokenizer at a .model")
        self.sha256 = file_sha256(self.path)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.EncodeAsIds(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Encode many texts at once; SentencePiece spreads the work over ``num_threads`` (-1: all cores)."""
        return self.sp.Encode(texts, out_type=int, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def check_fits(self, model_vocab: int) -> None:
        if self.vocab_size > model_vocab:
            raise UserError(
                f"tokenizer {self.path} has {self.vocab_size} tokens but model.vocab_size={model_vocab}; "
                f"raise model.vocab_size to >= {self.vocab_size} or use a smaller tokenizer (data.vocab_size)"
            )

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _sample_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """The first ``max_chars`` characters of ``texts``, as lines (SentencePiece trains on sentences)."""
    budget = max_chars
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            yield line
            budget -= len(line)
            if budget <= 0:
                return


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int, max_chars: int) -> Tokenizer:
    """Train a Llama-style SentencePiece BPE model on (up to ``max_chars`` of) ``texts``.

    The model is written to a temporary file and renamed to ``out_path``, so a reader never sees half a file.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if vocab_size < 300:
        raise UserError(f"data.vocab_size={vocab_size} is too small for byte fallback (256 bytes + specials); use >= 300")
    lines = list(_sample_lines(texts, max_chars))
    if not lines:
        raise UserError("cannot train a tokenizer on an empty corpus; check data.files / the data source")
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".tok-") as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=iter(lines),
                model_prefix=prefix,
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                split_digits=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=True,
                allow_whitespace_only_pieces=True,
                character_coverage=0.99995,
                max_sentence_length=1 << 16,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,
                hard_vocab_limit=False,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[-1].split("] ")[-1]
            raise UserError(f"tokenizer training failed: {detail} (data.vocab_size={vocab_size}); "
                            "raise data.vocab_size if it is below the distinct characters + 259, else add text") from None
        os.replace(prefix + ".model", out_path)
    return Tokenizer(out_path)
