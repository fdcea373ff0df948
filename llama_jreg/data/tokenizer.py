"""Tokenizers: SentencePiece ``.model`` files (load, or train a Llama-style BPE model) and Hugging Face
``tokenizer.json`` files (:class:`HFTokenizer`); ``load_tokenizer(path)`` picks the right one.

Llama-style means: BPE, byte fallback (no unknown characters ever), digits split into single tokens,
identity normalisation (the text is kept byte-for-byte), ``unk=0, bos=1, eos=2`` and no pad piece
(``pad_id == -1``; the loader pads nothing, it packs).

Both classes share one interface: ``path``, ``sha256``, ``vocab_size``, ``bos_id``, ``eos_id``, ``pad_id``,
``add_bos`` (documents start with BOS, as the tokenizer's own post-processor does), ``encode``,
``encode_batch``, ``encode_document`` (the ids of one document in the packed stream), ``decode``,
``check_fits``, ``save_to(directory)`` (the copy kept in prepared data and checkpoints, named ``file_name``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer as RustTokenizer

from llama_jreg import UserError
from llama_jreg.files import sha256_file

#: bump when the training recipe below changes (it is part of every fingerprint built on a trained tokenizer)
TRAINER_VERSION = 1


class Tokenizer:
    """A loaded SentencePiece model plus its file path and sha256."""

    file_name = "tokenizer.model"
    add_bos = False  # our SentencePiece data streams separate documents by EOS only

    def __init__(self, path: str | Path):
        self.path = str(Path(path).expanduser().resolve())
        if not Path(self.path).is_file():
            raise UserError(f"tokenizer {path} not found; set data.tokenizer to an existing .model file or null")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(self.path)
        except (OSError, RuntimeError) as e:
            raise UserError(f"tokenizer {path} is not a SentencePiece model ({e}); point data.tokenizer at a .model")
        self.sha256 = sha256_file(self.path)

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

    def encode_document(self, text: str) -> list[int]:
        """One document as it goes into the packed stream: [BOS if ``add_bos``] + ids + EOS."""
        return self.encode(text, bos=self.add_bos, eos=True)

    def save_to(self, directory: str | Path) -> Path:
        """Copy the tokenizer into ``directory`` as ``file_name`` (the copy loads to the same sha256)."""
        dest = Path(directory) / self.file_name
        shutil.copyfile(self.path, dest)
        return dest

    def check_fits(self, model_vocab: int) -> None:
        if self.vocab_size > model_vocab:
            raise UserError(
                f"tokenizer {self.path} has {self.vocab_size} tokens but model.vocab_size={model_vocab}; "
                f"raise model.vocab_size to >= {self.vocab_size} or use a smaller tokenizer (data.vocab_size)"
            )

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _token_name(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


#: end-of-document tokens tried (in order) when neither tokenizer_config.json nor config.json names one
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library) with the :class:`Tokenizer` interface.

    Special tokens come from ``tokenizer_config.json`` next to the file (``bos_token`` / ``eos_token`` /
    ``pad_token``), else from the model's ``config.json`` (``bos_token_id`` ...), else EOS is the first of
    ``</s>``, ``<|endoftext|>``, ... in the vocabulary. ``add_bos`` is true when the tokenizer's own
    post-processor puts BOS in front of a text (as ``AutoTokenizer(text)`` then does). ``sha256`` covers the
    file and these resolved ids (both decide the token stream)."""

    file_name = "tokenizer.json"

    def __init__(self, path: str | Path):
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / self.file_name
        self.path = str(p.resolve())
        if not p.is_file():
            raise UserError(f"tokenizer {path} not found; set data.tokenizer to a tokenizer.json (or its directory)")
        try:
            self.tk = RustTokenizer.from_file(self.path)
        except Exception as e:  # noqa: BLE001 - the Rust library raises its own exception types
            raise UserError(f"tokenizer {path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
        conf = _read_json(p.parent / "tokenizer_config.json")
        model_conf = _read_json(p.parent / "config.json")
        self.special = {}
        for key in ("bos", "eos", "pad"):
            name = _token_name(conf.get(f"{key}_token"))
            idx = self.tk.token_to_id(name) if name else None
            if idx is None and isinstance(model_conf.get(f"{key}_token_id"), int):
                idx = model_conf[f"{key}_token_id"]
            self.special[key] = idx
        if self.special["eos"] is None:
            self.special["eos"] = next((i for i in map(self.tk.token_to_id, _EOS_NAMES) if i is not None), None)
        if self.special["eos"] is None:
            raise UserError(f"tokenizer {path} has no end-of-text token (no eos_token in a tokenizer_config.json "
                            "next to it, none of </s>, <|endoftext|>); add a tokenizer_config.json with eos_token")
        plain = self.tk.encode("a", add_special_tokens=False).ids
        full = self.tk.encode("a", add_special_tokens=True).ids
        self.add_bos = bool(self.special["bos"] is not None and full[:1] == [self.special["bos"]] != plain[:1])
        ident = {"file": sha256_file(self.path), "bos": self.bos_id, "eos": self.eos_id, "add_bos": self.add_bos}
        self.sha256 = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return -1 if self.special["bos"] is None else self.special["bos"]

    @property
    def eos_id(self) -> int:
        return self.special["eos"]

    @property
    def pad_id(self) -> int:
        return -1 if self.special["pad"] is None else self.special["pad"]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Encode many texts at once (``num_threads`` is SentencePiece's knob; ``tokenizers`` uses its own
        thread pool, see ``TOKENIZERS_PARALLELISM``)."""
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def encode_document(self, text: str) -> list[int]:
        return self.encode(text, bos=self.add_bos, eos=True)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def save_to(self, directory: str | Path) -> Path:
        """``tokenizer.json`` plus a ``tokenizer_config.json`` naming the resolved special tokens (so the copy
        has the same sha256 and ``AutoTokenizer.from_pretrained(directory)`` loads it)."""
        directory = Path(directory)
        src = Path(self.path).parent
        conf = _read_json(src / "tokenizer_config.json")
        for key in ("bos", "eos", "pad"):
            idx = self.special[key]
            if idx is not None and self.tk.id_to_token(idx) is not None:
                conf[f"{key}_token"] = self.tk.id_to_token(idx)
        dest = directory / self.file_name
        shutil.copyfile(self.path, dest)
        (directory / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n")
        return dest

    check_fits = Tokenizer.check_fits

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def is_hf_tokenizer(path: str | Path) -> bool:
    """A ``tokenizer.json`` file (any ``.json``) or a directory holding one."""
    p = Path(path).expanduser()
    return p.suffix == ".json" or (p.is_dir() and (p / HFTokenizer.file_name).is_file())


def load_tokenizer(path: str | Path) -> Tokenizer | HFTokenizer:
    """The tokenizer at ``path``: an HF ``tokenizer.json`` (or a directory with one) or a SentencePiece
    ``.model`` (or a directory with ``tokenizer.model``). The one place tokenizer files are opened."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"tokenizer {path} not found; set data.tokenizer to a SentencePiece .model, a "
                        "tokenizer.json (or its directory), or null")
    if is_hf_tokenizer(p):
        return HFTokenizer(p)
    if p.is_dir():
        if (p / Tokenizer.file_name).is_file():
            return Tokenizer(p / Tokenizer.file_name)
        raise UserError(f"tokenizer directory {path} holds neither tokenizer.json nor tokenizer.model")
    return Tokenizer(p)


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
