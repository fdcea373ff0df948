"""Checkpoints: atomic save (full or sharded), keep-last-k, discovery for ``resume=auto``, verified load.

Two formats (``trainer.checkpoint_format``: ``sharded`` | ``full`` | ``auto`` = sharded under ``parallel=fsdp``
or with ``trainer.async_checkpoint``, full otherwise). Resume reads whichever format a checkpoint has, at any
world size. Layout of ``<run.dir>/checkpoints/step_XXXXXXXX/`` (8-digit optimizer step; format version 1)::

    model.safetensors     full: unwrapped Llama state_dict, full tensors (gathered on rank 0 under FSDP2); a
                          tied LM head is stored once (as tok_embeddings.weight) and re-tied on load
    optimizer.pt          full: AdamW state, full (unsharded) and keyed by parameter name; torch.save of
                          tensors and plain containers only, loaded with ``weights_only=True``
    state/                sharded: a torch.distributed.checkpoint (DCP) directory holding {"model": Llama
                          state_dict, "optim": AdamW state keyed by parameter name}; every rank writes its own
                          shards (``__<rank>_0.distcp``) in parallel, rank 0 the global ``.metadata``
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
    manifest.json         format version, step, format, and sha256 and size of every file above (paths relative
                          to the checkpoint, so also ``state/...``); written last. The ranks hash in parallel

One concern per module: ``layout`` (where checkpoints live, discovery, ``resolve_resume``), ``manifest`` (the
manifest, its format version, ``verify``), ``collective`` (every rank agrees on an error), ``parts`` (the
Stateful parts and their files), ``full`` and ``sharded`` (the two formats), ``background`` (asynchronous
saves), ``commit`` (manifest, rename, keep-last pruning, leftovers), ``manager`` (``CheckpointManager``),
``remote`` (upload to / resume from object storage: ``trainer.ckpt_dir=s3://...``).

A checkpoint is complete or absent: everything is written to ``step_XXXXXXXX.tmp-<pid>`` and renamed at the
end; keep-last deletion renames to ``.old-<pid>`` before deleting. ``resume=auto`` takes the newest directory
whose manifest checks out (skipping broken ones with a warning). Rank 0 writes the shared files; every rank
writes its own rng/loader files (and, sharded, its model/optimizer shards); all ranks agree on success or
failure (no rank hangs when another fails). The checkpoint directory must be on a file system every rank can
see (as usual for multi-node training).
"""

from llama_jreg.checkpoint.background import AsyncCheckpointer
from llama_jreg.checkpoint.commit import delete_checkpoint, remove_stale_tmp
from llama_jreg.checkpoint.fileio import read_text
from llama_jreg.checkpoint.layout import (
    FORMATS,
    SHARDED_DIR,
    STEP_RE,
    checkpoint_format,
    checkpoints_dir,
    find_latest,
    list_checkpoints,
    resolve_format,
    resolve_resume,
    step_dir_name,
)
from llama_jreg.checkpoint.manager import CheckpointManager, RunFiles
from llama_jreg.checkpoint.manifest import FORMAT_VERSION, MANIFEST, format_version, verify
from llama_jreg.checkpoint.parts import RNG, JsonPart, ModelPart, OptimizerPart, RankPart
from llama_jreg.checkpoint.remote import RemoteCheckpoints, remote_checkpoints
from llama_jreg.checkpoint.sharded import read_model_state

__all__ = [
    "FORMATS", "FORMAT_VERSION", "MANIFEST", "RNG", "SHARDED_DIR", "STEP_RE", "AsyncCheckpointer",
    "CheckpointManager", "JsonPart", "ModelPart", "OptimizerPart", "RankPart", "RemoteCheckpoints", "RunFiles",
    "checkpoint_format", "checkpoints_dir", "delete_checkpoint", "find_latest", "format_version", "list_checkpoints",
    "read_model_state", "read_text", "remote_checkpoints", "remove_stale_tmp", "resolve_format", "resolve_resume",
    "step_dir_name", "verify",
]
