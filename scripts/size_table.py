"""Print the model size table (Markdown) from the code; README.md embeds its output (a test checks they agree).

    python scripts/size_table.py
"""

import torch

from llama_jreg.model import SIZES, Llama, config_for_size


def size_table() -> str:
    rows = ["| size | params | non-embedding | dim | layers | heads | kv heads | ffn | vocab | context | tied |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in SIZES:
        cfg = config_for_size(name)
        with torch.device("meta"):
            m = Llama(cfg)
        rows.append(
            f"| {name} | {m.num_params():,} | {m.num_params(exclude_embeddings=True):,} | {cfg.dim} | "
            f"{cfg.n_layers} | {cfg.n_heads} | {cfg.n_kv_heads} | {cfg.ffn_dim} | {cfg.vocab_size} | "
            f"{cfg.max_seq_len} | {'yes' if cfg.tie_embeddings else 'no'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(size_table())
