"""Reading and writing a checkpoint's files safely: fsync'd writes, JSON, ``torch.load`` of plain tensors only."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from llama_jreg import UserError


def write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_text(path: Path, name: str) -> str | None:
    f = Path(path) / name
    return f.read_text().strip() if f.is_file() else None


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_plain(f: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects. A file
    holding anything else (a malicious or foreign pickle) is a UserError, not a traceback."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a damaged zip, ...: all mean "do not trust it"
        lines = [x.strip() for x in str(e).splitlines() if "Unsupported global" in x or "failed" in x.lower()]
        detail = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1] if lines else type(e).__name__).split(" Please")[0][:200]
        raise UserError(f"refusing to load {f}: not a plain tensor file written by llama-jreg ({detail})") from None
