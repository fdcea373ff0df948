"""Commit and prune: a checkpoint is complete or absent.

Everything is written to ``step_XXXXXXXX.tmp-<pid>``; ``commit`` writes the manifest last, renames the dir to
``step_XXXXXXXX`` (atomic) and deletes all but the newest ``keep_last``. Deletion renames to ``.old-<pid>``
first, so a checkpoint is never seen half-deleted; ``remove_stale_tmp`` clears what a killed process left.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from llama_jreg import UserError
from llama_jreg.checkpoint.collective import describe
from llama_jreg.checkpoint.fileio import fsync_dir
from llama_jreg.checkpoint.layout import checkpoints_dir, list_checkpoints
from llama_jreg.checkpoint.manifest import write_manifest


def make_tmp(final: Path) -> Path:
    """Rank 0: an empty ``<final>.tmp-<pid>`` dir (a leftover of the same name is replaced)."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    final.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(run_dir: Path, tmp: Path, final: Path, fmt: str, files: dict, keep_last: int) -> None:
    """Rank 0: the manifest (last file written), the atomic rename ``.tmp-`` -> ``step_XXXXXXXX``, then
    keep-last pruning. Raises on a failure to write or rename (the caller turns it into a UserError)."""
    step = int(final.name.split("_")[1])
    write_manifest(tmp, step, fmt, files)
    if final.exists():  # a stale dir of the same step (e.g. from a run that was restarted): replace it
        delete_checkpoint(final)
    tmp.rename(final)
    fsync_dir(final.parent)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        try:
            delete_checkpoint(old)
        except OSError as e:  # an old checkpoint that cannot be removed costs disk, not the run
            warnings.warn(f"could not delete old checkpoint {old}: {describe(e)}", stacklevel=1)


def failed(final: Path, err: str) -> UserError:
    return UserError(f"could not write checkpoint {final}: {err}; earlier checkpoints are intact (check free "
                     "disk space and permissions of run.dir)")


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
