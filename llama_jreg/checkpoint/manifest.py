"""The manifest: ``manifest.json``, the last file of a checkpoint, lists every other file with its sha256 and
size, the step, the format (``full`` | ``sharded``) and the checkpoint format version.

``format_version`` (``FORMAT_VERSION``) numbers the on-disk layout; a manifest without it is version 1 (written
before the field existed; the same layout). This code reads ``READABLE_VERSIONS``; a checkpoint of any other
version is refused with one line naming it. A change of the layout bumps the version and keeps a reader for the
old one (tests/fixtures/checkpoints/ holds a checkpoint of every version, resumed by
tests/test_checkpoint_compat.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from llama_jreg.checkpoint.collective import gather_on_every_rank, on_main, rank_world
from llama_jreg.checkpoint.fileio import write_json
from llama_jreg.files import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)


def files_of(path: Path) -> list[str]:
    """Every file under a checkpoint dir, as a path relative to it (``state/__0_0.distcp``), sorted."""
    return sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file())


def write_manifest(tmp: Path, step: int, fmt: str, files: dict) -> None:
    write_json(tmp / MANIFEST, {"format_version": FORMAT_VERSION, "step": step, "format": fmt, "files": files})


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
    unlisted = sorted(n for n in files_of(path) if n != MANIFEST and n not in files)
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


def format_version(path: Path):
    """The checkpoint format version its manifest records (1 when the field is absent), as written."""
    return json.loads((Path(path) / MANIFEST).read_text()).get("format_version", 1)


def version_error(path: Path, use: str = "resume") -> str | None:
    """None when this code reads the checkpoint's format version, else one line naming it: for ``resume=``
    (``use="resume"``) or for a command that reads the model (``use="read"``)."""
    version = format_version(path)
    if isinstance(version, int) and not isinstance(version, bool) and version in READABLE_VERSIONS:
        return None
    newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
    known = ", ".join(map(str, READABLE_VERSIONS))
    return ((f"resume={path}" if use == "resume" else str(path)) + f": checkpoint format version {version!r} is "
            + ("newer than this llama-jreg reads" if newer else "not one this llama-jreg knows")
            + f" (it reads version {known}); {use} it with the llama-jreg that wrote it, or upgrade llama-jreg")


def largest_first(tmp: Path) -> list[str]:
    return sorted(files_of(tmp), key=lambda n: -(tmp / n).stat().st_size)


def hash_share(tmp: Path, names: list[str], rank: int, world: int) -> dict:
    """{relative path: {sha256, bytes}} of this rank's share of ``names`` (file i by rank i mod world)."""
    return {n: {"sha256": sha256_file(tmp / n), "bytes": (tmp / n).stat().st_size} for n in names[rank::world]}


def hash_files(tmp: Path) -> dict:
    """{relative path: {sha256, bytes}} of every file under ``tmp``, hashed in parallel (file i by rank
    i mod world, largest first). Collective; raises CheckpointError on every rank when any rank failed."""
    rank, world = rank_world()
    names = on_main(largest_first, tmp, share=True)
    return merge(gather_on_every_rank(hash_share, tmp, names, rank, world))


def merge(parts: list[dict]) -> dict:
    return {k: v for part in parts for k, v in part.items()}
