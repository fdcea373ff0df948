"""Interoperability: HF transformers import/export, GGUF, lm-eval-harness."""
