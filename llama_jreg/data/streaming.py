"""Streaming mode (``data.streaming=true``): tokenise while reading a ``datasets`` streaming IterableDataset.

Each rank reads its own part of the stream (``datasets.distributed.split_dataset_by_node``), tokenises each
document (+ EOS) and packs the token stream into windows of ``seq_len + 1`` tokens (consecutive windows share
one token, as in the prepared loader). Validation holds out the first documents of the (unsplit) stream, as
many as it takes to fill ``data.val_sequences`` windows; training skips them.

State: the dataset's ``state_dict()`` taken *before* the document being packed, the position inside that
document, the (at most ``seq_len``) tokens already gathered for the next window, and the epoch. Resuming
re-reads that one document and continues exactly. Because each rank reads a different part of the stream,
the state is per rank and a resume must use the same world size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llama_jreg import UserError
from llama_jreg.data.loader import LOADER_VERSION
from llama_jreg.data.sources import TextSource
from llama_jreg.data.tokenizer import Tokenizer


def holdout_validation(source: TextSource, tok: Tokenizer, seq_len: int, sequences: int) -> tuple[int, np.ndarray]:
    """Read the first documents of the stream until they fill ``sequences`` windows.

    Returns ``(number of documents held out, their tokens)``.
    """
    need = sequences * seq_len + 1
    tokens: list[int] = []
    docs = 0
    for text in source.documents():
        tokens += tok.encode_document(text)
        docs += 1
        if len(tokens) >= need:
            break
    return docs, np.asarray(tokens, dtype=np.int64)


class StreamingLoader:
    """This rank's infinite iterator of packed micro-batches from a streaming source."""

    def __init__(self, make_dataset: Callable[[], Any], tok: Tokenizer, *, seq_len: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, fingerprint: str = "", read_error=None):
        self.make_dataset, self.tok, self.seq_len, self.batch_size = make_dataset, tok, seq_len, batch_size
        self.rank, self.world_size, self.fingerprint = rank, world_size, fingerprint
        self.read_error = read_error or (lambda e: e)
        self.epoch = 0
        self._carry: list[int] = []  # tokens gathered for the next window
        self._doc: list[int] = []  # the document being packed
        self._pos = 0  # position in self._doc
        self._doc_state: dict | None = None  # dataset state before self._doc (None: start of the stream)
        self._restart(None)

    def _restart(self, state: dict | None) -> None:
        """Fresh dataset + iterator, starting at ``state`` (None: the beginning of the stream)."""
        self._ds = self.make_dataset()
        if state is not None:
            self._ds.load_state_dict(copy.deepcopy(state))
        self._start_state = copy.deepcopy(state)
        self._iter = iter(self._ds)
        self._pulled = 0

    def _next_doc(self) -> None:
        before = copy.deepcopy(self._ds.state_dict()) if self._pulled else self._start_state
        try:
            row = next(self._iter)
        except StopIteration:
            if self._pulled == 0 and self._start_state is None:
                raise UserError("this rank's share of the stream is empty; use more data or fewer ranks") from None
            self.epoch += 1
            self._restart(None)
            return self._next_doc()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self.read_error(e) from None
        self._pulled += 1
        self._doc_state = before
        self._doc = self.tok.encode_document(row["text"] or "")
        self._pos = 0

    def _next_window(self) -> list[int]:
        want = self.seq_len + 1
        while len(self._carry) < want:
            if self._pos >= len(self._doc):
                self._next_doc()
            take = self._doc[self._pos:self._pos + want - len(self._carry)]
            self._carry += take
            self._pos += len(take)
        window, self._carry = self._carry, self._carry[-1:]
        return window

    def __iter__(self) -> StreamingLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        windows = torch.tensor([self._next_window() for _ in range(self.batch_size)], dtype=torch.long)
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "streaming", "version": LOADER_VERSION, "fingerprint": self.fingerprint,
                "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size,
                "dataset": copy.deepcopy(self._doc_state), "doc_pos": self._pos, "carry": list(self._carry),
                "has_doc": bool(self._doc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "streaming":
            raise UserError("loader state is not from a streaming run; resume with the same data.streaming setting")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"checkpoint was trained on data {state.get('fingerprint')} but the config gives "
                            f"{self.fingerprint}; resume with the original data config or start a new run")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise UserError(f"streaming state is for rank {state['rank']} of {state['world_size']}, this is rank "
                            f"{self.rank} of {self.world_size}; resume streaming runs with the same number of processes")
        self.epoch = int(state["epoch"])
        self._restart(state["dataset"])
        self._carry = [int(t) for t in state["carry"]]
        self._doc, self._pos = [], 0
        if state["has_doc"]:
            self._next_doc()  # re-read the document that was being packed
            self._pos = int(state["doc_pos"])

