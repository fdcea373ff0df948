"""The Llama decoder: embeddings, pre-norm blocks (RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU),
final RMSNorm, LM head. No distributed code lives here (see ``llama_jreg/train/parallel.py``).

Per-layer statistics for the jump metric and JREG (token-wise cos(h_{l-1}, h_l), fp32) need no hooks, so they
work under ``torch.compile`` and activation checkpointing. Two equivalent ways, picked by
``Llama.stats_in_blocks`` (set by ``Llama.compile_blocks``):

* eager (default): one autograd node over all residual streams h_0..h_L (``stream_cosines``): each stream's
  norm is computed once, and backward writes one combined gradient per stream (instead of one per cosine it
  takes part in, which autograd would then add) -- about a third fewer full-size passes;
* compiled blocks: each block returns the cosine between its input and output (``token_cosine``), so inductor
  fuses it into the block's own kernels.

Both save only references to tensors the graph keeps anyway (the residual streams) plus (B, T) vectors, so they
add no full-size activation to memory.

Initialisation (``Llama.reset_parameters``): every Linear and the embedding ~ N(0, init_std); the two residual
output projections (attention ``wo`` and MLP ``w2``) ~ N(0, init_std / sqrt(2 * n_layers)) (GPT-2 / OLMo
scaled init); RMSNorm weights = 1. A tied LM head shares the embedding matrix.

Decoding (``Llama.kv_cache``, what ``llama-jreg generate`` and the lm-eval adapter use): a KV cache attached to
each attention module for the duration of a ``with``; the same forward then runs the next tokens at the
positions after the cached ones. Without a cache (training, evaluation) the forward takes the path it always
did: the only added work is one ``cache is None`` check per attention.

RoPE uses the half-split ("rotate_half") layout of HF transformers' Llama, so HF weights load without
permutation (``llama_jreg/interop/hf.py``). In eager training RoPE and each RMSNorm are one autograd node each
(``llama_jreg/ops.py``: the same values as the formulas, fewer kernels and saved tensors); compiled blocks use
the formulas, which inductor fuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llama_jreg import UserError
from llama_jreg.attention import (
    BACKENDS,
    DocumentMask,
    attention,
    check_backend,
    document_mask,
    resolve_backend_for,
)
from llama_jreg.loss import linear_cross_entropy, linear_cross_entropy_z
from llama_jreg.ops import apply_rope, rms_norm, rms_normalise, stream_cosines, token_cosine


@dataclass
class ModelConfig:
    """Architecture of one Llama model. Sizes live in ``configs/model/*.yaml`` (and ``SIZES`` below)."""

    name: str = "tiny"  # size: tiny | small | medium | large (configs/model/), custom
    vocab_size: int = 8192  # embedding rows
    dim: int = 256  # hidden size
    n_layers: int = 6  # blocks
    n_heads: int = 8  # query heads
    n_kv_heads: int = 4  # key/value heads (GQA)
    head_dim: int | None = None  # default dim // n_heads
    ffn_dim: int = 688  # SwiGLU hidden size
    max_seq_len: int = 512  # context length (RoPE tables)
    rope_theta: float = 10000.0  # RoPE base
    # RoPE frequency scaling for long context: null (plain RoPE), "linear" (all frequencies / factor) or
    # "llama3" (Llama 3.1+: low frequencies / factor, high ones kept, a smooth ramp between); the other
    # rope_* fields are that scaling's parameters (HF rope_scaling / rope_parameters)
    rope_scaling: str | None = None
    rope_factor: float = 1.0  # rope_scaling: the context extension factor
    rope_low_freq_factor: float = 1.0  # rope_scaling=llama3
    rope_high_freq_factor: float = 4.0  # rope_scaling=llama3
    rope_original_max_seq_len: int = 8192  # rope_scaling=llama3: the original context
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # share the embedding and LM head weights
    init_std: float = 0.02  # std of the normal weight init
    attn_backend: str = "auto"  # auto | flash | sdpa | eager (llama_jreg/attention.py)

    def validate(self) -> ModelConfig:
        if self.n_heads <= 0 or self.n_kv_heads <= 0 or self.n_layers <= 0 or self.dim <= 0:
            raise UserError("model.dim, model.n_layers, model.n_heads and model.n_kv_heads must be positive")
        if self.head_dim is None and self.dim % self.n_heads != 0:
            raise UserError(
                f"model.n_heads={self.n_heads} does not divide model.dim={self.dim}; "
                "pick n_heads that divides dim (or set model.head_dim)"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise UserError(
                f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}; "
                "pick n_kv_heads that divides n_heads"
            )
        if self.hd % 2 != 0:
            raise UserError(f"head dimension {self.hd} must be even for RoPE")
        if self.vocab_size <= 0 or self.max_seq_len <= 0 or self.ffn_dim <= 0:
            raise UserError("model.vocab_size, model.max_seq_len and model.ffn_dim must be positive")
        if self.rope_scaling not in (None, "linear", "llama3"):
            raise UserError(f"unknown model.rope_scaling={self.rope_scaling!r}; choose null, linear or llama3")
        if self.rope_scaling and self.rope_factor <= 0:
            raise UserError(f"model.rope_factor={self.rope_factor} must be > 0")
        if self.rope_scaling == "llama3" and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
            raise UserError(
                f"model.rope_low_freq_factor={self.rope_low_freq_factor} and rope_high_freq_factor="
                f"{self.rope_high_freq_factor} must satisfy 0 < low < high for rope_scaling=llama3"
            )
        if self.attn_backend not in BACKENDS:
            raise UserError(
                f"unknown model.attn_backend={self.attn_backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        check_backend(self.attn_backend)
        return self

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads


# The four sizes, mirrored by configs/model/*.yaml (a test checks they agree).
SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=688, max_seq_len=512),
    "small": dict(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2304,
                  max_seq_len=2048, tie_embeddings=False),
    "medium": dict(vocab_size=32000, dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, ffn_dim=3072,
                   max_seq_len=2048, tie_embeddings=False),
    "large": dict(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632,
                  max_seq_len=2048, tie_embeddings=False),
}


def config_for_size(name: str, **overrides) -> ModelConfig:
    if name not in SIZES:
        raise UserError(f"unknown model size {name!r}; choose one of {', '.join(SIZES)}")
    return ModelConfig(name=name, **{**SIZES[name], **overrides}).validate()


class ModelOutput(NamedTuple):
    # (B, T, V) logits; None when ``labels`` were given (the loss is computed without materialising them)
    logits: torch.Tensor | None
    # (L, B, T) fp32 token-wise cos(h_{l-1}, h_l) for l = 1..L, or None when stats were not asked for
    cos: torch.Tensor | None = None
    # (B, T) fp32 cos(h_{L-1}, final_norm(h_L)) - the post-final-norm variant of the last layer (with gradient
    # when stats="grad")
    cos_post_norm: torch.Tensor | None = None
    # [h_0, ..., h_L] residual streams (pre final norm), only with return_hidden=True
    hidden: list[torch.Tensor] | None = None
    # summed fp32 cross-entropy over the target tokens (label -100 ignored), only when ``labels`` were given;
    # with ``z_loss > 0`` the summed training loss CE + z_loss * lse^2 (its parts: ``ce`` and ``lse_sq``)
    loss: torch.Tensor | None = None
    # with labels and z_loss > 0 only: the summed CE and the summed squared log-sum-exp of the target tokens'
    # logits, both detached (for logging)
    ce: torch.Tensor | None = None
    lse_sq: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32, cast back, then scale (HF LlamaRMSNorm's order of operations). In eager training
        # one autograd node (ops.rms_norm: -0.7 ms of 2.5 per norm fwd+bwd at 2048 x 256 on CPU, scripts/bench_ops.py
        # --only rmsnorm; torch's F.rms_norm measured no faster than the formula). Compiled or without grad, the
        # formula itself (inductor fuses it).
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) \
                and not torch.compiler.is_compiling():
            return rms_norm(x, self.weight, self.eps)
        return self.formula(x)

    def formula(self, x: torch.Tensor) -> torch.Tensor:
        """The norm as plain tensor ops (what autograd and inductor see when the one-node path is not taken)."""
        xh, _ = rms_normalise(x, self.eps)
        return self.weight * xh.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """The RoPE angular frequencies (float64, head_dim / 2 of them), with the config's frequency scaling.

    ``llama3``: a frequency whose wavelength 2*pi/f is longer than ``original_max_seq_len / low_freq_factor``
    is divided by ``factor``; one shorter than ``original_max_seq_len / high_freq_factor`` is kept; in between
    the result moves linearly (in ``original_max_seq_len / wavelength``) from f / factor to f."""
    hd = cfg.hd
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        ctx, lo, hi = cfg.rope_original_max_seq_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        rotations = ctx * inv_freq / (2 * math.pi)  # = ctx / wavelength
        ramp = ((rotations - lo) / (hi - lo)).clamp(0.0, 1.0)  # 0: long wavelengths, 1: short ones
        return inv_freq / cfg.rope_factor * (1 - ramp) + inv_freq * ramp
    return inv_freq


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables (max_seq_len, head_dim), fp32, half-split layout."""
    t = torch.arange(cfg.max_seq_len, dtype=torch.float64)
    freqs = torch.outer(t, rope_inv_freq(cfg))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


class LayerKVCache:
    """One attention layer's keys and values, (B, n_kv_heads, max_len, head_dim), for positions 0 .. length-1."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.length = k, v, 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the next positions; return those of every position so far."""
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """The keys and values of every layer for decoding (``Llama.kv_cache``): a forward of T tokens writes theirs
    at positions ``length .. length+T-1`` (its RoPE positions too) and attends over all ``length + T``."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.hd)
        self.layers = [LayerKVCache(torch.empty(shape, dtype=dtype, device=device),
                                    torch.empty(shape, dtype=dtype, device=device)) for _ in range(cfg.n_layers)]
        self.max_len = max_len

    @property
    def length(self) -> int:
        """Positions cached so far (the next token's position)."""
        return self.layers[0].length

    def check_room(self, n: int) -> None:
        if self.length + n > self.max_len:
            raise UserError(f"{self.length + n} tokens exceed the KV cache of {self.max_len} positions; "
                            "generate fewer tokens")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.hd
        self.backend = cfg.attn_backend
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.hd, cfg.dim, bias=False)
        self.cache: LayerKVCache | None = None  # set while decoding (``Llama.kv_cache``)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                docs: DocumentMask | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        if self.cache is None:
            # q and k in one matmul (the weights stay Linear modules wq/wk: checkpoints and HF interop are
            # unchanged). v gets its own matmul: attention saves v for backward, and a view into a fused qkv
            # output would keep the q/k part alive too; the q/k output is freed after RoPE.
            nq = self.n_heads * self.hd
            q, k = F.linear(x, torch.cat([self.wq.weight, self.wk.weight])).split([nq, self.n_kv_heads * self.hd], -1)
        else:  # decoding a few tokens at a time: concatenating the weights would cost more than the matmuls
            q, k = self.wq(x), self.wk(x)
        v = self.wv(x)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None:  # the T new queries attend over every cached position and themselves
            k, v = self.cache.append(k, v)
        out = attention(q, k, v, self.backend, docs)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two matmuls: fusing gate/up into one (weights concatenated every step) measured ~3 % slower on CPU
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, stats: int = 0,
                docs: DocumentMask | None = None):
        """stats: 0 = none, 1 = detached (logging only), 2 = with gradient (JREG). docs: attention within
        documents (``llama_jreg.attention.DocumentMask``)."""
        h = x + self.attn(self.attn_norm(x), cos, sin, docs)
        out = h + self.mlp(self.mlp_norm(h))
        if stats == 0:
            return out, None
        if stats == 1:
            with torch.no_grad():
                return out, token_cosine(x.detach(), out.detach())
        return out, token_cosine(x, out)


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        rope_cos, rope_sin = rope_tables(cfg)
        self.register_buffer("rope_cos", rope_cos, persistent=False)
        self.register_buffer("rope_sin", rope_sin, persistent=False)
        # activation checkpointing is applied by llama_jreg.train.parallel; the flag lives here so the
        # forward stays one readable loop.
        self.checkpoint_blocks = False
        # per-layer cosines inside each block (``compile_blocks`` sets it: fused into the compiled kernels) or
        # over all residual streams at once (eager: fewer passes); see the module docstring
        self.stats_in_blocks = False
        self.cache: KVCache | None = None  # set while decoding (``kv_cache``)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # RMSNorm weights
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=out_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def compile_blocks(self) -> None:
        """``torch.compile`` each block in place (parameter names unchanged). The per-layer JREG cosines are then
        computed inside the blocks, so inductor fuses them into each block's kernels."""
        self.stats_in_blocks = True
        for block in self.layers:
            block.compile()

    @contextmanager
    def kv_cache(self, batch: int, max_len: int) -> Iterator[KVCache]:
        """Decode with a KV cache for ``batch`` rows of up to ``max_len`` positions: inside the ``with``, each
        forward takes the next tokens of every row (the prompt, then one or more at a time), runs at the
        positions that follow the cached ones and adds its keys and values to the cache (same logits as one
        forward over the whole sequence). Without a cache the forward is the training one, unchanged."""
        if max_len > self.cfg.max_seq_len:
            raise UserError(f"{max_len} positions exceed the model context model.max_seq_len="
                            f"{self.cfg.max_seq_len}; generate fewer tokens")
        w = self.tok_embeddings.weight
        cache = KVCache(self.cfg, batch, max_len, w.dtype, w.device)
        self._attach(cache)
        try:
            yield cache
        finally:
            self._attach(None)

    def _attach(self, cache: KVCache | None) -> None:
        self.cache = cache
        for i, layer in enumerate(self.layers):
            layer.attn.cache = None if cache is None else cache.layers[i]

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied head is counted once
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n

    def _rope(self, T: int, position_ids: torch.Tensor | None, doc_ids: torch.Tensor | None):
        """cos / sin of the T tokens' positions: 0..T-1, ``position_ids``, or after the cached ones."""
        start = 0
        if self.cache is not None:
            if doc_ids is not None:
                raise ValueError("doc_ids (packed documents) cannot be used with a KV cache")
            self.cache.check_room(T)
            start = self.cache.length
        if position_ids is None:
            return self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        # (B, 1, T, hd): per-row positions, broadcast over the heads
        return self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        stats: bool | str = False,
        return_hidden: bool = False,
        labels: torch.Tensor | None = None,
        loss_chunk_tokens: int | None = None,
        z_loss: float = 0.0,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """tokens: (B, T) int64. ``stats``: False (default), True/"detached" (fp32 cosines for logging, no
        gradient), "grad" (cosines that carry gradient, for JREG; the post-final-norm one stays detached) or
        "grad_post_norm" (that one with gradient too, for ``jreg.stream=post_norm``). ``labels`` (B, T) with -100 = ignore:
        return the summed cross-entropy in ``loss`` through the fused chunked LM head + loss
        (``llama_jreg.loss.linear_cross_entropy``; ``loss_chunk_tokens`` tokens per chunk, None = auto,
        0 = materialised logits) and no logits. ``z_loss``: add ``z_loss * logsumexp(logits)^2`` per target token
        to that sum, in the same fused pass (``ce`` and ``lse_sq`` then hold its two parts).

        Packed documents (``data.document_mask``): ``doc_ids`` (B, T) int, the document of each token (a new one
        starts wherever the id changes along a row): attention stays inside each document, so every token's
        output is what it would be with its document alone in the row. ``position_ids`` (B, T) int: the RoPE
        position of each token (default 0..T-1; e.g. restarting at 0 in every document). Inside ``kv_cache``
        the tokens continue the cached sequence (see there)."""
        T = tokens.shape[1]
        if T > self.cfg.max_seq_len:
            raise UserError(
                f"sequence length {T} exceeds the model context model.max_seq_len={self.cfg.max_seq_len}; "
                "use a shorter data.seq_len or a larger model.max_seq_len"
            )
        mode = 0 if not stats else (2 if stats in ("grad", "grad_post_norm") else 1)
        # cosines with gradient over all residual streams at once (eager), unless the blocks compute them
        over_streams = mode == 2 and not self.stats_in_blocks
        block_mode = 0 if over_streams else mode
        cos, sin = self._rope(T, position_ids, doc_ids)
        h = self.tok_embeddings(tokens)
        docs = None
        if doc_ids is not None:  # one mask for all layers, in the form the backend that will run takes
            dev = h.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
            docs = document_mask(doc_ids, resolve_backend_for(self.cfg.attn_backend, h.device, dtype), dtype)
        streams = [h] if return_hidden or over_streams else None
        layer_cos = []
        for layer in self.layers:
            prev = h
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                h, c = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, block_mode, docs, use_reentrant=False)
            else:
                h, c = layer(h, cos, sin, block_mode, docs)
            if c is not None:
                layer_cos.append(c)
            if streams is not None:
                streams.append(h)
        hidden = streams if return_hidden else None
        h_final = self.norm(h)
        ce = lse_sq = None
        if labels is None:
            logits, loss = self.output(h_final), None
        elif z_loss:
            logits = None
            loss, ce, lse_sq = linear_cross_entropy_z(h_final, self.output.weight, labels, z_loss, loss_chunk_tokens)
        else:
            logits, loss = None, linear_cross_entropy(h_final, self.output.weight, labels, loss_chunk_tokens)
        if mode == 0:
            return ModelOutput(logits, hidden=hidden, loss=loss, ce=ce, lse_sq=lse_sq)
        layer_cos = stream_cosines(streams) if over_streams else torch.stack(layer_cos)
        if stats == "grad_post_norm":  # post-final-norm variant of the last layer, with gradient (jreg.stream)
            post = token_cosine(prev, h_final)
        else:
            with torch.no_grad():  # for logging only
                post = token_cosine(prev.detach(), h_final.detach())
        return ModelOutput(logits, layer_cos, post, hidden, loss, ce, lse_sq)
