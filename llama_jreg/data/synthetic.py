"""Synthetic induction-head data after Bietti et al. 2023, "Birth of a Transformer: A Memory Viewpoint".

Tokens follow a bigram model ``P[a, b] = p(next = b | current = a)``, except for K *trigger* tokens: within a
sequence, every occurrence of trigger ``q_k`` is followed by that sequence's own *output* token ``o_k``.
Predicting ``o_k`` after the second and later occurrences of ``q_k`` needs an induction head (copy what
followed ``q_k`` earlier in the context); the bigram alone cannot.

Choices (``data.induction``):

- ``bigram=random``: each row of ``P`` ~ Dirichlet(``alpha``) from ``seed``; ``bigram=PATH``: ``P`` estimated
  from the characters of a UTF-8 text file (characters ranked by frequency get ids ``0..V-1``; rarer ones share
  id ``V-1``; add-0.1 smoothing), as the paper does with tiny Shakespeare; ``bigram=shakespeare`` (when no file
  of that name exists): the same from the project's Shakespeare corpus (the works of ``data=shakespeare``,
  concatenated in file-name order, fetched once into the cache), so a recipe needs no path.
- ``triggers=per_sequence`` (default): the K triggers are drawn per sequence from the unigram (stationary)
  distribution, without replacement. ``triggers=top``: the paper's variant, the K most frequent tokens are the
  triggers of every sequence. Outputs ``o_k`` are always drawn per sequence from the unigram distribution of
  non-trigger tokens, without replacement.
- Sequences have ``seq_len + 1`` tokens (inputs and shifted labels of length ``seq_len``); sequence ``i`` of a
  split is generated from ``numpy.random.default_rng([seed, split, i])`` alone, so it is the same wherever and
  whenever it is generated. Train and validation use different ``split`` streams.
- ``eval_mask[t]`` is True where label ``t`` (token ``t+1``) follows a trigger that already occurred earlier
  in the sequence, i.e. the label is a second-or-later occurrence of that trigger's output.

There is no tokenizer: ids are the tokens (``bundle.tokenizer`` is None).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from llama_jreg import UserError
from llama_jreg.data.schema import DataConfig, InductionConfig
from llama_jreg.data.sources import cache_root, fetch_shakespeare

MAX_VOCAB = 16384  # the dense V x V matrix costs 4 V^2 bytes (1 GiB at this size)
_SPLITS = {"train": 0, "validation": 1}


class BigramModel:
    """A dense bigram transition matrix (kept as row-wise CDFs) and its unigram distribution."""

    def __init__(self, transition: np.ndarray, unigram: np.ndarray):
        self.vocab_size = transition.shape[0]
        self.unigram = unigram / unigram.sum()
        self.cdf = np.cumsum(transition, axis=1, dtype=np.float64).astype(np.float32)
        self.cdf /= self.cdf[:, -1:]
        self.cdf[:, -1] = 1.0

    def transition(self) -> np.ndarray:
        """``P`` recovered from the CDFs (float32)."""
        return np.diff(self.cdf, axis=1, prepend=0.0)

    @classmethod
    def random(cls, vocab_size: int, alpha: float, seed: int) -> BigramModel:
        rng = np.random.default_rng([seed, 7919])
        p = np.empty((vocab_size, vocab_size), dtype=np.float32)
        for lo in range(0, vocab_size, 512):  # chunks keep the float64 temporaries small
            g = rng.gamma(alpha, size=(min(512, vocab_size - lo), vocab_size)) + 1e-12
            p[lo:lo + len(g)] = g / g.sum(axis=1, keepdims=True)
        pi = np.full(vocab_size, 1.0 / vocab_size)
        for _ in range(50):  # stationary distribution by power iteration
            # float32 matvec (a float64 ``pi @ p`` would copy p to float64 every time: 2 s each at V=8192)
            pi = (pi.astype(np.float32) @ p).astype(np.float64)
            pi /= pi.sum()
        return cls(p, pi.astype(np.float64))

    @classmethod
    def from_text(cls, path: str | Path, vocab_size: int) -> BigramModel:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"data.induction.bigram={path}: no such file; use bigram=random, bigram=shakespeare or "
                            "a text file") from None
        except UnicodeDecodeError:
            raise UserError(f"data.induction.bigram={path} is not valid UTF-8; convert it to UTF-8") from None
        if len(text) < 2:
            raise UserError(f"data.induction.bigram={path} is too short to estimate a bigram model; use more text")
        return cls.from_chars(text, vocab_size)

    @classmethod
    def from_chars(cls, text: str, vocab_size: int) -> BigramModel:
        """``P`` of the characters of ``text`` (ranked by frequency; see the module docstring)."""
        ranked = [c for c, _ in Counter(text).most_common()]
        ids = {c: min(i, vocab_size - 1) for i, c in enumerate(ranked)}
        seq = np.fromiter((ids[c] for c in text), dtype=np.int64, count=len(text))
        counts = np.full((vocab_size, vocab_size), 0.1)
        np.add.at(counts, (seq[:-1], seq[1:]), 1.0)
        unigram = np.bincount(seq, minlength=vocab_size) + 0.1
        return cls(counts / counts.sum(axis=1, keepdims=True), unigram)


def build_bigram(cfg: InductionConfig, seed: int, cache: Path | None = None) -> BigramModel:
    """The bigram model of ``cfg.bigram``; ``cache`` is where ``bigram=shakespeare`` finds (or fetches) the
    corpus (default: ``$LLAMA_JREG_CACHE`` or ``~/.cache/llama_jreg``)."""
    v = cfg.vocab_size
    if v is None or v < 2 * cfg.num_triggers + 1:
        raise UserError(f"data.induction.vocab_size={v} is too small for {cfg.num_triggers} triggers; raise it")
    if v > MAX_VOCAB:
        raise UserError(f"data.induction.vocab_size={v} needs a {4 * v * v / 2**30:.1f} GiB bigram matrix; "
                        f"use data.induction.vocab_size <= {MAX_VOCAB} (the paper uses 65)")
    if cfg.triggers not in ("per_sequence", "top"):
        raise UserError(f"data.induction.triggers={cfg.triggers!r}; choose per_sequence or top")
    if cfg.bigram == "random":
        return BigramModel.random(v, cfg.alpha, seed)
    if cfg.bigram == "shakespeare" and not Path(cfg.bigram).exists():
        files = fetch_shakespeare(cache if cache is not None else cache_root(DataConfig()))
        return BigramModel.from_chars("".join(Path(f).read_text(encoding="utf-8") for f in files), v)
    return BigramModel.from_text(cfg.bigram, v)


class InductionSequences:
    """``num_train`` (or ``num_val``) bigram-with-trigger sequences; see the module docstring."""

    def __init__(self, cfg: InductionConfig, bigram: BigramModel, *, seq_len: int, seed: int, split: str = "train"):
        self.cfg, self.bigram, self.seq_len, self.seed = cfg, bigram, seq_len, seed
        self.split_id = _SPLITS[split]
        self.size = cfg.num_train if split == "train" else cfg.num_val
        if self.size < 1:
            raise UserError(f"data.induction.num_{'train' if split == 'train' else 'val'} must be >= 1")
        self.top = np.argsort(-bigram.unigram, kind="stable")[: cfg.num_triggers]

    def __len__(self) -> int:
        return self.size

    def sequence(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(tokens[seq_len+1], eval_mask[seq_len], triggers[K], outputs[K])`` of sequence ``index``."""
        v, k, n = self.bigram.vocab_size, self.cfg.num_triggers, self.seq_len + 1
        rng = np.random.default_rng([self.seed, self.split_id, index])
        pi = self.bigram.unigram
        if self.cfg.triggers == "top":
            triggers = self.top
        else:
            triggers = rng.choice(v, size=k, replace=False, p=pi)
        rest = np.ones(v, dtype=bool)
        rest[triggers] = False
        p_out = np.where(rest, pi, 0.0)
        outputs = rng.choice(v, size=k, replace=False, p=p_out / p_out.sum())
        follow = np.full(v, -1, dtype=np.int64)
        follow[triggers] = outputs
        seen = np.zeros(v, dtype=bool)
        u = rng.random(n)
        tokens = np.empty(n, dtype=np.int64)
        mask = np.zeros(n - 1, dtype=bool)
        tokens[0] = min(int(np.searchsorted(np.cumsum(pi), u[0], side="right")), v - 1)
        cdf = self.bigram.cdf
        for t in range(n - 1):
            cur = tokens[t]
            nxt = follow[cur]
            if nxt >= 0:
                mask[t] = seen[cur]
                seen[cur] = True
                tokens[t + 1] = nxt
            else:
                tokens[t + 1] = np.searchsorted(cdf[cur], u[t + 1], side="right")
        return tokens, mask, triggers, outputs

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        seqs = [self.sequence(int(i)) for i in indices]
        tokens = torch.from_numpy(np.stack([s[0] for s in seqs]))
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                "eval_mask": torch.from_numpy(np.stack([s[1] for s in seqs]))}
