"""The sharded format: ``state/``, a torch.distributed.checkpoint (DCP) directory holding every tensor part under
its key (``{"model": ..., "optim": ...}``); every rank writes its own shards (``__<rank>_0.distcp``), rank 0 the
global ``.metadata``. Loading reshards to the world size of the resumed run; ``read_model_state`` consolidates
the model in one process (analysis commands, export-hf)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from llama_jreg import UserError
from llama_jreg.checkpoint.collective import describe, is_main, on_every_rank, on_main
from llama_jreg.checkpoint.fileio import fsync_file
from llama_jreg.checkpoint.full import refuse_nonfinite
from llama_jreg.checkpoint.layout import SHARDED_DIR, checkpoint_format
from llama_jreg.checkpoint.manifest import MANIFEST, version_error
from llama_jreg.distributed import is_distributed


def sharded_state(parts: dict) -> dict:
    """{key: this rank's state dict} of every tensor part, refused (on every rank) when a weight is
    non-finite. Collective."""
    sds = {key: part.state_dict() for key, part in parts.items()}
    on_every_rank(refuse_nonfinite, parts, sds)
    return sds


def save_sharded(tmp: Path, parts: dict) -> None:
    """Every rank writes its shards of every tensor part into ``tmp/state`` (DCP). Collective; CheckpointError
    on every rank when any failed."""
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)

    state = sharded_state(parts)

    def write() -> None:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp / SHARDED_DIR), sync_files=True))
        if is_main():
            fsync_file(tmp / SHARDED_DIR / ".metadata")

    on_every_rank(write)  # DCP raises CheckpointException (on every rank) for any write failure


def _shapes(path: Path) -> dict[str, dict[str, tuple]]:
    """{part key: {tensor name: global shape}} of a sharded checkpoint (from its DCP metadata)."""
    from torch.distributed.checkpoint import (
        FileSystemReader,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path / SHARDED_DIR)).read_metadata()
    out: dict[str, dict[str, tuple]] = {}
    for k, m in md.state_dict_metadata.items():
        key, _, name = k.partition(".")
        if isinstance(m, TensorStorageMetadata):
            out.setdefault(key, {})[name] = tuple(m.size)
    return out


def load_sharded(path: Path, parts: dict) -> None:
    """Every rank reads the parts of every shard that its own (new) sharding needs, so a checkpoint of any
    world size loads at any other. Collective; UserError on every rank when the weights do not fit."""
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)

    def check() -> None:
        try:
            shapes = _shapes(path)
        except Exception as e:  # noqa: BLE001 - unreadable metadata
            raise UserError(f"resume={path}: unreadable sharded checkpoint ({describe(e)})") from None
        for key, part in parts.items():
            if err := part.fits(path, shapes.get(key, {})):
                raise UserError(err)

    on_main(check, error=UserError)
    state = {key: part.state_dict() for key, part in parts.items()}  # the target layout (initialises AdamW)
    with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(path / SHARDED_DIR)), no_dist=not is_distributed())
    for key, part in parts.items():
        part.load_state_dict(state[key])


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full model state_dict (CPU tensors, names as in ``Llama.state_dict()``) of one checkpoint dir, in
    either format, in this process alone (no process group needed; a sharded checkpoint of any world size is
    consolidated in memory, nothing written). With tied embeddings ``output.weight`` may be absent (the full
    format stores the tied head once; re-tie it from ``tok_embeddings.weight``). Raises UserError when ``path``
    holds no model."""
    path = Path(path)
    fmt = checkpoint_format(path)
    if fmt is not None and (path / MANIFEST).is_file() and (err := version_error(path, use="read")):
        raise UserError(err)
    if fmt == "full":
        return load_file(str(path / "model.safetensors"))
    if fmt is None:
        raise UserError(f"{path} is not a checkpoint: no model.safetensors and no {SHARDED_DIR}/.metadata")
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path / SHARDED_DIR))
    md = reader.read_metadata()
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
          if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(sd, storage_reader=reader, no_dist=True)
    return {k[len("model."):]: v for k, v in sd.items()}

