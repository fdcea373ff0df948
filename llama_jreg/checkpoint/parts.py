"""The Stateful parts of a checkpoint and how each is stored. A part wraps an object with ``state_dict`` /
``load_state_dict``; its entry's key in ``CheckpointManager(states={...})`` names its files:

- ``JsonPart(obj)``: one JSON file by rank 0, ``<key>.json`` (``scheduler.json``, ``trainer_state.json``);
- ``RankPart(obj)``: one file per rank, ``<key>_rank<r>.json`` or ``.pt`` (``loader_rank0.json``,
  ``rng_rank0.pt``); a resume on another number of ranks loads rank 0's file (``other_world="rank0"``: a
  global state such as the loader's cursor) or nothing (``"skip"``: the RNG streams are re-seeded);
- ``ModelPart(model)`` and ``OptimizerPart(model, optimizer)``: tensors, under their key in the DCP
  directory ``state/`` (sharded format) or in ``model.safetensors`` / ``optimizer.pt`` (full format).

``RNG`` makes the process's python / numpy / torch / cuda generators one Stateful object.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llama_jreg.checkpoint.fileio import fsync_file, load_plain, read_json, umask, write_json


class RNG:
    """Python / numpy / torch / cuda RNG state of this process (tensors and plain containers: ``weights_only``)."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class JsonPart:
    """A Stateful object stored as ``<key>.json``, written by rank 0."""

    per_rank = False

    def __init__(self, obj):
        self.obj = obj

    def file(self, key: str, rank: int) -> str:
        return f"{key}.json"

    def write(self, tmp: Path, key: str, rank: int) -> None:
        write_json(tmp / self.file(key, rank), self.obj.state_dict())

    def read(self, path: Path, key: str, rank: int, same_world: bool) -> None:
        self.obj.load_state_dict(read_json(path / self.file(key, rank)))


class RankPart:
    """A Stateful object of every rank, stored as ``<key>_rank<r>.json`` (or ``.pt`` with ``suffix=".pt"``:
    torch.save, loaded ``weights_only``). ``other_world``: what a resume on another number of ranks loads,
    ``"rank0"`` (rank 0's file, on every rank) or ``"skip"`` (nothing); a missing file is skipped too."""

    per_rank = True

    def __init__(self, obj, suffix: str = ".json", other_world: str = "rank0", translate=None):
        if other_world not in ("rank0", "skip"):
            raise ValueError(f"other_world={other_world!r}")
        self.obj, self.suffix, self.other_world = obj, suffix, other_world
        self.translate = translate or (lambda state: state)  # an older checkpoint's state -> today's

    def file(self, key: str, rank: int) -> str:
        return f"{key}_rank{rank}{self.suffix}"

    def write(self, tmp: Path, key: str, rank: int) -> None:
        if self.suffix == ".pt":
            torch.save(self.obj.state_dict(), tmp / self.file(key, rank))
        else:
            write_json(tmp / self.file(key, rank), self.obj.state_dict())

    def read(self, path: Path, key: str, rank: int, same_world: bool) -> None:
        if not same_world:
            if self.other_world == "skip":
                return
            rank = 0
        f = path / self.file(key, rank)
        if self.suffix == ".pt":
            if f.is_file():
                self.obj.load_state_dict(self.translate(load_plain(f)))
        else:
            self.obj.load_state_dict(self.translate(read_json(f)))


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )

    return StateDictOptions(**kw)


FULL_OUT = {"full_state_dict": True, "cpu_offload": True}  # gathered, on rank 0, in CPU memory


class ModelPart:
    """The model's weights (a plain, DDP-unwrapped or FSDP2 ``Llama``). Full format: ``model.safetensors``, a
    tied LM head stored once (as ``tok_embeddings.weight``) and re-tied on load."""

    full_file = "model.safetensors"

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.tied = getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings

    def state_dict(self, full: bool = False) -> dict:
        """This rank's (sharded) state dict, or with ``full`` the whole one on rank 0 (collective)."""
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,  # deferred: ~0.8 s (see above)
        )

        return get_model_state_dict(self.model, options=_options(**FULL_OUT) if full else None)

    def load_state_dict(self, sd: dict, full: bool = False, broadcast: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,  # deferred: ~0.8 s (see above)
        )

        options = _options(full_state_dict=True, broadcast_from_rank0=broadcast) if full else None
        set_model_state_dict(self.model, sd, options=options)

    def nonfinite(self, sd: dict) -> list[str]:
        """Names of floating tensors with a non-finite value in this rank's part of ``sd`` (its DTensor shard)."""
        bad = []
        for k, v in sd.items():
            local = v.to_local() if hasattr(v, "to_local") else v
            if isinstance(local, torch.Tensor) and local.is_floating_point() and not torch.isfinite(local).all():
                bad.append(k)
        return bad

    def write_full(self, tmp: Path, sd: dict, step: int) -> None:
        if self.tied:
            sd.pop("output.weight", None)  # tied: stored once as tok_embeddings.weight
        f = tmp / self.full_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(f), metadata={"format": "pt", "step": str(step)})
        os.chmod(f, 0o666 & ~umask())  # safetensors creates it 0600
        fsync_file(f)

    def read_full(self, path: Path) -> dict:
        sd = load_file(str(path / self.full_file))
        if "output.weight" not in sd and self.tied:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        return sd

    def shapes(self, sd: dict) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in sd.items()}

    def fits(self, path: Path, got: dict[str, tuple]) -> str | None:
        """A clear error when the checkpoint's model shapes ``got`` differ from the model's (global shapes)."""
        want = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}  # global shapes, also for DTensors
        if want == got:
            return None
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        return (f"resume={path}: the checkpoint's weights do not fit model={getattr(self.model.cfg, 'name', '?')} "
                f"as configured (first difference: {diff[0]}: checkpoint {got.get(diff[0])}, model "
                f"{want.get(diff[0])}); resume with the model settings of its config.yaml")


class OptimizerPart:
    """The optimizer's state, keyed by parameter name (so it reshards). Full format: ``optimizer.pt``, full
    (unsharded) tensors and plain containers, loaded ``weights_only``."""

    full_file = "optimizer.pt"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self, full: bool = False) -> dict:
        """This rank's state (initialising AdamW's state when empty), or with ``full`` the whole one on rank 0."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict  # deferred: ~0.8 s

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options(**FULL_OUT) if full else None)

    def load_state_dict(self, sd: dict, full: bool = False, broadcast: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict  # deferred: ~0.8 s

        options = _options(full_state_dict=True, broadcast_from_rank0=broadcast) if full else None
        set_optimizer_state_dict(self.model, self.optimizer, sd, options=options)

    def nonfinite(self, sd: dict) -> list[str]:
        return []

    def write_full(self, tmp: Path, sd: dict, step: int) -> None:
        torch.save(sd, tmp / self.full_file)
        fsync_file(tmp / self.full_file)

    def read_full(self, path: Path) -> dict:
        return load_plain(path / self.full_file)

    def shapes(self, sd: dict) -> dict:
        return {}

    def fits(self, path: Path, got: dict) -> str | None:
        return None  # the model's check covers the parameters the optimizer state is keyed by


TENSOR_PARTS = (ModelPart, OptimizerPart)
