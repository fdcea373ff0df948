"""The data layer: tokenizer, sources, preparation (text -> shards + manifest), loaders.

The trainer needs one call::

    from llama_jreg.data import build_data
    bundle = build_data(cfg.data, seed=cfg.seed, rank=rank, world_size=world, model_vocab=cfg.model.vocab_size)

See :class:`llama_jreg.data.bundle.DataBundle` for what it holds.
"""

from llama_jreg.data.bundle import DataBundle, build_data
from llama_jreg.data.schema import DataConfig, InductionConfig

__all__ = ["DataBundle", "DataConfig", "InductionConfig", "build_data"]
