"""The full format: every tensor part gathered on rank 0 and written by it as one file (``model.safetensors``,
``optimizer.pt``); on load rank 0 reads the files and the state_dict API broadcasts / shards them to every rank
(any world size)."""

from __future__ import annotations

from pathlib import Path

from llama_jreg import UserError
from llama_jreg.checkpoint.collective import on_main
from llama_jreg.distributed import is_distributed


def refuse_nonfinite(parts: dict, sds: dict) -> None:
    """Raise when a weight of this rank's part of ``sds`` is non-finite (a checkpoint never holds NaN/inf)."""
    bad = [name for key, part in parts.items() for name in part.nonfinite(sds[key])]
    if bad:
        raise ValueError(f"refusing to save non-finite weights ({', '.join(bad[:3])}...)")


def save_full(tmp: Path, step: int, parts: dict) -> None:
    """Gather every tensor part on rank 0 (collective), which writes its file. CheckpointError on every rank
    when rank 0 fails (or a weight is non-finite)."""
    sds = {key: part.state_dict(full=True) for key, part in parts.items()}

    def write() -> None:
        refuse_nonfinite(parts, sds)
        for key, part in parts.items():
            part.write_full(tmp, sds[key], step)

    on_main(write)


def load_full(path: Path, parts: dict) -> None:
    """Rank 0 reads every tensor part's file and checks the shapes; every rank loads (collective). UserError on
    every rank when the weights do not fit the model."""
    bcast = is_distributed()
    sds: dict = {key: {} for key in parts}

    def read() -> None:
        for key, part in parts.items():
            sds[key] = part.read_full(path)
        for key, part in parts.items():  # a clear error (on every rank) rather than a size-mismatch traceback
            if err := part.fits(path, part.shapes(sds[key])):
                raise UserError(err)

    if bcast:
        on_main(read, error=UserError)
    else:
        read()
    for key, part in parts.items():
        part.load_state_dict(sds[key], full=True, broadcast=bcast)
