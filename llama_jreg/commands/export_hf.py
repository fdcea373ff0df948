"""`llama-jreg export-hf CHECKPOINT OUT_DIR`: write a checkpoint as an HF Llama directory.

OUT_DIR gets config.json (``LlamaForCausalLM``), model.safetensors and, when the checkpoint has a
SentencePiece tokenizer, tokenizer.json / tokenizer_config.json / tokenizer.model, so that

    AutoModelForCausalLM.from_pretrained(OUT_DIR)  and  AutoTokenizer.from_pretrained(OUT_DIR)

load offline, with the same logits and token ids as ours. CHECKPOINT may also be a run dir (its latest
checkpoint), an HF Llama directory or a GGUF file (re-exported as plain safetensors). A non-empty OUT_DIR is
refused unless ``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from llama_jreg import UserError, help_text
from llama_jreg.interop.hf import save_hf_llama
from llama_jreg.load import load_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_hf(checkpoint: str | Path, out_dir: str | Path, *, force: bool = False, dtype: str = "float32") -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out_dir} is not empty; choose another directory or pass --force to overwrite")
    if dtype not in _DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(_DTYPES)}")
    model, tok, _ = load_model(checkpoint)
    sp_path = tok.path if tok is not None and tok.kind == "sentencepiece" else None
    special = None
    if tok is not None and tok.kind == "hf":  # e.g. a run continued from an HF model (init_from) keeps its ids
        special = {f"{k}_token_id": getattr(tok.hf, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    save_hf_llama(model, out, tokenizer_path=sp_path, dtype=_DTYPES[dtype], special_ids=special)
    if tok is not None and tok.kind == "hf":
        tok.hf.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg export-hf", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="export a checkpoint as an HF Llama directory", epilog=help_text(__doc__))
    p.add_argument("checkpoint", help="checkpoint dir (checkpoints/step_*), run dir, HF Llama dir or .gguf")
    p.add_argument("out_dir")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="weights dtype (default float32)")
    args = p.parse_args(argv)
    out = export_hf(args.checkpoint, args.out_dir, force=args.force, dtype=args.dtype)
    print(f"wrote {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
