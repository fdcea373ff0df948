"""Asynchronous saves (``trainer.async_checkpoint=true``, sharded format only).

``AsyncCheckpointer.start`` copies (stages) every rank's tensor parts into CPU buffers (allocated once, reused by
every later save) and returns; a background thread per rank writes the shards (``dcp.async_save`` on a gloo
process group of its own, so its collectives never interleave with the training loop's) and hashes its share of
the files. The manifest and the rename happen only in ``wait`` (the next save, the end of training, a signal
stop), after every rank's background write has completed; so a process killed during the background write
leaves only the ``.tmp-`` dir and resume takes the previous complete checkpoint. At most one save is in flight.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llama_jreg import UserError
from llama_jreg.checkpoint.collective import (
    CheckpointError,
    gather_on_every_rank,
    is_main,
    on_every_rank,
    on_main,
    rank_world,
    write_errors,
)
from llama_jreg.checkpoint.commit import commit, failed
from llama_jreg.checkpoint.fileio import fsync_file
from llama_jreg.checkpoint.layout import SHARDED_DIR
from llama_jreg.checkpoint.manifest import hash_share, largest_first, merge
from llama_jreg.checkpoint.sharded import sharded_state
from llama_jreg.distributed import barrier, is_distributed


@dataclass
class Pending:
    """A checkpoint whose shards are being written in the background."""

    run_dir: Path
    tmp: Path
    final: Path
    keep_last: int
    future: Future | None = None  # -> this rank's {file: {sha256, bytes}} share, or raises
    remote: Any = None  # remote.RemoteCheckpoints: uploaded there once committed


class AsyncCheckpointer:
    """Holds the one sharded checkpoint save in flight of a training run.

    ``start`` (collective) stages the state and starts the background write; ``wait()`` (collective) blocks until
    this rank's background write and hashing are done, then all ranks agree and rank 0 writes the manifest,
    renames and prunes: only then does the checkpoint exist. ``close()`` (local, for a run ending with an error)
    waits for the background thread without finalising: the ``.tmp-`` dir stays and is removed at the next
    start, as after a kill."""

    def __init__(self):
        self.pending: Pending | None = None
        self._pg = None  # a gloo group of its own: the background collectives never meet the loop's
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-jreg-ckpt")
        self._staged = None  # CPU copies of this rank's tensor parts, reused by every save
        self._staged_layout = None
        self._upload: Future | None = None  # rank 0: the upload of the last committed checkpoint (trainer.ckpt_dir)
        self._uploading: Path | None = None
        # one process: DCP warns (from its writer thread) that it saves without a process group, as meant. A
        # filter for that message alone, set once: catch_warnings() is not thread-safe
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

    def stage(self, state: dict) -> dict:
        """Copy ``state`` into CPU buffers kept from one save to the next (allocated at the first save, or
        when the layout changes; pinned when CUDA is there). Reusing them makes a save's copy several times
        cheaper than into fresh memory (page faults; docs/benchmarks.md), at the price of one resident copy of
        the state. Safe: the next save waits for the previous write before copying."""
        from torch.distributed._state_dict_utils import (  # deferred: ~0.8 s to import (scripts/bench_imports.py)
            _copy_state_dict,
            _create_cpu_state_dict,
        )

        layout = _layout(state)
        if self._staged is None or layout != self._staged_layout:
            self._staged = None
            self._staged = _create_cpu_state_dict(state, pin_memory=torch.cuda.is_available())
            self._staged_layout = layout
        return _copy_state_dict(state, self._staged, type_check=False)

    def process_group(self):
        if self._pg is None and is_distributed():
            self._pg = dist.new_group(backend="gloo")  # collective: every rank saves at the same step
        return self._pg

    def start(self, parts: dict, pending: Pending) -> None:
        """Stage this rank's tensor parts in CPU memory and start writing them to ``pending.tmp`` in the
        background (collective). CheckpointError on every rank when the start failed."""
        import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)

        state = sharded_state(parts)
        pg = self.process_group()
        box: list = []

        def begin() -> None:
            writer = dcp.FileSystemWriter(str(pending.tmp / SHARDED_DIR), sync_files=True)
            # staged here: every tensor is copied into CPU memory before this returns, so the next optimizer
            # step cannot change what is written
            staged = self.stage(state)
            response = dcp.async_save(staged, storage_writer=writer, process_group=pg, no_dist=not is_distributed(),
                                      async_stager=_already_staged())
            box.append(getattr(response, "upload_completion", response))

        try:
            on_every_rank(begin)
        except CheckpointError:
            if box:
                with contextlib.suppress(*write_errors()):
                    box[0].result()
            raise
        pending.future = self._executor.submit(_finish, pending.tmp, box[0], pg)
        self.pending = pending

    def wait(self, upload_later: bool = False) -> Path | None:
        """Finalise the save in flight (if any) and return its path. Collective. Raises UserError on every rank
        when any rank failed (the ``.tmp-`` dir is removed; earlier checkpoints are intact). With a
        ``trainer.ckpt_dir`` the committed checkpoint is then uploaded: in the background with ``upload_later``
        (a save is about to start; the upload is awaited at the next ``wait``), else before returning."""
        self._finish_upload()
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        try:
            files = merge(gather_on_every_rank(pending.future.result))
            on_main(commit, pending.run_dir, pending.tmp, pending.final, "sharded", files, pending.keep_last)
            if pending.remote is not None and upload_later:
                if is_main():  # the next save's background write queues behind it (one worker thread)
                    self._upload = self._executor.submit(pending.remote.upload, pending.final, pending.keep_last)
                self._uploading = pending.final
            elif pending.remote is not None:  # then to object storage, manifest last (checkpoint/remote.py)
                on_main(pending.remote.upload, pending.final, pending.keep_last, error=UserError)
        except CheckpointError as e:
            if is_main():
                shutil.rmtree(pending.tmp, ignore_errors=True)
            raise failed(pending.final, str(e)) from None
        barrier()
        return pending.final

    def _finish_upload(self) -> None:
        """Collective: the background upload of the last committed checkpoint has ended; UserError on every
        rank when it failed (the checkpoint is intact on local disk)."""
        upload, final = self._upload, self._uploading
        self._upload = self._uploading = None
        if final is None:
            return
        on_main(lambda: upload.result() if upload is not None else None, error=UserError)  # upload's own line

    def close(self) -> None:
        """Wait for this rank's background thread (not collective, nothing finalised); stop the thread."""
        if self._upload is not None:
            with contextlib.suppress(Exception):  # the run is ending with an error already
                self._upload.result()
        pending, self.pending = self.pending, None
        if pending is not None:
            with contextlib.suppress(*write_errors()):  # the run is ending with an error already
                pending.future.result()
            warnings.warn(f"checkpoint {pending.final.name} was still being written when the run stopped; it is "
                          "discarded (resume=auto takes the previous complete checkpoint)", stacklevel=2)
        self._executor.shutdown(wait=True)


def _finish(tmp: Path, upload, pg) -> dict:
    """Background: the write's outcome (agreed over the checkpoint group), then this rank's hash share."""
    rank, world = rank_world()

    def done() -> None:
        upload.result()
        if rank == 0:
            fsync_file(tmp / SHARDED_DIR / ".metadata")

    gather_on_every_rank(done, group=pg)  # raises CheckpointError (on every rank) when any write failed
    names = [largest_first(tmp) if rank == 0 else None]
    if is_distributed():
        dist.broadcast_object_list(names, src=0, group=pg)
    return hash_share(tmp, names[0], rank, world)


def _layout(obj, path: str = "") -> list:
    """(path, shape, dtype) of every tensor of a nested state dict (staging buffers fit when this is equal)."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj, key=str) for x in _layout(obj[k], f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [x for i, v in enumerate(obj) for x in _layout(v, f"{path}/{i}")]
    if isinstance(obj, torch.Tensor):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return [(path, tuple(obj.shape), tuple(local.shape), obj.dtype)]
    return []


def _already_staged():
    """A ``dcp.async_save`` stager for a state dict that ``AsyncCheckpointer.stage`` already copied (built on
    use: torch.distributed.checkpoint is imported only when a checkpoint is written)."""
    from torch.distributed.checkpoint.staging import (
        AsyncStager,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )

    class AlreadyStaged(AsyncStager):
        _synchronize_after_execute = False

        def stage(self, state_dict):
            return state_dict

        def synchronize_staging(self) -> None:
            pass

        def close(self) -> None:
            pass

    return AlreadyStaged()
