"""File helpers shared by checkpoints, data preparation, ``init_from``, the HF export and the commands' ``--json``
outputs: hashing, modes, JSON results."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(obj: Any, n: int = 24) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys; other objects by
    ``str``): the fingerprints of preparations, data streams and mixtures."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def chmod_like_new_file(path: str | Path) -> None:
    """Give ``path`` the mode an ordinary new file gets (0666 minus the umask, usually 0644): safetensors creates
    its files 0600, unreadable for the rest of a group sharing exports."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_json_result(path: str | Path, obj: Any, **dumps_kw) -> None:
    """A command's ``--json PATH`` output: ``obj`` as indented JSON (parent dirs made), then ``wrote PATH``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, **dumps_kw) + "\n")
    print(f"wrote {path}")
