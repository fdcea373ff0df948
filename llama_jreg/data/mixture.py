"""Weighted multi-source mixtures: ``data.mixture=[{name, weight, files | hf_path, ...}, ...]``.

Every source is read by the loader it would have on its own (prepared shards through
:class:`~llama_jreg.data.loader.GlobalOrderLoader`, or a stream through
:class:`~llama_jreg.data.streaming.StreamingLoader`), built for one process with micro-batch 1: a source is
a sequence of windows of ``seq_len + 1`` tokens in its own deterministic order, repeating (a new epoch) when
it runs out. All sources share one tokenizer (``data.tokenizer``, or a SentencePiece model trained on the
first ``data.tokenizer_train_chars`` characters of the mixture, each source contributing its weight's share).

Which source global window ``g`` comes from is a function of ``(seed, weights, g)`` alone. The global windows
are cut into blocks of ``N`` (1024, doubled until every source gets at least one window per block); block
``b`` holds exactly ``c_i`` windows of source ``i`` (``c`` = the largest-remainder rounding of
``N * weight_i / sum(weights)``) in the order of a permutation drawn from ``numpy.random.default_rng([seed,
MIX_SALT, b])``. So the realised shares equal the weights up to 1/N at every block boundary, and within a
block they deviate by at most that block's random order.

The order is global, as for one source: rank ``r`` of ``W`` takes windows ``[cursor + r*B, cursor +
(r+1)*B)`` of each turn of ``W*B``; every rank draws every window of the turn from its source (and drops
the ones of other ranks), so all ranks stand at the same place of every source after each micro-batch. The
state (identical on every rank) is ``cursor``, the windows taken from each source so far and each source
loader's state; a resume at any world size or micro-batch size continues with exactly the next windows.

Validation is per source: each source keeps its own held-out part (the head of its prepared stream or the
first documents of its stream, as on its own), evaluated on ``trainer.eval_batches`` fixed batches each;
``val_loss/<name>`` is a source's loss and ``val_loss`` the weight-averaged one (the loss on the training
mixture).

This module holds the checks, the order and the loader; ``bundle.build_mixture`` builds a mixture's bundle and
``prepare.prepare_mixture`` / ``prepare.mixture_tokenizer`` prepare its sources and shared tokenizer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from llama_jreg import UserError, storage
from llama_jreg.data.schema import DataConfig, MixtureSource
from llama_jreg.data.sources import resolve_files

MIXTURE_VERSION = 1
MIX_SALT = 0x6D6978  # separates the mixture's random stream from the sources' own orders
BLOCK = 1024
MAX_BLOCK = 1 << 20


# ----------------------------------------------------------------------------------------------- checks


def _where(i: int, src: MixtureSource) -> str:
    return f"data.mixture source {src.name!r}" if src.name else f"data.mixture[{i}]"


def check_mixture(cfg: DataConfig) -> None:
    """The checks of ``data.mixture`` that read files, after the schema's own (names, weights, what each source
    reads; ``DataConfig.validate``): local files exist and are not empty, and every weight can be sampled.
    Raises UserError with one line."""
    cfg.validate_mixture()
    for i, src in enumerate(cfg.mixture):
        if src.hf_path is None and src.files:
            _check_files(_where(i, src), list(src.files), cfg.storage_options)
    block_size([float(src.weight) for src in cfg.mixture])


def _check_files(where: str, patterns: list[str], options: dict | None = None) -> None:
    """Every pattern matches a file (or object), and not every file is empty (a missing or empty source)."""
    found = resolve_files(patterns, where, options)
    if not any(_has_text(h, options) for h in found):
        raise UserError(f"{where}: its files are empty ({', '.join(patterns)}); add text or drop the source")


def _has_text(path: str, options: dict | None = None, chunk: int = 1 << 16) -> bool:
    """Whether a file or object holds anything but whitespace (reads only up to its first other byte)."""
    try:
        if storage.is_url(path):
            fs, inner = storage.filesystem(path, options)
            f = fs.open(inner, "rb")
        else:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        with f:
            while block := f.read(chunk):
                if block.strip():
                    return True
    except OSError as e:
        if not storage.is_url(path):
            raise
        raise storage.storage_error(path, e) from None
    return False


# ----------------------------------------------------------------------------------------------- the order


def block_size(weights: list[float]) -> int:
    """Windows per block: 1024, doubled until every source gets at least one window a block."""
    n = BLOCK
    while n <= MAX_BLOCK:
        if min(block_counts(weights, n)) >= 1:
            return n
        n *= 2
    smallest = min(weights) / sum(weights)
    raise UserError(f"data.mixture: a weight of {smallest:.2e} of the total is too small to sample (< 1/{MAX_BLOCK}); "
                    "raise it or drop the source")


def block_counts(weights: list[float], n: int) -> list[int]:
    """Windows of each source per block of ``n``: ``n * w / sum(w)`` rounded by largest remainder (ties to
    the earlier source), so the counts sum to ``n``."""
    quota = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * n
    counts = np.floor(quota).astype(np.int64)
    short = n - int(counts.sum())
    order = sorted(range(len(weights)), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in order[:short]:
        counts[i] += 1
    return [int(c) for c in counts]


class MixtureLoader:
    """This rank's infinite iterator of micro-batches drawn from several sources (see the module docstring).

    ``streams`` are the sources' own single-process, micro-batch-1 loaders (each ``next()`` is one window,
    a dict of ``(1, seq_len)`` tensors), in the order of ``names`` / ``weights``."""

    def __init__(self, names: list[str], streams: list[Any], weights: list[float], *, seq_len: int,
                 batch_size: int, seed: int, shard: tuple[int, int] = (0, 1), fingerprint: str = ""):
        rank, world_size = shard  # this process's rank and the number of ranks
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.names, self.streams, self.weights = list(names), list(streams), [float(w) for w in weights]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.fingerprint = rank, world_size, fingerprint
        self.block = block_size(self.weights)
        self.counts = block_counts(self.weights, self.block)
        self.cursor = 0  # global windows consumed by all ranks together
        self.windows = np.zeros(len(names), dtype=np.int64)  # ... of each source
        self._blocks: dict[int, np.ndarray] = {}

    def _order(self, b: int) -> np.ndarray:
        """Source index of each window of block ``b``."""
        if b not in self._blocks:
            order = np.repeat(np.arange(len(self.names)), self.counts)
            perm = np.random.default_rng([self.seed, MIX_SALT, b]).permutation(order)
            self._blocks = {k: v for k, v in self._blocks.items() if k >= b - 1}  # keep at most two blocks
            self._blocks[b] = perm
        return self._blocks[b]

    def sources_at(self, start: int, count: int) -> np.ndarray:
        """Source index of the global windows ``[start, start + count)``."""
        blocks, pos = np.divmod(np.arange(start, start + count), self.block)
        out = np.empty(count, dtype=np.int64)
        for b in np.unique(blocks):
            sel = blocks == b
            out[sel] = self._order(int(b))[pos[sel]]
        return out

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        B, W = self.batch_size, self.world_size
        turn = self.sources_at(self.cursor, W * B)
        mine = []
        for j, s in enumerate(turn):
            window = next(self.streams[s])  # every rank draws every window: the sources stay in step on all
            if self.rank * B <= j < (self.rank + 1) * B:
                mine.append(window)
        self.windows += np.bincount(turn, minlength=len(self.names))
        self.cursor += W * B
        return {k: torch.cat([w[k] for w in mine]) for k in mine[0]}

    def tokens_by_source(self) -> dict[str, int]:
        """Training tokens drawn from each source so far, by all ranks together (``seq_len`` per window)."""
        return {n: int(c) * self.seq_len for n, c in zip(self.names, self.windows)}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "mixture", "version": MIXTURE_VERSION, "fingerprint": self.fingerprint,
                "seed": int(self.seed), "cursor": int(self.cursor),
                "windows": {n: int(c) for n, c in zip(self.names, self.windows)},
                "sources": {n: s.state_dict() for n, s in zip(self.names, self.streams)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "mixture":
            raise UserError(f"loader state of kind {state.get('kind')!r} cannot resume a data.mixture run; resume "
                            "with the data config of the checkpoint")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint was trained on data {state.get('fingerprint')} but the config gives "
                            f"{self.fingerprint}; resume with the original data.mixture or start a new run")
        if int(state.get("seed", self.seed)) != self.seed:
            raise UserError(f"checkpoint data order used seed={state['seed']}, this run seed={self.seed}; "
                            "resume with the original seed")
        self.cursor = int(state["cursor"])
        self.windows = np.array([int(state["windows"][n]) for n in self.names], dtype=np.int64)
        for n, s in zip(self.names, self.streams):
            s.load_state_dict(state["sources"][n])


# ----------------------------------------------------------------------------------------------- building


def source_config(cfg: DataConfig, src: MixtureSource, tokenizer: str | None) -> DataConfig:
    """The data config that reads ``src`` alone (with the mixture's shared tokenizer)."""
    kind = "hf" if src.hf_path else "local"
    streaming = src.streaming if src.streaming is not None else (True if kind == "hf" else cfg.streaming)
    return replace(cfg, source=kind, files=list(src.files), hf_path=src.hf_path, hf_name=src.hf_name,
                   hf_split=src.hf_split, text_field=src.text_field or cfg.text_field,
                   text_sample_by=src.text_sample_by or cfg.text_sample_by, streaming=streaming, tokenizer=tokenizer,
                   prepared_dir=None, mixture=[])


def describe_shares(tokens_by_source: dict[str, int], weights: dict[str, float]) -> str:
    """One line: each source's realised share of the tokens against its weight's share."""
    total = max(1, sum(tokens_by_source.values()))
    wsum = sum(weights.values())
    return ", ".join(f"{n}: {tokens_by_source[n] / total:.4f} (weight {weights[n] / wsum:.4f})"
                     for n in tokens_by_source)
