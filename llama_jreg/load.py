"""Build a model (and its tokenizer) from any model path: one of our checkpoints or run dirs, an HF Llama
directory, or a GGUF file. Every command that reads a model uses this (``generate``, ``eval``, ``jump``,
``export-hf``, ``lm-eval``, ``eval-tasks``); ``init_from`` reads the same paths through ``model_path``.

``load_model(path) -> (Llama, TextTokenizer | None, info)``; ``info`` says what was loaded (``kind``, ``path``,
``step``, ``name``, and for our checkpoints the resolved ``train_config``).

Our checkpoint format (written by the trainer, llama_jreg/checkpoint/): ``<run.dir>/checkpoints/
step_XXXXXXXX/`` with the model either full (``model.safetensors``, the unwrapped ``Llama.state_dict()``; a tied
head may be stored once) or sharded (``state/``, torch.distributed.checkpoint shards of any number of ranks,
consolidated in memory by ``checkpoint.read_model_state``), ``config.yaml`` (the resolved TrainConfig) and, for
text data, ``tokenizer.model`` (SentencePiece) or ``tokenizer.json`` (HF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from llama_jreg import UserError
from llama_jreg.attention import HAS_FLASH_ATTN
from llama_jreg.config import TrainConfig, from_yaml
from llama_jreg.data.tokenizer import is_hf_tokenizer
from llama_jreg.interop.hf import build_model, load_hf_llama
from llama_jreg.model import Llama, ModelConfig
from llama_jreg.model_path import ModelPath, resolve


class TextTokenizer:
    """One interface over a SentencePiece model (ours) and an HF tokenizer (HF dirs, GGUF files):
    ``encode(text) -> list[int]`` (no BOS/EOS), ``decode(ids)``, ``piece(id)`` (the token as a string)."""

    def __init__(self, sp=None, hf=None, path: str | None = None):
        assert (sp is None) != (hf is None)
        self.sp, self.hf, self.path = sp, hf, path

    @classmethod
    def from_sentencepiece(cls, path: str | Path) -> TextTokenizer:
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{path} is not a SentencePiece model: {e}") from None
        return cls(sp=sp, path=str(path))

    @property
    def kind(self) -> str:
        return "sentencepiece" if self.sp is not None else "hf"

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize() if self.sp is not None else len(self.hf)

    @property
    def eos_id(self) -> int | None:
        if self.sp is not None:
            return self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        return self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        if self.sp is not None:
            return self.sp.EncodeAsIds(text)
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as the model saw text in training: ours (SentencePiece) preceded by EOS, the
        separator between documents in the training stream; HF tokenizers with their own special tokens."""
        if self.sp is not None:
            return ([self.eos_id] if self.eos_id is not None else []) + self.encode(text)
        return self.hf(text)["input_ids"]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.sp is not None:
            return self.sp.DecodeIds(ids)
        return self.hf.decode(ids)

    def piece(self, i: int) -> str:
        """Token ``i`` as readable text (SentencePiece's ``▁`` and byte-level ``Ġ`` shown as a space)."""
        if self.sp is not None:
            if i >= self.sp.GetPieceSize():
                return f"<id {i}>"
            return self.sp.IdToPiece(int(i)).replace("▁", " ")
        return self.hf.decode([int(i)])


def analysis_model_config(cfg: ModelConfig) -> ModelConfig:
    """A checkpoint trained with flash-attn must still load where it is not installed: fall back to sdpa."""
    if cfg.attn_backend == "flash" and not HAS_FLASH_ATTN:
        cfg.attn_backend = "sdpa"
    return cfg


def _checkpoint_tokenizer(mp: ModelPath, train_cfg: TrainConfig) -> TextTokenizer | None:
    """The tokenizer saved in a checkpoint, else the one its config names (when that file still exists)."""
    if (mp.path / "tokenizer.model").is_file():
        return TextTokenizer.from_sentencepiece(mp.path / "tokenizer.model")
    if (mp.path / "tokenizer.json").is_file():
        return _hf_tokenizer(mp.path)
    given = Path(train_cfg.data.tokenizer) if train_cfg.data.tokenizer else None
    if given is None or not given.exists():
        return None
    if is_hf_tokenizer(given):
        return _hf_tokenizer(given if given.is_dir() else given.parent)
    return TextTokenizer.from_sentencepiece(given) if given.is_file() else None


def _hf_tokenizer(directory: Path, gguf_file: str | None = None) -> TextTokenizer | None:
    from transformers import AutoTokenizer  # deferred: ~0.6 s to import (scripts/bench_imports.py)

    try:
        if gguf_file:
            hf = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
        elif any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        else:
            return None
    except Exception:  # noqa: BLE001 - a model without a usable tokenizer still loads; commands say if they need one
        return None
    return TextTokenizer(hf=hf, path=str(directory))


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Llama, TextTokenizer | None, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, info) for our checkpoint / run dir, an HF Llama dir or a GGUF
    (``model_path.resolve`` says which). ``info``: ``kind``, ``path``, ``name``, ``step``, and for our
    checkpoints the resolved ``train_config``."""
    mp = resolve(path)
    info: dict[str, Any] = {"kind": mp.kind, "path": str(mp.path), "name": mp.name, "step": mp.step}
    if mp.kind == "checkpoint":
        train_cfg = from_yaml(mp.path / "config.yaml")
        model = build_model(analysis_model_config(train_cfg.model), mp.state_dict(dtype), dtype)
        info["train_config"] = train_cfg
        return model, _checkpoint_tokenizer(mp, train_cfg), info
    model, _ = load_hf_llama(mp.path, dtype=dtype)
    tok = _hf_tokenizer(mp.path.parent, mp.path.name) if mp.kind == "gguf" else _hf_tokenizer(mp.path)
    return model, tok, info


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} but CUDA is not available here; use --device cpu")
    return torch.device(name)


def read_text(path: str | Path) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--text {path}: no such file")
    if not p.is_file():
        raise UserError(f"--text {path} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--text {path} is not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"--text {path} is empty")
    return text


def need_tokenizer(tok: TextTokenizer | None, info: dict) -> TextTokenizer:
    if tok is None:
        raise UserError(
            f"{info['path']} has no tokenizer (no tokenizer.model / tokenizer.json), so text cannot be "
            "tokenised for it; for synthetic-data checkpoints use data overrides instead"
        )
    return tok
