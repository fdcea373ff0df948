"""Attention backends behind one function.

``attention(q, k, v, backend)`` takes ``q`` of shape (B, H, T, D) and ``k``/``v`` of shape
(B, H_kv, S, D) with ``H % H_kv == 0`` (grouped-query attention) and returns causal attention
output of shape (B, H, T, D). ``S == T`` in training; when decoding with a KV cache (``llama_jreg.model``)
the T queries are the last T of S >= T positions, so query i sees keys ``0 .. S - T + i`` (every backend).

Backends:
  * ``eager`` - plain math in the input dtype with an fp32 softmax; the reference.
  * ``sdpa``  - ``torch.nn.functional.scaled_dot_product_attention`` (uses flash / memory-efficient
    kernels on CUDA by itself).
  * ``flash`` - flash-attn's ``flash_attn_func`` (CUDA, bf16/fp16 only).
  * ``auto``  - ``flash`` when flash-attn is importable and the inputs are CUDA bf16/fp16, else ``sdpa``.

Document masking (``data.document_mask``): with a :class:`DocumentMask` a query attends only to earlier keys of
its own document inside the packed row (block-diagonal causal). ``sdpa`` and ``eager`` take it as one additive
(B, 1, T, T) mask in the compute dtype (0 or -inf), built once per forward and shared by all layers (a boolean
mask would be turned into such a tensor by SDPA in every layer, and saved for backward in every layer); ``flash`` runs flash-attn's varlen kernel
over the documents as separate sequences (``cu_seqlens``: their offsets in the flattened B*T tokens), which
never forms the T x T mask. Without a mask every backend runs exactly as before.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from llama_jreg import UserError

BACKENDS = ("auto", "flash", "sdpa", "eager")

try:  # optional extra: pip install 'llama-jreg[flash]'
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func  # type: ignore

    HAS_FLASH_ATTN = True
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = _flash_attn_varlen_func = None
    HAS_FLASH_ATTN = False


class DocumentMask(NamedTuple):
    """Which keys each query may see when rows pack several documents (see the module docstring).

    ``doc_ids``: the (B, T) ids it was built from. ``dense``: (B, 1, T, T) additive mask, 0 where query t may
    attend key s (same document and s <= t) and -inf elsewhere, for ``sdpa`` / ``eager``; ``cu_seqlens`` (int32, documents + 1) and
    ``max_seqlen`` describe the same documents as flash-attn's varlen batch. Only the part the backend needs
    is built (``attention`` builds a missing one itself)."""

    doc_ids: torch.Tensor
    dense: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0


def document_mask(doc_ids: torch.Tensor, backend: str, dtype: torch.dtype = torch.float32) -> DocumentMask:
    """The :class:`DocumentMask` of (B, T) per-token document ids (any integers; a new document starts wherever
    the id changes along a row) for the resolved ``backend`` and the attention's compute ``dtype``."""
    if backend == "flash":
        return DocumentMask(doc_ids, None, *varlen_offsets(doc_ids))
    T = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    bias = torch.zeros(same.shape, dtype=dtype, device=doc_ids.device).masked_fill_(~(same & causal), float("-inf"))
    return DocumentMask(doc_ids, bias.unsqueeze(1))


def varlen_offsets(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens, max_seqlen) of the documents of (B, T) ``doc_ids`` as one flattened varlen batch: every
    row boundary and every change of id starts a new sequence. ``cu_seqlens[i]`` is the offset of sequence i
    in the B*T tokens (int32, starting at 0, ending at B*T)."""
    B, T = doc_ids.shape
    starts = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    offsets = starts.flatten().nonzero().flatten()
    cu = torch.cat([offsets, offsets.new_full((1,), B * T)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def check_backend(backend: str) -> None:
    """Fail early, with a clear message, on a backend that cannot run here."""
    if backend not in BACKENDS:
        raise UserError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "flash" and not HAS_FLASH_ATTN:
        raise UserError(
            "model.attn_backend=flash but flash-attn is not installed; "
            "install it with `pip install 'llama-jreg[flash]'` (CUDA only) or use model.attn_backend=sdpa"
        )


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    T, S = q.shape[2], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (or fp64 for fp64 inputs)
    scores = (q @ k.transpose(-2, -1)).to(acc) / math.sqrt(q.shape[-1])
    if bias is not None:  # documents: the additive block-diagonal causal mask
        scores = scores + bias.to(acc)
    else:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return probs @ v


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if q.shape[2] != k.shape[2] and bias is None:
        return _sdpa_over_cache(q, k, v)
    if bias is not None:  # block-diagonal causal: the additive mask carries the causality
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                              enable_gqa=k.shape[1] != q.shape[1])
    if k.shape[1] != q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _sdpa_over_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA's is_causal aligns the mask to the top left (query i sees keys 0..i); here query i is position
    # S - T + i, so the mask is explicit (none for one query, which sees every key)
    T, S = q.shape[2], k.shape[2]
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # flash-attn wants (B, T, H, D) and supports GQA natively; its causal mask is aligned to the bottom right
    # (flash-attn >= 2.1), which is what queries after a KV cache need.
    out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: DocumentMask) -> torch.Tensor:
    # the B rows' documents as one varlen batch of (B*T, H, D) tokens; back to (B, H, T, D)
    B, H, T, D = q.shape

    def flat(x):
        return x.transpose(1, 2).reshape(B * T, x.shape[1], D)

    out = _flash_attn_varlen_func(flat(q), flat(k), flat(v), docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen,
                                  docs.max_seqlen, causal=True)
    return out.view(B, T, H, D).transpose(1, 2)


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    return resolve_backend_for(backend, q.device, q.dtype)


def resolve_backend_for(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend ``attention`` runs for inputs on ``device`` in ``dtype``."""
    if backend != "auto":
        return backend
    if HAS_FLASH_ATTN and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return "flash"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto",
              docs: DocumentMask | None = None) -> torch.Tensor:
    """Causal (grouped-query) attention, within documents when ``docs`` is given; see the module docstring."""
    name = resolve_backend(backend, q)
    if docs is not None and (docs.cu_seqlens is None if name == "flash" else docs.dense is None):
        docs = document_mask(docs.doc_ids, name, q.dtype)  # built for another backend than the one that runs
    if name == "sdpa":
        return _sdpa(q, k, v, None if docs is None else docs.dense)
    if name == "eager":
        return _eager(q, k, v, None if docs is None else docs.dense)
    if name == "flash":
        check_backend("flash")
        if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
            raise UserError("attn_backend=flash needs CUDA tensors in bf16/fp16; use attn_backend=sdpa here")
        return _flash(q, k, v) if docs is None else _flash_varlen(q, k, v, docs)
    raise UserError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
