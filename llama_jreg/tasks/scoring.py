"""Scoring token sequences with a causal LM: the one place where task evaluation and the lm-eval adapter
(``llama_jreg.commands.lm_eval``) turn a model's logits into log-likelihoods and greedy hits.

A :class:`Request` is a token sequence ``ids`` (model input ``ids[:-1]``, labels ``ids[1:]``) whose labels
from ``start`` on are scored, optionally only where ``mask`` is true. Its :class:`Score`: the summed
log-probability of the scored labels, whether every scored label is the argmax (the greedy continuation), and
the number of masked labels that are the argmax (``hits``) out of ``count`` (the masked count is
``llama_jreg.tasks.induction.induction_hits``, the one definition of induction accuracy). Requests are batched by length
with right padding (causal attention: padding after a row never changes its scored positions); the log-softmax
is taken over the scored positions only, in fp32, so a batch never holds more than one float32 logits tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llama_jreg import UserError


@dataclass
class Request:
    ids: list[int]
    start: int = 0  # first scored label index (label t is ids[t + 1])
    mask: list[bool] | None = None  # per label (len(ids) - 1), None = score every label from ``start``


@dataclass
class Score:
    loglik: float  # sum over scored labels of log p(label | prefix)
    greedy: bool  # every scored label is the top-1 prediction
    hits: int  # masked labels (all scored labels without a mask) that are the top-1 prediction
    count: int  # masked labels (all scored labels without a mask)


def encode_pair(encode: Callable[[str], list[int]], prefix_id: int, context: str,
                continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of ``context`` and ``continuation`` split the way lm-eval-harness's HF model does: the whole text
    is encoded (so merges across the boundary are kept) and trailing context whitespace moves to the
    continuation; an empty context becomes ``[prefix_id]`` (BOS, or EOS without one)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [prefix_id], encode(continuation)
    whole = encode(context + continuation)
    ctx = encode(context)
    return whole[:len(ctx)], whole[len(ctx):]


def pair_request(context: list[int], continuation: list[int], max_length: int) -> Request:
    """Score ``continuation`` after ``context``; the context is cut from the left so both fit in
    ``max_length`` model inputs."""
    full = (context + continuation)[-(max_length + 1):]
    return Request(full, start=len(full) - 1 - len(continuation))


def prefix_token(tok) -> int:
    """BOS, or EOS for tokenizers without one: the token an empty context starts from (as in the lm-eval
    adapter). ``tok`` is a ``llama_jreg.data.tokenizer`` tokenizer or an ``llama_jreg.load.TextTokenizer``."""
    sp, hf = getattr(tok, "sp", None), getattr(tok, "hf", None)
    bos = getattr(tok, "bos_id", None)
    if bos is None and sp is not None:
        bos = sp.bos_id()
    if bos is None and hf is not None:
        bos = getattr(hf, "bos_token_id", None)
    eos = getattr(tok, "eos_id", None)
    for v in (bos, eos):
        if v is not None and int(v) >= 0:
            return int(v)

    raise UserError("the tokenizer has neither a BOS nor an EOS token to start an empty context with")


def induction_hits(pred: torch.Tensor, labels: torch.Tensor, eval_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits, count): labels marked by ``eval_mask`` (second-or-later trigger outputs; ignored labels < 0
    excluded) that equal ``pred``, and how many labels are marked. ``pred`` may carry leading dimensions (one
    prediction per logit-lens layer): ``hits`` then has those dimensions."""
    m = eval_mask.bool() & (labels >= 0)
    hit = (pred == labels) & m
    lead = pred.dim() - labels.dim()
    return hit.reshape(*pred.shape[:lead], -1).sum(-1), m.sum()


def n_batches(requests: Sequence[Request], batch_size: int) -> int:
    return -(-len(requests) // batch_size)


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: Sequence[Request], *, batch_size: int = 8,
                   device: torch.device | str = "cpu", autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                   pad_to_batches: int = 0) -> list[Score]:
    """Scores of ``requests`` in their order. ``pad_to_batches``: run dummy forwards until at least that many
    forward passes were made (sharded FSDP models need the same number of forwards on every rank)."""
    autocast = autocast or contextlib.nullcontext
    results: list[Score | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    forwards = 0
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        T = max(len(requests[i].ids) - 1 for i in idx)
        batch = torch.zeros(len(idx), max(T, 1), dtype=torch.long)
        for r, i in enumerate(idx):
            inp = requests[i].ids[:-1]
            batch[r, :len(inp)] = torch.tensor(inp, dtype=torch.long)
        with autocast():
            logits = model(batch.to(device)).logits
        forwards += 1
        for r, i in enumerate(idx):
            req = requests[i]
            a, b = req.start, len(req.ids) - 1
            target = torch.tensor(req.ids[a + 1:], device=logits.device)
            logp = F.log_softmax(logits[r, a:b].float(), dim=-1)
            top = logp.argmax(-1) == target
            if req.mask is not None:
                m = torch.tensor(req.mask[a:b], dtype=torch.bool, device=logits.device)
                hits, count = induction_hits(logp.argmax(-1), target, m)
                hits, count = int(hits), int(count)
            else:
                hits, count = int(top.sum()), int(target.numel())
            results[i] = Score(float(logp.gather(-1, target[:, None]).sum()), bool(top.all()), hits, count)
    while forwards < pad_to_batches:
        with autocast():
            model(torch.zeros(1, 1, dtype=torch.long, device=device))
        forwards += 1
    return results  # type: ignore[return-value]
