"""Data known by its content: the sha256 of local files (cached), and the resume check built on it.

A local data file is identified by the sha256 of its bytes, not by its path: a run dir moved with its corpus
to another folder or machine (``cp``, ``rsync`` without ``-t``, another mount point) sees the same data. The
hash of a file of 16 MiB or more is cached under ``<data cache>/sha256/`` keyed by (absolute path, size,
mtime, inode), so a second start on the same machine does not re-read a large corpus; any change of those
re-hashes it.

A checkpoint records the files its run was trained on (``trainer_state.json`` key ``data_files``: the path
and sha256 of every file), so a resume on changed data names the file that changed. Checkpoints written
before data were known by their content have no such record; their data fingerprint was made from each
file's (path, size, mtime), and they are checked by that rule (``legacy``): they resume where their data is
where it was.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_jreg import UserError
from llama_jreg.files import sha256_file, short_hash

#: the key of the checkpoint's trainer state that records the data files (absent in older checkpoints)
RECORD_KEY = "data_files"
#: files smaller than this are hashed at every start (~10 ms of CPU) and leave nothing in the cache
CACHE_MIN_BYTES = 16 << 20


def cached_sha256(path: str, cache: Path | None, min_bytes: int = CACHE_MIN_BYTES) -> str:
    """The sha256 of ``path``'s bytes; with ``cache`` and at least ``min_bytes`` bytes, remembered under
    ``cache/sha256/`` by (path, size, mtime, inode). The cache entry is written atomically (concurrent ranks
    hash and write the same value)."""
    st = os.stat(path)
    if cache is None or st.st_size < min_bytes:
        return sha256_file(path)
    key = short_hash([str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino], 32)
    entry = cache / "sha256" / key
    try:
        value = entry.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = sha256_file(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(value + "\n")
        os.replace(tmp, entry)
    except OSError:  # a read-only cache only costs the next start a re-hash
        pass
    return value


@dataclass
class DataIdentity:
    """What a checkpoint needs to know about the data of a run.

    ``fingerprint`` is the data bundle's fingerprint (content rule); ``files`` the ``[path, sha256]`` of every
    local file read, in order (for a mixture: all sources' files, source after source); ``legacy`` maps the
    fingerprints this data had under the (path, size, mtime) rule to today's, for the bundle and every part
    of it whose loader state carries one (empty when there are no local files)."""

    fingerprint: str
    files: list[list[str]] = field(default_factory=list)
    legacy: dict[str, str] = field(default_factory=dict)

    def record(self) -> list[list[str]]:
        """What the checkpoint stores under ``RECORD_KEY``."""
        return [list(f) for f in self.files]

    def check(self, where: str, saved_fp: str | None, saved_files: list | None) -> None:
        """Raise UserError unless a checkpoint with fingerprint ``saved_fp`` (and file record ``saved_files``,
        None for a checkpoint older than the record) was trained on this data."""
        if saved_fp == self.fingerprint:
            return
        if saved_files is None:
            if saved_fp in self.legacy:  # an older checkpoint, its data where and as it was
                return
            raise UserError(
                f"resume={where}: the checkpoint was trained on other data (fingerprint {saved_fp}, now "
                f"{self.fingerprint}); it predates data known by their content, so its local data files must "
                "be at the same paths, unmodified; use the same data config there, or start a new run.dir")
        if len(saved_files) == len(self.files):
            for (old_path, old_sha), (path, sha) in zip(saved_files, self.files):
                if old_sha != sha:
                    kind, old_id, new_id = _kind(old_sha), _short(old_sha), _short(sha)
                    then = f" (then at {old_path})" if old_path != path else ""
                    raise UserError(f"data file {path} differs from the one this run was trained on ({kind} "
                                    f"{old_id}…, now {new_id}…); restore the file it was trained on{then}, or "
                                    "start a new run.dir")
        elif saved_files or self.files:
            raise UserError(f"resume={where}: data.files gives {len(self.files)} file(s), the run was trained on "
                            f"{len(saved_files)}; use the same data files, or start a new run.dir")
        raise UserError(f"resume={where}: the checkpoint was trained on other data (fingerprint {saved_fp}, now "
                        f"{self.fingerprint}); use the same data config, or start a new run.dir")

    def translate(self, loader_state: Any) -> Any:
        """``loader_state`` with every legacy ``fingerprint`` replaced by today's (a no-op for new checkpoints)."""
        if isinstance(loader_state, dict):
            return {k: (self.legacy.get(v, v) if k == "fingerprint" and isinstance(v, str) else self.translate(v))
                    for k, v in loader_state.items()}
        if isinstance(loader_state, list):
            return [self.translate(v) for v in loader_state]
        return loader_state


def _kind(content_id: str) -> str:
    """``sha256`` for a local file's hash, else the checksum an object store gave (``etag:...`` -> ``ETag``)."""
    kind = content_id.split(":", 1)[0] if ":" in content_id else "sha256"
    return {"etag": "ETag", "md5": "MD5", "crc32c": "CRC32C"}.get(kind, kind)


def _short(content_id: str) -> str:
    return content_id.split(":", 1)[-1][:12]


def combine(fingerprint: str, files: list[list[str]], legacy_fingerprint: str | None,
            parts: list[DataIdentity] = ()) -> DataIdentity:
    """The identity of a bundle with ``files`` and ``legacy_fingerprint``, made of ``parts`` (a mixture's
    sources: their files and legacy maps come along)."""
    files = [*files, *(f for p in parts for f in p.files)]
    legacy = {k: v for p in parts for k, v in p.legacy.items()}
    if legacy_fingerprint is not None and legacy_fingerprint != fingerprint:
        legacy[legacy_fingerprint] = fingerprint
    return DataIdentity(fingerprint, files, legacy)
