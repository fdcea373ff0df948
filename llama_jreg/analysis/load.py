"""Load any model the analysis commands accept: one of our checkpoints (or a run dir), an HF Llama directory,
or a GGUF file.

``load_any(path) -> (Llama, TextTokenizer | None, info)``; ``info`` says what was loaded (``kind``, ``path``,
``step``, ``name``, and for our checkpoints the resolved ``train_config``).

Our checkpoint format (written by the trainer, llama_jreg/train/checkpoint.py): ``<run.dir>/checkpoints/
step_XXXXXXXX/`` with the model either full (``model.safetensors``, the unwrapped ``Llama.state_dict()``; a tied
head may be stored once) or sharded (``state/``, torch.distributed.checkpoint shards of any number of ranks,
consolidated in memory by ``checkpoint.read_model_state``), ``config.yaml`` (the resolved TrainConfig) and, for
text data, ``tokenizer.model`` (SentencePiece) or ``tokenizer.json`` (HF).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from llama_jreg import UserError
from llama_jreg.model import Llama, ModelConfig
from llama_jreg.train.checkpoint import checkpoint_format, read_model_state

_STEP_RE = re.compile(r"^step_(\d+)$")


class TextTokenizer:
    """One interface over a SentencePiece model (ours) and an HF tokenizer (HF dirs, GGUF files):
    ``encode(text) -> list[int]`` (no BOS/EOS), ``decode(ids)``, ``piece(id)`` (the token as a string)."""

    def __init__(self, sp=None, hf=None, path: str | None = None):
        assert (sp is None) != (hf is None)
        self.sp, self.hf, self.path = sp, hf, path

    @classmethod
    def from_sentencepiece(cls, path: str | Path) -> TextTokenizer:
        import sentencepiece as spm

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


def _manifest_problem(path: Path) -> str | None:
    """Why a checkpoint written by the trainer (it has a manifest.json) fails its checksums, else None.
    Hand-assembled checkpoint dirs without a manifest are taken as they are."""
    if not (path / "manifest.json").is_file():
        return None
    from llama_jreg.train.checkpoint import verify

    return verify(path)


def _latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run whose files match its manifest; broken ones are skipped with a warning."""
    import warnings

    root = run_dir / "checkpoints"
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and checkpoint_format(p) is not None:
            found.append((int(m.group(1)), p))
    for _, p in sorted(found, reverse=True):
        problem = _manifest_problem(p)
        if problem is None:
            return p
        warnings.warn(f"skipping broken checkpoint: {problem}", stacklevel=2)
    raise UserError(f"{run_dir} has no complete checkpoint (checkpoints/step_*/ with model.safetensors or state/)")


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (torch.compile's ``_orig_mod.``, DDP's ``module.``) if a writer left them."""
    out = {}
    for k, v in sd.items():
        for pre in ("_orig_mod.", "module."):
            while k.startswith(pre):
                k = k[len(pre):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def analysis_model_config(cfg: ModelConfig) -> ModelConfig:
    """A checkpoint trained with flash-attn must still load where it is not installed: fall back to sdpa."""
    from llama_jreg.attention import HAS_FLASH_ATTN

    if cfg.attn_backend == "flash" and not HAS_FLASH_ATTN:
        cfg.attn_backend = "sdpa"
    return cfg


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Llama, TextTokenizer | None, dict]:
    """One of our checkpoint directories (``.../checkpoints/step_XXXXXXXX``) or a run dir (its latest one)."""
    from llama_jreg.config import from_yaml
    from llama_jreg.interop.hf import build_model

    path = Path(path).expanduser()
    if (path / "checkpoints").is_dir() and checkpoint_format(path) is None:
        path = _latest_checkpoint(path)
    if checkpoint_format(path) is None:
        raise UserError(f"{path} is not a checkpoint: no model.safetensors and no state/ (sharded)")
    problem = _manifest_problem(path)
    if problem is not None:
        raise UserError(f"refusing a damaged checkpoint: {problem}; use another checkpoint of the run")
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a complete checkpoint: no config.yaml next to its weights")
    train_cfg = from_yaml(path / "config.yaml")
    cfg = analysis_model_config(train_cfg.model)
    sd = _strip_prefixes(read_model_state(path))
    if cfg.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    elif "output.weight" not in sd:
        raise UserError(f"{path} has no output.weight but the config says tie_embeddings=false")
    model = build_model(cfg, sd, dtype)
    tok = None
    if (path / "tokenizer.model").is_file():
        tok = TextTokenizer.from_sentencepiece(path / "tokenizer.model")
    elif (path / "tokenizer.json").is_file():
        tok = _hf_tokenizer(path)
    elif train_cfg.data.tokenizer and Path(train_cfg.data.tokenizer).exists():
        from llama_jreg.data.tokenizer import is_hf_tokenizer

        given = Path(train_cfg.data.tokenizer)
        if is_hf_tokenizer(given):
            tok = _hf_tokenizer(given if given.is_dir() else given.parent)
        elif given.is_file():
            tok = TextTokenizer.from_sentencepiece(given)
    m = _STEP_RE.match(path.name)
    info = {
        "kind": "checkpoint",
        "path": str(path.resolve()),
        "name": f"{path.parent.parent.name}/{path.name}" if m else path.name,
        "step": int(m.group(1)) if m else None,
        "train_config": train_cfg,
    }
    return model, tok, info


def _hf_tokenizer(directory: Path, gguf_file: str | None = None) -> TextTokenizer | None:
    from transformers import AutoTokenizer

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


def load_any(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Llama, TextTokenizer | None, dict[str, Any]]:
    """(model in eval mode, tokenizer or None, info) for our checkpoint / run dir, an HF Llama dir or a GGUF."""
    from llama_jreg.interop.hf import load_hf_llama

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such file or directory")
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(
                f"{path} is a file but not a .gguf; give a checkpoint dir (checkpoints/step_*), a run dir, "
                "an HF Llama dir or a .gguf file"
            )
        model, _ = load_hf_llama(p, dtype=dtype)
        return model, _hf_tokenizer(p.parent, p.name), {"kind": "gguf", "path": str(p.resolve()), "name": p.name,
                                                         "step": None}
    if checkpoint_format(p) is not None and (p / "config.yaml").is_file() or (p / "checkpoints").is_dir():
        return load_checkpoint(p, dtype)
    if (p / "config.json").is_file():
        model, _ = load_hf_llama(p, dtype=dtype)
        return model, _hf_tokenizer(p), {"kind": "hf", "path": str(p.resolve()), "name": p.name, "step": None}
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_any(ggufs[0], dtype)
    raise UserError(
        f"{path} is not a model: expected a checkpoint dir (model.safetensors or state/ + config.yaml), a run dir "
        "(with checkpoints/), an HF Llama dir (config.json) or a .gguf file"
    )


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
