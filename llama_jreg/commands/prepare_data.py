"""``llama-jreg prepare-data``: tokenise a corpus (or every source of a ``data.mixture``) into token shards and
a manifest, the way training would (``llama_jreg/data/prepare.py`` does the work)."""

from __future__ import annotations

import argparse

from llama_jreg.config import load_config
from llama_jreg.data.prepare import prepare, prepare_mixture, split_summary


def main(argv: list[str] | None = None) -> int:
    """CLI: ``llama-jreg prepare-data [--out DIR] [--force] [OVERRIDES...]``."""
    parser = argparse.ArgumentParser(
        prog="llama-jreg prepare-data",
        description="Tokenise a corpus into uint16/uint32 shards + manifest.json (idempotent). "
                    "Trains a SentencePiece tokenizer unless data.tokenizer is given.",
        epilog="examples: llama-jreg prepare-data data=local 'data.files=[corpus.jsonl]' data.vocab_size=8192\n"
               "          llama-jreg prepare-data data=shakespeare --out data/shakespeare",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra-style config overrides, e.g. data=local data.files=[a.txt]")
    parser.add_argument("--out", help="output directory (default: data.prepared_dir or <cache>/prepared/<fingerprint>)")
    parser.add_argument("--force", action="store_true", help="replace a different preparation already in --out")
    args = parser.parse_args(argv)

    cfg = load_config(args.overrides)
    if cfg.data.mixture:
        prepare_mixture(cfg.data)
        return 0
    if cfg.data.source == "induction":
        print("data=induction is generated on the fly; there is nothing to prepare")
        return 0
    logged: list[str] = []

    def log(msg: str) -> None:
        logged.append(msg)
        print(msg)

    out, manifest = prepare(cfg.data, out=args.out, force=args.force, log=log)
    if not logged:  # already prepared: still say how this config splits it
        print(f"  {split_summary(manifest['stream']['tokens'], cfg.data, str(out))}")
    tok = manifest["tokenizer"]
    if tok["vocab_size"] > cfg.model.vocab_size:
        print(f"warning: tokenizer has {tok['vocab_size']} tokens > model.vocab_size={cfg.model.vocab_size}")
    print(f"prepared {out} (fingerprint {manifest['fingerprint']})")
    return 0
