"""Loaders: fixed-length packed sequences in a deterministic, world-size-independent global order.

The global order is an infinite stream of sample indices: epoch ``e`` is a permutation of all samples drawn
from ``numpy.random.default_rng([seed, e])``, and epochs follow each other. A single integer ``cursor``
counts the global samples consumed so far. On rank ``r`` of ``W``, each ``next()`` returns the global samples
``[cursor + r*B, cursor + (r+1)*B)`` and advances the cursor by ``W*B``. Hence 1 rank doing 2 micro-batches
sees exactly the samples 2 ranks see in one, and a resume with a different world size (or micro-batch size)
continues with exactly the next samples. The state is ``{cursor, epoch, fingerprint, seed}``.

Batches are already per rank: they must not go through ``accelerator.prepare`` (which would split them again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llama_jreg import UserError

LOADER_VERSION = 1


class SampleSet(Protocol):
    """A map-style set of fixed-length samples: ``len()`` and a batch of samples by index."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]: ...


class PackedSequences:
    """One split of a prepared directory seen as windows of ``seq_len + 1`` tokens.

    Window ``i`` covers tokens ``[i*seq_len, i*seq_len + seq_len + 1)`` of the split's concatenated stream
    (documents separated by EOS): inputs are its first ``seq_len`` tokens, labels the last ``seq_len``.
    """

    def __init__(self, arrays: list[np.ndarray], seq_len: int):
        self.seq_len = seq_len
        self.arrays = [a for a in arrays if a.size > 0]
        self.offsets = np.cumsum([0] + [a.size for a in self.arrays])
        self.num_tokens = int(self.offsets[-1])
        self.num_sequences = max(0, (self.num_tokens - 1) // seq_len)

    @classmethod
    def from_prepared(cls, directory: str | Path, manifest: dict[str, Any], seq_len: int, start: int = 0,
                      stop: int | None = None) -> PackedSequences:
        """Memory-map tokens ``[start, stop)`` of the prepared stream listed in ``manifest`` (no copy)."""
        dtype = np.dtype(manifest["dtype"])
        stop = manifest["stream"]["tokens"] if stop is None else stop
        arrays, offset = [], 0
        for s in manifest["stream"]["shards"]:
            lo, hi = max(start, offset), min(stop, offset + s["tokens"])
            if lo < hi:
                mm = np.memmap(Path(directory) / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
                arrays.append(mm[lo - offset:hi - offset])
            offset += s["tokens"]
        return cls(arrays, seq_len)

    def __len__(self) -> int:
        return self.num_sequences

    def window(self, i: int) -> np.ndarray:
        """Tokens ``[i*T, i*T + T + 1)`` as int64, read across shard boundaries if needed."""
        start, stop = i * self.seq_len, i * self.seq_len + self.seq_len + 1
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        lo = start - self.offsets[k]
        if stop <= self.offsets[k + 1]:
            return np.asarray(self.arrays[k][lo:lo + stop - start], dtype=np.int64)
        parts, pos = [], start
        while pos < stop:
            k = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            end = min(stop, int(self.offsets[k + 1]))
            parts.append(np.asarray(self.arrays[k][pos - self.offsets[k]:end - self.offsets[k]], dtype=np.int64))
            pos = end
        return np.concatenate(parts)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        windows = torch.from_numpy(np.stack([self.window(int(i)) for i in indices]))
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}


class GlobalOrderLoader:
    """Infinite iterator over this rank's micro-batches of a :class:`SampleSet` (see the module docstring)."""

    def __init__(self, samples: SampleSet, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 fingerprint: str = "", shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if len(samples) < 1:
            raise UserError("the training data holds no complete sequence; add text or lower data.seq_len")
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.rank, self.world_size, self.fingerprint, self.shuffle = rank, world_size, fingerprint, shuffle
        self.cursor = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.cursor // len(self.samples)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            n = len(self.samples)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # keep at most two epochs
            self._perms[epoch] = perm
        return self._perms[epoch]

    def global_indices(self, start: int, count: int) -> np.ndarray:
        """Sample indices at global positions ``[start, start + count)`` of the infinite order."""
        g = np.arange(start, start + count)
        epochs, pos = np.divmod(g, len(self.samples))
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[pos[sel]]
        return out

    def __iter__(self) -> GlobalOrderLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        start = self.cursor + self.rank * self.batch_size
        batch = self.samples.batch(self.global_indices(start, self.batch_size))
        self.cursor += self.world_size * self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "global_order", "version": LOADER_VERSION, "cursor": int(self.cursor),
                "epoch": int(self.epoch), "fingerprint": self.fingerprint, "seed": int(self.seed),
                "samples_per_epoch": len(self.samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "global_order":
            raise UserError(f"loader state of kind {state.get('kind')!r} cannot resume a prepared-data loader; "
                            "resume with the same data.streaming setting")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint was trained on data {state.get('fingerprint')} but the config gives "
                            f"{self.fingerprint}; resume with the original data config or start a new run")
        if int(state.get("seed", self.seed)) != self.seed:
            raise UserError(f"checkpoint data order used seed={state['seed']}, this run seed={self.seed}; "
                            "resume with the original seed")
        self.cursor = int(state["cursor"])


def fixed_batches(samples: SampleSet, n: int, batch_size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` micro-batches over the first ``limit`` samples in order (wrapping around when ``n*B`` exceeds it)."""
    size = len(samples) if limit is None else min(limit, len(samples))
    if size < 1:
        raise UserError("the validation split holds no complete sequence; raise data.val_fraction or lower data.seq_len")
    return [samples.batch(np.arange(i * batch_size, (i + 1) * batch_size) % size) for i in range(n)]


def document_ids(input_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(doc_ids, position_ids)`` of packed (B, T) rows whose documents each end with EOS.

    A document runs up to and including its EOS; the next token starts a new one (with a tokenizer that adds
    BOS, that is the BOS). ``doc_ids`` counts the EOS tokens before each token of its row; ``position_ids``
    is the token's position inside its document (0 at each document start and at the row's first token,
    which may be in the middle of a document cut by the window)."""
    is_eos = input_ids == eos_id
    doc = is_eos.long().cumsum(1) - is_eos.long()
    starts = torch.zeros_like(is_eos)
    starts[:, 0] = True
    starts[:, 1:] = is_eos[:, :-1]
    t = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(1).values
    return doc, t - first


def add_document_ids(batch: dict[str, torch.Tensor], eos_id: int, positions: bool) -> dict[str, torch.Tensor]:
    """``batch`` with ``doc_ids`` (and, with ``positions``, ``position_ids``) from :func:`document_ids`."""
    doc, pos = document_ids(batch["input_ids"], eos_id)
    batch["doc_ids"] = doc
    if positions:
        batch["position_ids"] = pos
    return batch


class DocumentBatches:
    """A train loader whose batches also carry the document ids of ``add_document_ids`` (``data.document_mask``).
    Everything else -- ``state_dict``, ``load_state_dict``, ``cursor``, ... -- is the wrapped loader's."""

    def __init__(self, loader, eos_id: int, positions: bool):
        self.loader, self.eos_id, self.positions = loader, eos_id, positions

    def __iter__(self) -> DocumentBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return add_document_ids(next(self.loader), self.eos_id, self.positions)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loader"], name)
