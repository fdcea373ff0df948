"""Small real Hugging Face assets built in tests: a BPE tokenizer.json trained with ``tokenizers`` and a tiny
random ``LlamaForCausalLM`` directory holding it (what ``init_from`` reads, without any download)."""

from __future__ import annotations

import json
from pathlib import Path

TEXT = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
        "The slings and arrows of outrageous fortune, or to take arms against a sea of troubles 1599.",
        "Now is the winter of our discontent made glorious summer by this sun of York; café, naïve."] * 30


def make_bpe_tokenizer(directory: Path, vocab_size: int = 300, add_bos: bool = False) -> Path:
    """A byte-level BPE ``tokenizer.json`` + ``tokenizer_config.json`` (``<|endoftext|>`` = EOS, id 0;
    ``<s>`` = BOS, id 1, put in front of every text by the post-processor when ``add_bos``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(TEXT, trainer)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tk.save(str(directory / "tokenizer.json"))
    conf = {"eos_token": "<|endoftext|>", "bos_token": "<s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    (directory / "tokenizer_config.json").write_text(json.dumps(conf))
    return directory / "tokenizer.json"


def make_tiny_hf_llama(directory: Path, vocab_size: int = 320, n_layers: int = 2, seed: int = 0,
                       add_bos: bool = False, max_position_embeddings: int = 128) -> Path:
    """A random 2-layer ``LlamaForCausalLM`` (dim 32) saved with ``save_pretrained`` plus a BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    make_bpe_tokenizer(directory, vocab_size=min(vocab_size, 300), add_bos=add_bos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_position_embeddings,
                      tie_word_embeddings=True, eos_token_id=0, bos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(str(directory))
    return directory


def make_tiny_gguf(path: Path, arch: str = "llama", dtype=None) -> Path:
    """A minimal GGUF file (one tensor) written with the ``gguf`` package: ``arch`` names the architecture,
    ``dtype`` the numpy dtype of the tensor (float64 gives a tensor type GGUF readers cannot de-quantise)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=dtype or np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
