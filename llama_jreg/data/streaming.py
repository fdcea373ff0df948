"""Streaming mode (``data.streaming=true``): tokenise while reading a ``datasets`` streaming IterableDataset.

The token stream is the prepared one (``llama_jreg/data/prepare.py``): every non-empty document, tokenised
with EOS at its end (BOS in front when the tokenizer adds one), in source order; it is packed into windows of
``seq_len + 1`` tokens (consecutive windows share one token, as in the prepared loader).

Validation is held out by tokens, as preparation does: the first ``V`` tokens of the stream, training the
rest, starting at token ``V`` (inside a document if that is where it falls). A stream is read up to
``2 * (data.val_sequences * data.seq_len + 1)`` tokens to decide ``V``: if it is at least that long,
``V = data.val_sequences * data.seq_len + 1`` -- the prepared rule whenever ``data.val_fraction * N`` is not
larger (a stream's length ``N`` is not known, so ``data.val_fraction`` does not apply to a long stream);
if it ends sooner, its length is known and ``V`` is exactly the prepared rule (``validation_tokens``, which
also refuses a stream too short for one training and one validation sequence). So one plain ``.txt`` file
(one document) trains in streaming mode on the same tokens as prepared, and validates on the same tokens.
Every rank computes the same ``V`` from the same head of the stream.

The order is global, as in :class:`~llama_jreg.data.loader.GlobalOrderLoader`: every rank reads and packs
the whole training stream, and the windows are dealt out in turns of ``W * B`` (``W`` ranks, micro-batch
``B``): rank ``r`` keeps windows ``[r*B, (r+1)*B)`` of each turn and steps over the others. Every rank thus
stands at the same place of the stream after each micro-batch, and 1 rank doing 2 micro-batches sees exactly
the windows 2 ranks see in one. The price: each rank tokenises all the text (``W`` times the tokenisation of
a split stream; still far faster than training consumes it).

State (the same on every rank): the dataset's ``state_dict()`` taken *before* the document being packed, the
position inside that document (a fresh stream -- and every new epoch -- starts at the training part's first
token, ``start_pos`` of its first document), the (at most ``seq_len``) tokens already gathered for the next
window, the epoch and ``cursor``, the number of windows all ranks have consumed. Resuming re-reads that one
document and continues exactly, with any number of processes and any ``data.micro_batch_size`` (the next turn
starts where the last one ended).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from llama_jreg import UserError
from llama_jreg.data.prepare import check_split_keys, validation_tokens
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import TextSource
from llama_jreg.data.tokenizer import Tokenizer

# 3: validation held out by tokens (the prepared rule), empty documents skipped as in preparation;
# 2: one global order dealt out to the ranks (1: a part of the stream per rank)
STREAMING_VERSION = 3


def is_document(text: str | None) -> bool:
    """Whether a row's text is a document of the token stream (preparation skips empty / blank ones too)."""
    return bool(text) and not text.isspace()


def _row_tokens(source: TextSource, tok: Tokenizer):
    """The tokens of each row of the stream in order (``[]`` for a row that is no document)."""
    it = iter(source.dataset())
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise source.read_error(e) from None
        yield tok.encode_document(row["text"]) if is_document(row["text"]) else []


def holdout_validation(source: TextSource, tok: Tokenizer, cfg: DataConfig) -> tuple[int, int, np.ndarray]:
    """Hold out the first ``V`` tokens of the stream for validation (see the module docstring).

    Returns ``(rows, pos, tokens)``: training starts at token ``pos`` of row ``rows`` (0-based: ``rows`` rows
    of the dataset come entirely before it) and ``tokens`` are the ``V`` validation tokens."""
    check_split_keys(cfg)
    window = cfg.val_sequences * cfg.seq_len + 1
    lengths: list[int] = []
    tokens: list[int] = []
    for ids in _row_tokens(source, tok):
        lengths.append(len(ids))
        tokens += ids
        if len(tokens) >= 2 * window:
            nval = window
            break
    else:  # the whole stream is known: the prepared rule, exactly
        nval = validation_tokens(len(tokens), cfg, source.describe())
    ends = np.cumsum(lengths)
    rows = int(np.searchsorted(ends, nval, side="right"))  # the row holding token nval
    pos = nval - int(ends[rows] - lengths[rows])
    return rows, pos, np.asarray(tokens[:nval], dtype=np.int64)


class StreamingLoader:
    """This rank's infinite iterator of packed micro-batches from a streaming source (see the module docstring)."""

    def __init__(self, make_dataset: Callable[[], Any], tok: Tokenizer, *, seq_len: int, batch_size: int,
                 shard: tuple[int, int] = (0, 1), fingerprint: str = "", read_error=None, start_pos: int = 0):
        rank, world_size = shard  # this process's rank and the number of ranks
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.make_dataset, self.tok, self.seq_len, self.batch_size = make_dataset, tok, seq_len, batch_size
        self.rank, self.world_size, self.fingerprint = rank, world_size, fingerprint
        self.read_error = read_error or (lambda e: e)
        self.start_pos = start_pos  # where training starts in the first document of the dataset
        self.epoch = 0
        self.cursor = 0  # windows consumed by all ranks together
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
        self._pulled = 0  # rows pulled from this dataset
        self._docs = 0  # documents among them

    def _next_doc(self) -> None:
        """Move to the next document (rows that are no document are stepped over, as preparation does)."""
        while True:
            before = copy.deepcopy(self._ds.state_dict()) if self._pulled else self._start_state
            try:
                row = next(self._iter)
            except StopIteration:
                if self._start_state is None and self._docs == 0:
                    raise UserError("the stream holds no training document after the validation tokens; add "
                                    "text or lower data.val_sequences") from None
                self.epoch += 1
                self._restart(None)
                continue
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001
                raise self.read_error(e) from None
            self._pulled += 1
            if is_document(row["text"]):
                break
        first = self._docs == 0 and self._start_state is None  # the training part's first document
        self._docs += 1
        self._doc_state = before
        self._doc = self.tok.encode_document(row["text"])
        self._pos = self.start_pos if first else 0

    def _next_window(self, keep: bool = True) -> list[int]:
        """The next window of the stream (``keep=False``: step over it, returning nothing)."""
        want = self.seq_len + 1
        while len(self._carry) < want:
            if self._pos >= len(self._doc):
                self._next_doc()
            take = self._doc[self._pos:self._pos + want - len(self._carry)]
            self._carry += take
            self._pos += len(take)
        window, self._carry = self._carry, self._carry[-1:]
        return window if keep else []

    def __iter__(self) -> StreamingLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        B = self.batch_size
        for _ in range(self.rank * B):  # the windows of the ranks before this one
            self._next_window(keep=False)
        windows = torch.tensor([self._next_window() for _ in range(B)], dtype=torch.long)
        for _ in range((self.world_size - self.rank - 1) * B):  # ... and after it
            self._next_window(keep=False)
        self.cursor += self.world_size * B
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "streaming", "version": STREAMING_VERSION, "fingerprint": self.fingerprint,
                "epoch": self.epoch, "cursor": self.cursor, "world_size": self.world_size,
                "batch_size": self.batch_size, "dataset": copy.deepcopy(self._doc_state), "doc_pos": self._pos,
                "carry": list(self._carry), "has_doc": bool(self._doc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "streaming":
            raise UserError("loader state is not from a streaming run; resume with the same data.streaming setting")
        if state.get("fingerprint") != self.fingerprint or state.get("version") != STREAMING_VERSION:
            raise UserError(f"checkpoint was trained on data {state.get('fingerprint')} but the config gives "
                            f"{self.fingerprint}; resume with the original data config or start a new run")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._restart(state["dataset"])
        self._carry = [int(t) for t in state["carry"]]
        self._doc, self._pos = [], 0
        if state["has_doc"]:
            self._next_doc()  # re-read the document that was being packed
            self._pos = int(state["doc_pos"])
