"""Checkpoints: atomic save (full or sharded), keep-last-k, discovery for ``resume=auto``, verified load.

Two formats (``trainer.checkpoint_format``: ``sharded`` | ``full`` | ``auto`` = sharded under ``parallel=fsdp``,
full otherwise). Resume reads whichever format a checkpoint has, at any world size. Layout of
``<run.dir>/checkpoints/step_XXXXXXXX/`` (8-digit optimizer step)::

    model.safetensors     full: unwrapped Llama state_dict, full tensors (gathered on rank 0 under FSDP2); a
                          tied LM head is stored once (as tok_embeddings.weight) and re-tied on load
    optimizer.pt          full: AdamW state, full (unsharded) and keyed by parameter name; torch.save of
                          tensors and plain containers only, loaded with ``weights_only=True``
    state/                sharded: a torch.distributed.checkpoint (DCP) directory holding {"model": Llama
                          state_dict, "optim": AdamW state keyed by parameter name}; every rank writes its own
                          shards (``__<rank>_0.distcp``) in parallel, rank 0 the global ``.metadata``. Loading
                          reshards to the world size of the resumed run; ``read_model_state`` consolidates the
                          model in one process (analysis commands, export-hf)
    scheduler.json        the schedule's state
    trainer_state.json    step, tokens, non-finite counters, world size, wandb run id, data fingerprint, and
                          ``data_files``: [path or URL, sha256 or ETag] of every data file (data/identity.py)
    rng_rank{r}.pt        python / numpy / torch / cuda RNG state of rank r (weights_only)
    loader_rank{r}.json   the data loader state of rank r
    config.yaml           the resolved config of the run that wrote it
    tokenizer.model       copy of the SentencePiece model (when the data has one), or tokenizer.json +
                          tokenizer_config.json for a Hugging Face tokenizer
    wandb_run_id          the wandb run id (a resumed run continues the same wandb run)
    data_fingerprint      the data bundle's fingerprint (a resume with other data fails loudly)
    manifest.json         sha256 and size of every file above (paths relative to the checkpoint, so also
                          ``state/...``); written last. The ranks hash the files in parallel

Asynchronous save (``trainer.async_checkpoint=true``, sharded format only): ``save_checkpoint(..., background=
AsyncCheckpointer())`` writes the small files, copies (stages) every rank's model and optimizer shards into
CPU buffers (allocated once, reused by every later save) and returns; a background thread per rank writes the shards (``dcp.async_save`` on a gloo
process group of its own, so its collectives never interleave with the training loop's) and hashes its share
of the files. The manifest and the rename happen only in ``AsyncCheckpointer.wait`` (the next save, the end
of training, a signal stop), after every rank's background write has completed; so a process killed during
the background write leaves only the ``.tmp-`` dir and resume takes the previous complete checkpoint. At most
one save is in flight.

A checkpoint is complete or absent: everything is written to ``step_XXXXXXXX.tmp-<pid>`` and renamed at the
end; keep-last deletion renames to ``.old-<pid>`` before deleting. ``resume=auto`` takes the newest directory
whose manifest checks out (skipping broken ones with a warning). Rank 0 writes the shared files; every rank
writes its own rng/loader files (and, sharded, its model/optimizer shards); all ranks agree on success or
failure (no rank hangs when another fails). The checkpoint directory must be on a file system every rank can
see (as usual for multi-node training).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from llama_jreg import UserError
from llama_jreg.data.identity import RECORD_KEY as DATA_RECORD_KEY
from llama_jreg.data.tokenizer import load_tokenizer
from llama_jreg.files import sha256_file
from llama_jreg.train.distributed import barrier, broadcast_object, is_distributed

STEP_RE = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
SHARDED_DIR = "state"  # the DCP directory of a sharded checkpoint
FORMATS = ("sharded", "full")


def resolve_format(setting: str, parallel: str, async_save: bool = False) -> str:
    """``trainer.checkpoint_format`` -> ``sharded`` | ``full`` (auto: sharded under FSDP2 or with
    ``trainer.async_checkpoint``, full otherwise)."""
    if setting == "auto":
        return "sharded" if parallel == "fsdp" or async_save else "full"
    return setting


def checkpoint_format(path: Path) -> str | None:
    """``sharded`` / ``full`` for a checkpoint dir by what it holds, None when it holds neither."""
    path = Path(path)
    if (path / SHARDED_DIR / ".metadata").is_file():
        return "sharded"
    if (path / "model.safetensors").is_file():
        return "full"
    return None


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint dirs (no ``.tmp-`` suffix), oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------------------------- integrity


def _files_of(path: Path) -> list[str]:
    """Every file under a checkpoint dir, as a path relative to it (``state/__0_0.distcp``), sorted."""
    return sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file())


def verify(path: Path) -> str | None:
    """None when ``path`` is a complete checkpoint whose files match the manifest, else the reason."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        return f"{path} has no {MANIFEST} (incomplete or not a checkpoint)"
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (OSError, ValueError) as e:
        return f"{mf} is unreadable: {e}"
    except (KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        return f"{mf} is not a checkpoint manifest (no file list)"
    # every file of the checkpoint must be listed (a file the manifest does not cover would load unchecked)
    unlisted = sorted(n for n in _files_of(path) if n != MANIFEST and n not in files)
    if unlisted:
        return f"{path}: {unlisted[0]} is not in the manifest"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{path}: {name} is missing"
        try:
            if f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
                return f"{path}: {name} does not match its sha256 in the manifest"
        except (TypeError, KeyError):
            return f"{mf} is unreadable: bad entry for {name}"
    return None


def find_latest(run_dir: Path, weights_only: bool = False) -> Path | None:
    """The newest checkpoint in ``run_dir`` that verifies; broken ones are skipped with a warning.

    ``weights_only`` (reading a model, not resuming): a checkpoint dir without a manifest (assembled by hand)
    counts when it holds weights; one with a manifest must still match it."""
    for path in reversed(list_checkpoints(run_dir)):
        if weights_only and not (path / MANIFEST).exists():
            if checkpoint_format(path) is not None:
                return path
            continue
        reason = verify(path)
        if reason is None:
            return path
        warnings.warn(f"skipping broken checkpoint: {reason}", stacklevel=2)
    return None


def resolve_resume(resume: str | None, run_dir: Path, is_main: bool) -> Path | None:
    """The checkpoint to resume from (decided on rank 0, the same on every rank), or None to start fresh."""
    result: tuple[str | None, str | None] = (None, None)
    if is_main and resume:
        if resume == "auto":
            latest = find_latest(run_dir)
            found = list_checkpoints(run_dir)
            if latest is None and found:  # never restart from scratch over a run's damaged checkpoints
                msg = (f"resume=auto: no checkpoint in {checkpoints_dir(run_dir)} verifies ({verify(found[-1])}); "
                       "move the damaged ones away to start over, or use resume=PATH")
                result = (None, msg)
            else:
                result = (str(latest) if latest else None, None)
        else:
            path = Path(resume).expanduser()
            if path.is_dir() and (path / "checkpoints").is_dir() and not (path / MANIFEST).exists():
                latest = find_latest(path)  # a run dir: take its newest good checkpoint
                result = (str(latest), None) if latest else (None, f"resume={resume}: no complete checkpoint in it")
            else:
                reason = verify(path)
                result = (str(path), None) if reason is None else (None, f"resume={resume}: bad checkpoint: {reason}")
    path, err = broadcast_object(result)
    if err:
        raise UserError(err)
    return Path(path) if path else None


# ----------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- save


def _full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict on rank 0 (empty elsewhere under FSDP2). Collective."""
    from torch.distributed.checkpoint.state_dict import (  # deferred: ~0.8 s to import (scripts/bench_imports.py)
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _full_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import (  # deferred: ~0.8 s to import (scripts/bench_imports.py)
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_bytes_atomic_free(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj) -> None:
    _write_bytes_atomic_free(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _agree(err: str | None) -> str | None:
    """The first error any rank saw (None when all succeeded). Collective."""
    if not is_distributed():
        return err
    errs: list = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    return next((e for e in errs if e), None)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{e.strerror or e}{where}"
    return str(e)


def _local_nonfinite(sd: dict) -> list[str]:
    """Names of floating tensors with a non-finite value in this rank's part of ``sd`` (its shard of a DTensor)."""
    bad = []
    for k, v in sd.items():
        local = v.to_local() if hasattr(v, "to_local") else v
        if isinstance(local, torch.Tensor) and local.is_floating_point() and not torch.isfinite(local).all():
            bad.append(k)
    return bad


def _write_full_state(tmp: Path, step: int, model_sd: dict, optim_sd: dict, tied: bool) -> None:
    """Rank 0: model.safetensors + optimizer.pt from full state dicts."""
    bad = _local_nonfinite(model_sd)
    if bad:
        raise ValueError(f"refusing to save non-finite weights ({', '.join(bad[:3])}...)")
    if tied:
        model_sd.pop("output.weight", None)  # tied: stored once as tok_embeddings.weight
    save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt", "step": str(step)})
    os.chmod(tmp / "model.safetensors", 0o666 & ~_umask())  # safetensors creates it 0600
    _fsync_file(tmp / "model.safetensors")
    torch.save(optim_sd, tmp / "optimizer.pt")
    _fsync_file(tmp / "optimizer.pt")


def _write_errors() -> tuple:
    """What a failed write raises: any Exception, and DCP's CheckpointException (a BaseException, which a
    plain ``except Exception`` lets through as a traceback)."""
    from torch.distributed.checkpoint.api import (
        CheckpointException,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )

    return (Exception, CheckpointException)


def _describe_write_error(e: BaseException) -> str:
    """One line for a failed write; for DCP's CheckpointException the innermost cause (e.g. the OSError)."""
    text = str(e)
    if "Traceback" in text:  # CheckpointException: its message holds every rank's traceback; the last line
        last = [line.strip() for line in text.splitlines() if line.strip()]
        return last[-1][:300] if last else type(e).__name__
    return (_describe(e).splitlines() or [type(e).__name__])[0][:300]


def _write_sharded_state(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """Every rank writes its shards of model + optimizer into ``tmp/state`` (DCP). Collective; returns the error
    (the same on every rank) or None."""
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    bad = _local_nonfinite(model_sd)
    err = _agree(f"refusing to save non-finite weights ({', '.join(bad[:3])}...)" if bad else None)
    if err:
        return err
    try:
        writer = dcp.FileSystemWriter(str(tmp / SHARDED_DIR), sync_files=True)
        dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=writer)
        if not is_distributed() or dist.get_rank() == 0:
            _fsync_file(tmp / SHARDED_DIR / ".metadata")
    except _write_errors() as e:  # DCP raises CheckpointException (on every rank) for any write failure
        err = _describe_write_error(e)
    return _agree(err)


def _write_shared_files(tmp: Path, *, schedule, trainer_state: dict, config_yaml: str, wandb_run_id: str,
                        fingerprint: str) -> None:
    """Rank 0: the small files every checkpoint has, whatever its format."""
    _write_json(tmp / "scheduler.json", schedule.state_dict())
    _write_json(tmp / "trainer_state.json", trainer_state)
    _write_bytes_atomic_free(tmp / "config.yaml", config_yaml.encode())
    _write_bytes_atomic_free(tmp / "wandb_run_id", (wandb_run_id + "\n").encode())
    _write_bytes_atomic_free(tmp / "data_fingerprint", (fingerprint + "\n").encode())


def _copy_tokenizer(tmp: Path, tokenizer_path: str | None) -> None:
    """Rank 0: the tokenizer next to the weights (analysis commands and export-hf read it from there)."""
    if tokenizer_path:
        load_tokenizer(tokenizer_path).save_to(tmp)


def _write_rank_files(tmp: Path, rank: int, loader) -> None:
    """Every rank: its RNG state and data-loader state."""
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _write_json(tmp / f"loader_rank{rank}.json", loader.state_dict())


def _largest_first(tmp: Path) -> list[str]:
    return sorted(_files_of(tmp), key=lambda n: -(tmp / n).stat().st_size)


def _hash_share(tmp: Path, names: list[str], rank: int, world: int) -> dict:
    """{relative path: {sha256, bytes}} of this rank's share of ``names`` (file i by rank i mod world)."""
    return {n: {"sha256": sha256_file(tmp / n), "bytes": (tmp / n).stat().st_size} for n in names[rank::world]}


def _hash_files(tmp: Path) -> dict:
    """{relative path: {sha256, bytes}} of every file under ``tmp``, hashed in parallel (file i by rank
    i mod world, largest first). Collective."""
    names = broadcast_object(_largest_first(tmp) if not is_distributed() or dist.get_rank() == 0 else None)
    rank, world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    mine = _hash_share(tmp, names, rank, world)
    if world == 1:
        return mine
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in part.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(run_dir: Path, tmp: Path, final: Path, step: int, fmt: str, files: dict, keep_last: int) -> None:
    """Rank 0: the manifest (last file written), the atomic rename ``.tmp-`` -> ``step_XXXXXXXX``, then
    keep-last pruning. Raises on a failure to write or rename (the caller turns it into a UserError)."""
    root = final.parent
    _write_json(tmp / MANIFEST, {"step": step, "format": fmt, "files": files})
    if final.exists():  # a stale dir of the same step (e.g. from a run that was restarted): replace it
        delete_checkpoint(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        try:
            delete_checkpoint(old)
        except OSError as e:  # an old checkpoint that cannot be removed costs disk, not the run
            warnings.warn(f"could not delete old checkpoint {old}: {_describe(e)}", stacklevel=1)


def _failed(final: Path, err: str) -> UserError:
    return UserError(f"could not write checkpoint {final}: {err}; earlier checkpoints are intact (check free "
                     "disk space and permissions of run.dir)")


class _Pending:
    """A checkpoint whose shards are being written in the background (``AsyncCheckpointer``)."""

    def __init__(self, run_dir: Path, tmp: Path, final: Path, step: int, keep_last: int, future: Future):
        self.run_dir, self.tmp, self.final, self.step, self.keep_last = run_dir, tmp, final, step, keep_last
        self.future = future  # -> this rank's {file: {sha256, bytes}} share, or raises


class AsyncCheckpointer:
    """Holds the one sharded checkpoint save in flight of a training run (``trainer.async_checkpoint``).

    ``save_checkpoint(..., background=self)`` first ``wait``s for the previous save, then starts the next one.
    ``wait()`` (collective) blocks until this rank's background write and hashing are done, then all ranks
    agree and rank 0 writes the manifest, renames and prunes: only then does the checkpoint exist.
    ``close()`` (local, for a run ending with an error) waits for the background thread without finalising:
    the ``.tmp-`` dir stays and is removed at the next start, as after a kill."""

    def __init__(self):
        self.pending: _Pending | None = None
        self._pg = None  # a gloo group of its own: the background collectives never meet the loop's
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-jreg-ckpt")
        self._staged = None  # CPU copies of this rank's model + optimizer state, reused by every save
        self._staged_layout = None
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

    def wait(self) -> Path | None:
        """Finalise the save in flight (if any) and return its path. Collective. Raises UserError on every rank
        when any rank failed (the ``.tmp-`` dir is removed; earlier checkpoints are intact)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        err = None
        files: dict = {}
        try:
            files = pending.future.result()
        except _write_errors() as e:  # DCP's CheckpointException, an OSError while hashing, ...
            err = _describe_write_error(e)
        parts = [(err, files)]
        if is_distributed():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (err, files))
        err = next((e for e, _ in parts if e), None)
        if not err and (not is_distributed() or dist.get_rank() == 0):
            try:
                _commit(pending.run_dir, pending.tmp, pending.final, pending.step, "sharded",
                        {k: v for _, part in parts for k, v in part.items()}, pending.keep_last)
            except Exception as e:  # noqa: BLE001
                err = _describe(e)
        err = broadcast_object(err)
        if err:
            if not is_distributed() or dist.get_rank() == 0:
                shutil.rmtree(pending.tmp, ignore_errors=True)
            raise _failed(pending.final, err)
        barrier()
        return pending.final

    def close(self) -> None:
        """Wait for this rank's background thread (not collective, nothing finalised); stop the thread."""
        pending, self.pending = self.pending, None
        if pending is not None:
            with contextlib.suppress(*_write_errors()):  # the run is ending with an error already
                pending.future.result()
            warnings.warn(f"checkpoint {pending.final.name} was still being written when the run stopped; it is "
                          "discarded (resume=auto takes the previous complete checkpoint)", stacklevel=2)
        self._executor.shutdown(wait=True)


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


def _start_sharded_async(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         background: AsyncCheckpointer) -> tuple[str | None, Future | None]:
    """Stage this rank's shards in CPU memory and start writing them in the background (collective). Returns
    (error agreed by all ranks, future of this rank's hash share)."""
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    bad = _local_nonfinite(model_sd)
    err = _agree(f"refusing to save non-finite weights ({', '.join(bad[:3])}...)" if bad else None)
    if err:
        return err, None
    pg = background.process_group()
    dist_on = is_distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    upload = None
    try:
        writer = dcp.FileSystemWriter(str(tmp / SHARDED_DIR), sync_files=True)
        # staged here: every tensor is copied into CPU memory before this returns, so the next optimizer step
        # cannot change what is written
        staged = background.stage({"model": model_sd, "optim": optim_sd})
        response = dcp.async_save(staged, storage_writer=writer, process_group=pg, no_dist=not dist_on,
                                  async_stager=_already_staged())
        upload = getattr(response, "upload_completion", response)
    except _write_errors() as e:
        err = _describe_write_error(e)
    err = _agree(err)
    if err:
        if upload is not None:
            with contextlib.suppress(*_write_errors()):
                upload.result()
        return err, None
    del model_sd, optim_sd

    def finish() -> dict:
        """Background: the write's outcome (agreed over the checkpoint group), then this rank's hash share."""
        werr = None
        try:
            upload.result()
            if rank == 0:
                _fsync_file(tmp / SHARDED_DIR / ".metadata")
        except _write_errors() as e:
            werr = _describe_write_error(e)
        names = [None]
        if dist_on:
            errs: list = [None] * world
            dist.all_gather_object(errs, werr, group=pg)
            werr = next((e for e in errs if e), None)
            if not werr:
                names = [_largest_first(tmp) if rank == 0 else None]
                dist.broadcast_object_list(names, src=0, group=pg)
        if werr:
            raise RuntimeError(werr)
        return _hash_share(tmp, names[0] if dist_on else _largest_first(tmp), rank, world)

    return None, background._executor.submit(finish)


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    loader,
    trainer_state: dict,
    config_yaml: str,
    tokenizer_path: str | None,
    keep_last: int,
    fmt: str = "full",
    background: AsyncCheckpointer | None = None,
) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically in format ``fmt`` (``full`` | ``sharded``), then delete
    all but the newest ``keep_last``. Collective: every rank calls it. Raises UserError (on every rank) when
    anything cannot be written or a weight is non-finite; earlier checkpoints are never touched in that case.
    ``trainer_state`` (the trainer's counters) must hold ``wandb_run_id`` and ``data_fingerprint``; they are
    also written as files of their own. The trainer saves through :class:`Checkpointer`.

    With ``background`` (sharded only) the previous save in flight is finalised first, then this one is
    started and the function returns once the state is staged: the returned path exists only after
    ``background.wait()``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    if background is not None and fmt != "sharded":
        raise ValueError("an asynchronous save needs the sharded format")
    if background is not None:
        background.wait()  # at most one save in flight
    rank = dist.get_rank() if is_distributed() else 0
    is_main = rank == 0
    root = checkpoints_dir(run_dir)
    final = root / step_dir_name(step)
    tmp = Path(broadcast_object(str(root / f"{final.name}.tmp-{os.getpid()}")))
    tied = getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings

    def attempt(fn, *args, **kw) -> str | None:
        try:
            fn(*args, **kw)
            return None
        except Exception as e:  # noqa: BLE001 - any failure to write (OSError, SafetensorError, ...)
            return _describe(e)

    err = None
    if is_main:
        def make_tmp():
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        err = attempt(make_tmp)
    err = broadcast_object(err)
    # the small files first: schedule, counters, RNG and loader describe this step even while the shards of
    # an asynchronous save are still being written and the loop moves on
    if not err and is_main:
        err = attempt(_write_shared_files, tmp, schedule=schedule, trainer_state=trainer_state,
                      config_yaml=config_yaml, wandb_run_id=trainer_state["wandb_run_id"],
                      fingerprint=trainer_state["data_fingerprint"])
        err = err or attempt(_copy_tokenizer, tmp, tokenizer_path)
    err = broadcast_object(err)
    if not err:
        err = _agree(attempt(_write_rank_files, tmp, rank, loader))
    future = None
    if not err:
        if fmt == "full":
            model_sd = _full_model_state(model)
            optim_sd = _full_optim_state(model, optimizer)
            if is_main:
                err = attempt(_write_full_state, tmp, step, model_sd, optim_sd, tied)
            del model_sd, optim_sd
            err = broadcast_object(err)
        elif background is not None:
            err, future = _start_sharded_async(tmp, model, optimizer, background)
        else:
            err = _write_sharded_state(tmp, model, optimizer)
    if not err and future is not None:
        background.pending = _Pending(Path(run_dir), tmp, final, step, keep_last, future)
        return final
    files: dict = {}
    if not err:
        try:
            files = _hash_files(tmp)
        except Exception as e:  # noqa: BLE001
            err = _describe(e)
        err = _agree(err)
    if not err and is_main:
        err = attempt(_commit, Path(run_dir), tmp, final, step, fmt, files, keep_last)
    err = broadcast_object(err)
    if err:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _failed(final, err)
    barrier()
    return final


@dataclass
class Checkpointer:
    """A run's checkpoints, built once by the trainer with everything a save writes and a resume restores:
    ``save(step, state)`` (``state``: the trainer's counters, see ``save_checkpoint``), ``restore(path)``,
    ``wait()`` for an asynchronous save in flight (``trainer.async_checkpoint``), ``close()``."""

    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    loader: Any
    config_yaml: str
    tokenizer_path: str | None
    fingerprint: str
    keep_last: int
    fmt: str = "full"
    asynchronous: bool = False
    data_identity: Any = None  # data.identity.DataIdentity: the files recorded and checked by content

    def __post_init__(self):
        self.background = AsyncCheckpointer() if self.asynchronous else None  # the save in flight

    def save(self, step: int, state: dict) -> Path:
        """Write checkpoint ``step`` (collective). Asynchronous: returns once the state is staged; the path
        exists after the next ``save`` or ``wait``."""
        return save_checkpoint(self.run_dir, step, model=self.model, optimizer=self.optimizer,
                               schedule=self.schedule, loader=self.loader,
                               trainer_state={**state, "data_fingerprint": self.fingerprint,
                                              **self._data_record()},
                               config_yaml=self.config_yaml, tokenizer_path=self.tokenizer_path,
                               keep_last=self.keep_last, fmt=self.fmt, background=self.background)

    def restore(self, path: Path) -> dict:
        """Model, optimizer, schedule, loader and RNG from ``path``; returns the trainer state (collective)."""
        return restore_checkpoint(path, model=self.model, optimizer=self.optimizer, schedule=self.schedule,
                                  loader=self.loader, fingerprint=self.fingerprint, data_identity=self.data_identity)

    def _data_record(self) -> dict:
        return {DATA_RECORD_KEY: self.data_identity.record()} if self.data_identity is not None else {}

    def wait(self) -> Path | None:
        """Finalise the asynchronous save in flight, if any (collective)."""
        return self.background.wait() if self.background is not None else None

    def close(self) -> None:
        """At the end of a run that failed: leave a save in flight unfinished (removed at the next start)."""
        if self.background is not None:
            self.background.close()


def delete_checkpoint(path: Path) -> None:
    """Remove a checkpoint dir so that it is never seen half-deleted: first renamed to ``<name>.old-<pid>``
    (atomic; from then on ``list_checkpoints`` / ``find_latest`` ignore it), then deleted. A process killed in
    between leaves only the ``.old-`` dir, which ``remove_stale_tmp`` removes at the next start."""
    trash = path.with_name(f"{path.name}.old-{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_tmp(run_dir: Path) -> None:
    """Delete what a process killed mid-write leaves behind (rank 0, at start): checkpoints being written
    (``.tmp-``) or deleted (``.old-``), and a ``metrics.jsonl.tmp-<pid>`` from an interrupted rewrite."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)
    for p in Path(run_dir).glob("metrics.jsonl.tmp-*"):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- load


def read_text(path: Path, name: str) -> str | None:
    f = Path(path) / name
    return f.read_text().strip() if f.is_file() else None


def _load_plain(f: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects. A file
    holding anything else (a malicious or foreign pickle) is a UserError, not a traceback."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a damaged zip, ...: all mean "do not trust it"
        lines = [x.strip() for x in str(e).splitlines() if "Unsupported global" in x or "failed" in x.lower()]
        detail = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1] if lines else type(e).__name__).split(" Please")[0][:200]
        raise UserError(f"refusing to load {f}: not a plain tensor file written by llama-jreg ({detail})") from None


def _model_fits(path: Path, model: torch.nn.Module, got: dict[str, tuple]) -> str | None:
    """A clear error when the checkpoint's model shapes ``got`` differ from ``model``'s (global shapes)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # global shapes, also for DTensors
    if want == got:
        return None
    diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
    return (f"resume={path}: the checkpoint's weights do not fit model={getattr(model.cfg, 'name', '?')} "
            f"as configured (first difference: {diff[0]}: checkpoint {got.get(diff[0])}, model "
            f"{want.get(diff[0])}); resume with the model settings of its config.yaml")


def _sharded_model_shapes(path: Path) -> dict[str, tuple]:
    """{parameter name: global shape} of the model in a sharded checkpoint (from its DCP metadata)."""
    from torch.distributed.checkpoint import (
        FileSystemReader,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path / SHARDED_DIR)).read_metadata()
    return {k[len("model."):]: tuple(m.size) for k, m in md.state_dict_metadata.items()
            if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}


def _load_full_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """model.safetensors + optimizer.pt: rank 0 reads the files, the state_dict API broadcasts / shards them."""
    from torch.distributed.checkpoint.state_dict import (  # deferred: ~0.8 s to import (scripts/bench_imports.py)
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    bcast = is_distributed()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=bcast)
    model_sd: dict = {}
    optim_sd: dict = {}
    if rank == 0 or not bcast:
        model_sd = load_file(str(path / "model.safetensors"))
        if "output.weight" not in model_sd and getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
            model_sd["output.weight"] = model_sd["tok_embeddings.weight"]
        optim_sd = _load_plain(path / "optimizer.pt")
    # a clear error (on every rank) rather than a size-mismatch traceback or a hang
    err = broadcast_object(_model_fits(path, model, {k: tuple(v.shape) for k, v in model_sd.items()})
                           if rank == 0 else None)
    if err:
        raise UserError(err)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)


def _load_sharded_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """``state/`` (DCP): every rank reads the parts of every shard that its own (new) sharding needs, so a
    checkpoint of any world size loads at any other."""
    import torch.distributed.checkpoint as dcp  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    err = None
    if rank == 0:
        try:
            err = _model_fits(path, model, _sharded_model_shapes(path))
        except Exception as e:  # noqa: BLE001 - unreadable metadata
            err = f"resume={path}: unreadable sharded checkpoint ({_describe(e)})"
    err = broadcast_object(err)
    if err:
        raise UserError(err)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the target layout (initialises the AdamW state)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(path / SHARDED_DIR)), no_dist=not is_distributed())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The full model state_dict (CPU tensors, names as in ``Llama.state_dict()``) of one checkpoint dir, in
    either format, in this process alone (no process group needed; a sharded checkpoint of any world size is
    consolidated in memory, nothing written). With tied embeddings ``output.weight`` may be absent (the full
    format stores the tied head once; re-tie it from ``tok_embeddings.weight``). Raises UserError when ``path``
    holds no model."""
    path = Path(path)
    fmt = checkpoint_format(path)
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


def restore_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    loader,
    fingerprint: str,
    data_identity=None,
) -> dict:
    """Restore model, optimizer, schedule, this rank's loader and RNG from ``path`` (either format, any world
    size); return the trainer state. Collective. A checkpoint written for different data raises UserError."""
    path = Path(path)
    rank = dist.get_rank() if is_distributed() else 0
    world = dist.get_world_size() if is_distributed() else 1
    saved_fp = read_text(path, "data_fingerprint")
    state = json.loads((path / "trainer_state.json").read_text())
    if data_identity is not None:  # by content; older checkpoints by their own rule (data/identity.py)
        data_identity.check(str(path), saved_fp, state.get(DATA_RECORD_KEY))
    elif saved_fp != fingerprint:
        raise UserError(
            f"resume={path}: the checkpoint was trained on other data (fingerprint {saved_fp}, now {fingerprint}); "
            "use the same data config, or start a new run.dir"
        )

    if checkpoint_format(path) == "sharded":
        _load_sharded_state(path, model, optimizer, rank)
    else:
        _load_full_state(path, model, optimizer, rank)
    schedule.load_state_dict(json.loads((path / "scheduler.json").read_text()))

    saved_world = int(state.get("world_size", 1))
    loader_file = path / f"loader_rank{rank}.json"
    if saved_world != world:
        # the loader's cursor is global (sample order does not depend on the world size), so rank 0's state
        # is valid for every rank of a new world size; the per-rank RNG streams cannot carry over exactly.
        warnings.warn(
            f"resuming a {saved_world}-process checkpoint with {world} processes: data order is kept, "
            "per-rank RNG state is re-seeded",
            stacklevel=2,
        )
        loader_file = path / "loader_rank0.json"
    loader_state = json.loads(loader_file.read_text())
    loader.load_state_dict(data_identity.translate(loader_state) if data_identity is not None else loader_state)
    rng_file = path / f"rng_rank{rank}.pt"
    if saved_world == world and rng_file.is_file():
        set_rng_state(_load_plain(rng_file))
    barrier()
    return state
