"""``CheckpointManager(run_dir, states={...})``: a run's checkpoints, saved from and restored into its Stateful
parts (torchtitan's shape). Adding a part is one entry in ``states``; its key names its files (see parts.py).

The entry ``"trainer_state"`` holds the run's ``TrainState`` (llama_jreg/train/state.py): besides
``trainer_state.json`` the manager writes its ``wandb_run_id`` and ``data_fingerprint`` as files of their own,
refuses a restore whose data fingerprint differs, and reads the saved world size from it (a resume on another
number of ranks loads rank 0's loader state and re-seeds the RNG).
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_jreg import UserError
from llama_jreg.checkpoint.background import AsyncCheckpointer, Pending
from llama_jreg.checkpoint.collective import (
    CheckpointError,
    is_main,
    on_every_rank,
    on_main,
    rank_world,
)
from llama_jreg.checkpoint.commit import commit, failed, make_tmp
from llama_jreg.checkpoint.fileio import read_json, read_text, write_bytes
from llama_jreg.checkpoint.full import load_full, save_full
from llama_jreg.checkpoint.layout import FORMATS, checkpoint_format, checkpoints_dir, step_dir_name
from llama_jreg.checkpoint.manifest import hash_files, version_error
from llama_jreg.checkpoint.parts import TENSOR_PARTS
from llama_jreg.checkpoint.sharded import load_sharded, save_sharded
from llama_jreg.data.identity import RECORD_KEY as DATA_RECORD_KEY
from llama_jreg.data.tokenizer import load_tokenizer
from llama_jreg.distributed import barrier

TRAIN_STATE = "trainer_state"


@dataclass
class RunFiles:
    """What every checkpoint of a run carries besides its state: the resolved config and the tokenizer."""

    config_yaml: str = "{}\n"
    tokenizer_path: str | None = None

    def write(self, tmp: Path) -> None:
        """Rank 0: ``config.yaml`` and the tokenizer next to the weights (analysis commands and export-hf read
        it from there)."""
        write_bytes(tmp / "config.yaml", self.config_yaml.encode())
        if self.tokenizer_path:
            load_tokenizer(self.tokenizer_path).save_to(tmp)


@dataclass
class CheckpointManager:
    """A run's checkpoints: ``save(step)`` (collective; raises UserError on every rank when anything cannot be
    written or a weight is non-finite, earlier checkpoints untouched), ``restore(path)``, ``wait()`` for an
    asynchronous save in flight, ``close()``.

    ``fmt``: ``full`` | ``sharded``; ``background`` (sharded only): an ``AsyncCheckpointer``, so that ``save``
    returns once the state is staged and the checkpoint appears at the next ``save`` or ``wait``."""

    run_dir: Path
    states: dict
    fmt: str = "full"
    keep_last: int = 3
    run_files: RunFiles | None = None
    background: AsyncCheckpointer | None = None
    data_identity: Any = None  # data.identity.DataIdentity: the data files, recorded and checked by content
    remote: Any = None  # remote.RemoteCheckpoints: each committed checkpoint is uploaded there (trainer.ckpt_dir)

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown checkpoint format {self.fmt!r}")
        if self.background is not None and self.fmt != "sharded":
            raise ValueError("an asynchronous save needs the sharded format")
        if TRAIN_STATE not in self.states:
            raise ValueError(f"states needs a {TRAIN_STATE!r} entry (a TrainState)")
        self.run_files = self.run_files or RunFiles()
        self.tensors = {k: p for k, p in self.states.items() if isinstance(p, TENSOR_PARTS)}
        self.files = {k: p for k, p in self.states.items() if k not in self.tensors}

    @property
    def train_state(self):
        return self.states[TRAIN_STATE].obj

    # ------------------------------------------------------------------------------------------- save

    def save(self, step: int) -> Path:
        """Write ``checkpoints/step_XXXXXXXX`` atomically, then delete all but the newest ``keep_last``.
        Collective. Asynchronous: the previous save in flight is finalised first; returns once the state is
        staged (the path exists after the next ``save`` or ``wait``)."""
        if self.background is not None:
            self.background.wait(upload_later=True)  # at most one save in flight; its upload goes on behind
        final = checkpoints_dir(self.run_dir) / step_dir_name(step)
        tmp = None
        try:
            tmp = on_main(make_tmp, final, share=True)
            # the small files first: they describe this step even while the shards of an asynchronous save are
            # still being written and the loop moves on
            on_main(self._write_shared, tmp)
            rank = rank_world()[0]
            on_every_rank(lambda: [p.write(tmp, k, rank) for k, p in self.files.items() if p.per_rank])
            if self.background is not None:
                self.background.start(self.tensors, Pending(Path(self.run_dir), tmp, final, self.keep_last,
                                                                 remote=self.remote))
                return final
            if self.fmt == "full":
                save_full(tmp, step, self.tensors)
            else:
                save_sharded(tmp, self.tensors)
            files = hash_files(tmp)
            on_main(commit, Path(self.run_dir), tmp, final, self.fmt, files, self.keep_last)
            if self.remote is not None:  # then to object storage, manifest last (checkpoint/remote.py)
                on_main(self.remote.upload, final, self.keep_last, error=UserError)  # its own line
        except CheckpointError as e:
            if is_main() and tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise failed(final, str(e)) from None
        barrier()
        return final

    def _write_shared(self, tmp: Path) -> None:
        """Rank 0: the files of the rank-0 parts, the run files, the wandb run id and the data fingerprint."""
        if self.data_identity is not None:  # trainer_state.json records the data files by content
            self.train_state.data_files = self.data_identity.record()
        for key, part in self.files.items():
            if not part.per_rank:
                part.write(tmp, key, 0)
        self.run_files.write(tmp)
        write_bytes(tmp / "wandb_run_id", (str(self.train_state.wandb_run_id) + "\n").encode())
        write_bytes(tmp / "data_fingerprint", (str(self.train_state.data_fingerprint) + "\n").encode())

    # ------------------------------------------------------------------------------------------- restore

    def restore(self, path: Path) -> Path:
        """Load every part from ``path`` (either format, any world size). Collective. UserError when the
        checkpoint was written for other data or in a format version this code does not read."""
        path = Path(path)
        rank, world = rank_world()
        on_main(self._check, path, error=UserError)
        saved_world = int(read_json(path / f"{TRAIN_STATE}.json").get("world_size", 1))
        if checkpoint_format(path) == "sharded":
            load_sharded(path, self.tensors)
        else:
            load_full(path, self.tensors)
        if saved_world != world:
            # the loader's cursor is global (sample order does not depend on the world size), so rank 0's state
            # is valid for every rank of a new world size; the per-rank RNG streams cannot carry over exactly.
            warnings.warn(
                f"resuming a {saved_world}-process checkpoint with {world} processes: data order is kept, "
                "per-rank RNG state is re-seeded",
                stacklevel=2,
            )
        for key, part in self.files.items():
            part.read(path, key, rank, saved_world == world)
        barrier()
        return path

    def _check(self, path: Path) -> None:
        if err := version_error(path):
            raise UserError(err)
        saved_fp, fingerprint = read_text(path, "data_fingerprint"), self.train_state.data_fingerprint
        if self.data_identity is not None:  # by content; older checkpoints by their own rule (data/identity.py)
            saved = read_json(path / f"{TRAIN_STATE}.json").get(DATA_RECORD_KEY)
            self.data_identity.check(str(path), saved_fp, saved)
        elif saved_fp != fingerprint:
            raise UserError(
                f"resume={path}: the checkpoint was trained on other data (fingerprint {saved_fp}, now "
                f"{fingerprint}); use the same data config, or start a new run.dir"
            )

    # ------------------------------------------------------------------------------------------- the end

    def wait(self) -> Path | None:
        """Finalise the asynchronous save in flight, if any (collective)."""
        return self.background.wait() if self.background is not None else None

    def close(self) -> None:
        """At the end of a run that failed: leave a save in flight unfinished (removed at the next start)."""
        if self.background is not None:
            self.background.close()
