"""Token cross-entropy of the LM head, fused and chunked: ``sum_t CE(h_t W^T, y_t)`` without ever holding the
full ``(tokens, vocab)`` logits.

The plain way (``F.cross_entropy(F.linear(h, W), y)``) materialises the logits, a log-softmax copy, a
zero-filled gradient of the same size and the logit gradient: four ``tokens x vocab`` fp32 tensors (4 x 64 MiB for
``tiny`` at 2,048 tokens, 4 x 2 GiB for ``large`` at 16k tokens). ``linear_cross_entropy`` walks the tokens in
chunks; for each chunk it computes the logits, the log-sum-exp and the summed loss, and -- when a gradient is
wanted -- turns the chunk's logits *in place* into ``softmax - onehot`` and immediately multiplies it into
``dL/dh`` (chunk rows) and ``dL/dW`` (accumulated). Backward only scales the two stored gradients by the
incoming scalar. Same FLOPs as the plain way (three head matmuls), one chunk of logits alive at a time, no
log-softmax kernels. On the 2-core CPU the head + loss of ``tiny`` (2,048 tokens, vocab 8192, forward +
backward) takes ~255 ms instead of ~365 ms, and ~0.94 s instead of ~1.41 s at vocab 32k (medians of
``scripts/bench_ops.py --only loss`` on a quiet machine; docs/benchmarks.md). On a GPU the same removes the logit tensors from peak
memory (not measured here: no GPU was lent to this project yet).

Numerics: the matmuls run in the input dtype (the autocast dtype under autocast, like ``F.linear``), softmax
and the loss in fp32; label ``-100`` is ignored. ``tests/test_loss.py`` checks loss and gradients against
``F.cross_entropy`` (fp64 to 1e-12, fp32 to 1e-5, bf16 autocast loosely), and that the chunk size does not
change the result beyond fp32 rounding.

z-loss (``optim.z_loss``, PaLM / OLMo): ``linear_cross_entropy_z`` adds ``coef * sum_t lse_t^2`` (``lse_t`` the
log-sum-exp of token t's logits, target tokens only) in the same pass: the chunk's log-sum-exp is already there,
and the gradient of ``lse^2`` with respect to the logits is ``2 lse softmax``, so the in-place gradient becomes
``(1 + 2 coef lse) softmax - onehot`` -- no extra matmul, no extra logits. It keeps the softmax normaliser near
1 (lse near 0), which keeps bf16 logits in range. With ``coef == 0`` nothing of it runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

# Auto chunk size, in fp32 logits per chunk, and at least _MIN_CHUNK tokens (smaller chunks make the three head
# matmuls slower: measured on the 2-core CPU, 128-token chunks cost ~20-30% more than 512, bench_ops.py). One buffer
# of that size is reused by every chunk of a call.
_CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}
_MIN_CHUNK = 512


def auto_chunk_tokens(vocab_size: int, device: torch.device | str) -> int:
    dev = torch.device(device).type
    per_token = 4 * vocab_size
    n = max(_MIN_CHUNK, _CHUNK_BYTES.get(dev, _CHUNK_BYTES["cuda"]) // per_token)
    return 1 << (n.bit_length() - 1)  # a power of two


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy in fp32 over materialised logits, ignoring label -100 (the reference)."""
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def _chunked_loss_and_grads(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                            want_h: bool, want_w: bool, z_coef: float = 0.0):
    """(summed loss, dL/dh or None, dL/dW or None, (CE_sum, lse2_sum) or None) in one pass over token chunks.

    The loss is ``CE_sum + z_coef * lse2_sum``; with ``z_coef == 0`` it is CE_sum and lse^2 is not computed."""
    dev = h.device.type
    cdtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    acc = torch.promote_types(cdtype, torch.float32)  # softmax / loss dtype: fp32 (fp64 stays fp64)
    with torch.autocast(dev, enabled=False):
        w = weight.to(cdtype)
        grad_h = torch.empty_like(h) if want_h else None
        wdtype = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=wdtype, device=h.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        zsum = torch.zeros((), dtype=acc, device=h.device) if z_coef else None
        # one logits buffer reused by every chunk (no fresh allocation per chunk) when no cast is needed
        buf = (torch.empty(min(chunk, h.shape[0]), w.shape[0], dtype=acc, device=h.device)
               if cdtype == acc else None)
        for s in range(0, h.shape[0], chunk):
            hc = h[s:s + chunk].to(cdtype)
            yc = labels[s:s + chunk]
            valid = (yc != IGNORE_INDEX).to(acc)
            idx = yc.clamp_min(0).unsqueeze(1)
            # (chunk, V) logits in the softmax dtype
            z = torch.mm(hc, w.t(), out=buf[:hc.shape[0]]) if buf is not None else (hc @ w.t()).to(acc)
            target = z.gather(1, idx).squeeze(1)
            zmax = z.amax(1, keepdim=True)
            z.sub_(zmax).exp_()
            sumexp = z.sum(1)
            lse = zmax.squeeze(1) + sumexp.log()
            total += ((lse - target) * valid).sum()
            if z_coef:
                zsum += (lse.square() * valid).sum()
            if want_h or want_w:
                # softmax, zero on ignored rows (times 1 + 2 z_coef lse: the z-loss gradient 2 lse softmax)
                scale = valid / sumexp if not z_coef else valid * (1 + 2 * z_coef * lse) / sumexp
                z.mul_(scale.unsqueeze(1))
                z.scatter_add_(1, idx, -valid.unsqueeze(1))  # - onehot(target)
                zc = z.to(cdtype)
                if want_h and grad_h.dtype == cdtype:
                    torch.mm(zc, w, out=grad_h[s:s + chunk])
                elif want_h:
                    grad_h[s:s + chunk] = zc @ w
                if want_w:
                    if cdtype == wdtype:
                        grad_w.addmm_(zc.t(), hc)
                    else:
                        grad_w += zc.t() @ hc
    parts = None
    if zsum is not None:
        parts = (total, zsum)
        total = total + z_coef * zsum
    return total, grad_h, None if grad_w is None else grad_w.to(weight.dtype), parts


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int, z_coef: float):
        total, grad_h, grad_w, parts = _chunked_loss_and_grads(h, weight, labels, chunk, *ctx.needs_input_grad[:2],
                                                               z_coef=z_coef)
        ctx.save_for_backward(grad_h, grad_w)
        if parts is None:
            return total
        ctx.mark_non_differentiable(*parts)
        return (total, *parts)

    @staticmethod
    def backward(ctx, g: torch.Tensor, *_unused):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * g.to(grad_h.dtype),
                None if grad_w is None else grad_w * g.to(grad_w.dtype), None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk_tokens: int | None = None) -> torch.Tensor:
    """``cross_entropy_sum(h @ weight.T, labels)`` (fp32 scalar) without the full logits.

    h: (..., D); weight: (V, D); labels: (...) int with -100 = ignore. ``chunk_tokens``: tokens per chunk
    (None = ``auto_chunk_tokens``; 0 = the plain materialised path, for reference and debugging)."""
    h2, y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    if chunk_tokens == 0:
        return cross_entropy_sum(F.linear(h2, weight), y)
    chunk = chunk_tokens or auto_chunk_tokens(weight.shape[0], h.device)
    if not torch.is_grad_enabled():  # evaluation: same loop, no gradients built
        return _chunked_loss_and_grads(h2, weight, y, chunk, False, False)[0]
    return _LinearCrossEntropy.apply(h2, weight, y, chunk, 0.0)


def lse_square_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum_t logsumexp(logits_t)^2`` in fp32 over the target tokens (label != -100), materialised (the
    reference of the z-loss term)."""
    lse = torch.logsumexp(logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, -2), dim=-1)
    return (lse.square() * (labels.flatten() != IGNORE_INDEX)).sum()


def linear_cross_entropy_z(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, z_coef: float,
                           chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(CE_sum + z_coef * lse2_sum, CE_sum, lse2_sum)``: the LM loss with z-loss (differentiable, fp32 scalar),
    then its two parts detached (for logging): the summed cross-entropy and the summed squared log-sum-exp of
    the target tokens' logits; still without the full logits. ``z_coef`` must be > 0 (without z-loss,
    ``linear_cross_entropy`` is the loss, bit for bit as before). ``chunk_tokens`` as in ``linear_cross_entropy`` (0 = materialised logits and autograd: the reference)."""
    if not z_coef > 0:
        raise ValueError(f"z_coef={z_coef} must be > 0; call linear_cross_entropy without z-loss")
    h2, y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    if chunk_tokens == 0:
        logits = F.linear(h2, weight)
        ce, zsum = cross_entropy_sum(logits, y), lse_square_sum(logits, y)
        return ce + z_coef * zsum, ce.detach(), zsum.detach()
    chunk = chunk_tokens or auto_chunk_tokens(weight.shape[0], h.device)
    if not torch.is_grad_enabled():
        total, _, _, parts = _chunked_loss_and_grads(h2, weight, y, chunk, False, False, z_coef=z_coef)
        return (total, *parts)
    return _LinearCrossEntropy.apply(h2, weight, y, chunk, z_coef)
