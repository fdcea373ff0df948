"""Checkpoints on object storage: ``trainer.ckpt_dir=s3://bucket/runs/r1/checkpoints`` (any fsspec URL).

Each checkpoint is written locally first, exactly as without a URL (``<run.dir>/checkpoints/step_XXXXXXXX``,
same code, same manifest; the local dir is the staging area and the cache), then uploaded by rank 0 to
``<ckpt_dir>/step_XXXXXXXX/`` with ``manifest.json`` uploaded last. An object store has no atomic rename, so a
remote checkpoint is complete when its manifest is there and the files it lists match it; an upload cut short
leaves a prefix without a manifest, which ``resume=auto`` never takes. ``keep_last`` prunes remote checkpoints
once the new manifest is up (the manifest of an old one is deleted first, so it is never seen half-deleted).
A synchronous save uploads before it returns; an asynchronous one (background.py) once committed, in the
background thread, awaited at the next commit.

``resume=auto`` (rank 0, :func:`RemoteCheckpoints.fetch_latest`): the newest remote checkpoint whose manifest
verifies is downloaded into ``<run.dir>/checkpoints`` (unless that exact checkpoint is there already) and
restored from the local copy. Endpoint and credentials: the AWS environment or ``trainer.ckpt_storage_options``
(llama_jreg/storage.py).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_jreg import UserError
from llama_jreg.checkpoint.commit import delete_checkpoint
from llama_jreg.checkpoint.layout import STEP_RE
from llama_jreg.checkpoint.manifest import MANIFEST, files_of, verify
from llama_jreg.storage import filesystem, is_url, storage_error


@dataclass
class RemoteCheckpoints:
    """The ``step_XXXXXXXX/`` prefixes under ``url``."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.url = self.url.rstrip("/")

    def _fs(self):
        try:
            return filesystem(self.url, self.options)
        except UserError as e:  # no fsspec backend for the protocol: name the setting
            raise UserError(f"trainer.ckpt_dir={e}") from None

    def check(self) -> None:
        """The store answers and the bucket exists (before any step); UserError naming the URL and the fix."""
        fs, root = self._fs()
        try:
            fs.invalidate_cache()
            bucket = root.split("/", 1)[0]
            try:
                fs.ls(bucket, detail=False)  # not exists(): s3fs answers False when the endpoint is unreachable
            except FileNotFoundError:
                raise FileNotFoundError(f"bucket {bucket} does not exist") from None
        except Exception as e:  # noqa: BLE001 - each backend raises its own types; classified in storage_error
            raise _error(self.url, e) from None

    def steps(self) -> list[str]:
        """The names of the ``step_XXXXXXXX`` prefixes (complete or not), oldest first."""
        fs, root = self._fs()
        fs.invalidate_cache()
        try:
            entries = fs.ls(root, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if STEP_RE.match(n))

    def complete(self, name: str) -> bool:
        fs, root = self._fs()
        return fs.exists(f"{root}/{name}/{MANIFEST}")

    def upload(self, local: Path, keep_last: int) -> None:
        """Rank 0, after the local commit: every file of ``local`` but the manifest, then the manifest, then
        prune. Raises on a failed upload (the caller turns it into a UserError); the local checkpoint stays."""
        fs, root = self._fs()
        dest = f"{root}/{local.name}"
        try:
            if fs.exists(dest):  # a stale upload of the same step (a run restarted from an earlier step)
                self._delete(local.name)
            for name in files_of(local):
                if name != MANIFEST:
                    fs.put_file(str(local / name), f"{dest}/{name}")
            fs.put_file(str(local / MANIFEST), f"{dest}/{MANIFEST}")  # last: from now on the checkpoint exists
        except Exception as e:  # noqa: BLE001 - classified in storage_error
            err = _error(f"{self.url}/{local.name}", e, action="write to")
            raise UserError(f"{err}; the checkpoint is kept in {local}: once the store is fixed, rerun with "
                            "resume=auto (it resumes from it and uploads the next checkpoint)") from None
        self.prune(keep_last, local.name)

    def prune(self, keep_last: int, newest: str) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints, and uploads older than ``newest`` that
        never completed. A failure costs storage, not the run: a warning."""
        steps = self.steps()
        complete = [n for n in steps if self.complete(n)]
        doomed = complete[:-keep_last] + [n for n in steps if n not in complete and n < newest]
        for name in doomed:
            try:
                self._delete(name)
            except Exception as e:  # noqa: BLE001 - any backend error
                warnings.warn(f"could not delete old checkpoint {self.url}/{name}: {e}", stacklevel=1)

    def _delete(self, name: str) -> None:
        fs, root = self._fs()
        if self.complete(name):
            fs.rm_file(f"{root}/{name}/{MANIFEST}")  # first: never seen as complete while half-deleted
        fs.rm(f"{root}/{name}", recursive=True)

    def fetch_latest(self, local_root: Path) -> Path | None:
        """Rank 0: a local copy (in ``local_root``) of the newest remote checkpoint that verifies, or None when
        there is none. Incomplete and damaged ones are skipped with a warning; UserError when the store cannot be
        read, or when it holds checkpoints and none verifies."""
        try:
            steps = self.steps()
            for name in reversed(steps):
                if not self.complete(name):
                    warnings.warn(f"skipping incomplete checkpoint {self.url}/{name} (no {MANIFEST})", stacklevel=2)
                    continue
                local, reason = self._download(name, Path(local_root))
                if reason is None:
                    return local
                warnings.warn(f"skipping broken checkpoint {self.url}/{name}: {reason}", stacklevel=2)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - classified in storage_error
            raise _error(self.url, e) from None
        if steps:
            raise UserError(f"resume=auto: no checkpoint in {self.url} verifies; delete the damaged ones to start "
                            "over, or use resume=PATH")
        return None

    def _download(self, name: str, local_root: Path) -> tuple[Path, str | None]:
        """(local copy, None) when the download of ``name`` verifies, else (path, reason)."""
        fs, root = self._fs()
        prefix = f"{root}/{name}"
        local = local_root / name
        manifest = fs.cat_file(f"{prefix}/{MANIFEST}")
        if (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == manifest and verify(local) is None:
            return local, None  # this very checkpoint is here already (it was written on this machine)
        tmp = local_root / f"{name}.tmp-{os.getpid()}"  # removed by remove_stale_tmp if this process dies
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key in fs.find(prefix):
            rel = key[len(prefix) + 1:]
            if rel and rel != MANIFEST:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(key, str(tmp / rel))
        (tmp / MANIFEST).write_bytes(manifest)  # the manifest read first: the files must match that one
        reason = verify(tmp)
        if reason is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return local, reason
        if local.exists():
            delete_checkpoint(local)
        tmp.rename(local)
        return local, None


def _error(url: str, e: BaseException, action: str = "read from") -> UserError:
    """storage_error's line, with the checkpoint setting in the fix."""
    return UserError(f"trainer.ckpt_dir={storage_error(url, e, action)}".replace("data.storage_options",
                                                                             "trainer.ckpt_storage_options"))


def remote_checkpoints(url: str | None, options: dict | None = None) -> RemoteCheckpoints | None:
    """``trainer.ckpt_dir`` -> RemoteCheckpoints, None when unset. UserError for a local path (checkpoints
    on disk go in ``<run.dir>/checkpoints``)."""
    if not url:
        return None
    if not is_url(url):
        raise UserError(f"trainer.ckpt_dir={url} is not an object-store URL; set it to s3://bucket/prefix (or "
                        "another fsspec URL), or leave it unset to keep checkpoints in <run.dir>/checkpoints")
    return RemoteCheckpoints(url, dict(options or {}))
