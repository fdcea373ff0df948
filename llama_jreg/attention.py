"""Attention backends behind one function.

``attention(q, k, v, backend)`` takes ``q`` of shape (B, H, T, D) and ``k``/``v`` of shape
(B, H_kv, T, D) with ``H % H_kv == 0`` (grouped-query attention) and returns causal attention
output of shape (B, H, T, D).

Backends:
  * ``eager`` - plain math in the input dtype with an fp32 softmax; the reference.
  * ``sdpa``  - ``torch.nn.functional.scaled_dot_product_attention`` (uses flash / memory-efficient
    kernels on CUDA by itself).
  * ``flash`` - flash-attn's ``flash_attn_func`` (CUDA, bf16/fp16 only).
  * ``auto``  - ``flash`` when flash-attn is importable and the inputs are CUDA bf16/fp16, else ``sdpa``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llama_jreg import UserError

BACKENDS = ("auto", "flash", "sdpa", "eager")

try:  # optional extra: pip install 'llama-jreg[flash]'
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore

    HAS_FLASH_ATTN = True
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = None
    HAS_FLASH_ATTN = False


def check_backend(backend: str) -> None:
    """Fail early, with a clear message, on a backend that cannot run here."""
    if backend not in BACKENDS:
        raise UserError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "flash" and not HAS_FLASH_ATTN:
        raise UserError(
            "model.attn_backend=flash but flash-attn is not installed; "
            "install it with `pip install 'llama-jreg[flash]'` (CUDA only) or use model.attn_backend=sdpa"
        )


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    T, S = q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (or fp64 for fp64 inputs)
    scores = (q @ k.transpose(-2, -1)).to(acc) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return probs @ v


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # flash-attn wants (B, T, H, D) and supports GQA natively.
    out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend != "auto":
        return backend
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return "flash"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Causal (grouped-query) attention; see the module docstring for shapes and backends."""
    name = resolve_backend(backend, q)
    if name == "sdpa":
        return _sdpa(q, k, v)
    if name == "eager":
        return _eager(q, k, v)
    if name == "flash":
        check_backend("flash")
        if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
            raise UserError("attn_backend=flash needs CUDA tensors in bf16/fp16; use attn_backend=sdpa here")
        return _flash(q, k, v)
    raise UserError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def attention_over_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of ``T`` new queries -- the last ``T`` of ``S >= T`` positions -- over ``S`` keys and
    values (a KV cache followed by the new ones): query ``i`` sees keys ``0 .. S - T + i``. For decoding
    (``llama_jreg.generate``); PyTorch SDPA."""
    T, S = q.shape[2], k.shape[2]
    if T == S:
        return _sdpa(q, k, v)
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
