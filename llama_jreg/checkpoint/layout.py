"""Where a run's checkpoints live and which one to resume: ``<run.dir>/checkpoints/step_XXXXXXXX/``, the two
formats (``full`` | ``sharded``), discovery (``list_checkpoints``, ``find_latest``) and ``resolve_resume``."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from llama_jreg import UserError
from llama_jreg.checkpoint.collective import on_main
from llama_jreg.checkpoint.manifest import MANIFEST, verify, version_error

STEP_RE = re.compile(r"^step_(\d{8})$")
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


def _choose(resume: str, run_dir: Path) -> Path | None:
    """Rank 0: the checkpoint ``resume`` names (verified), None for a fresh start; UserError when refused."""
    if resume == "auto":
        latest = find_latest(run_dir)
        found = list_checkpoints(run_dir)
        if latest is None and found:  # never restart from scratch over a run's damaged checkpoints
            raise UserError(f"resume=auto: no checkpoint in {checkpoints_dir(run_dir)} verifies ({verify(found[-1])}); "
                            "move the damaged ones away to start over, or use resume=PATH")
        return latest
    path = Path(resume).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir() and not (path / MANIFEST).exists():
        latest = find_latest(path)  # a run dir: take its newest good checkpoint
        if latest is None:
            raise UserError(f"resume={resume}: no complete checkpoint in it")
        return latest
    reason = verify(path)
    if reason is not None:
        raise UserError(f"resume={resume}: bad checkpoint: {reason}")
    return path


def resolve_resume(resume: str | None, run_dir: Path, remote=None) -> Path | None:
    """The checkpoint to resume from (decided on rank 0, the same on every rank), or None to start fresh.
    A checkpoint of a format version this code does not read is refused (UserError naming the version).
    ``remote`` (remote.RemoteCheckpoints, ``trainer.ckpt_dir``): with ``resume=auto`` its newest verified
    checkpoint is first downloaded into ``<run.dir>/checkpoints``."""

    def choose() -> str | None:
        if remote is not None:
            remote.check()  # the store answers and the bucket exists: before any step
        if resume == "auto" and remote is not None:
            remote.fetch_latest(checkpoints_dir(run_dir))
        path = _choose(resume, run_dir) if resume else None
        if path is not None and (err := version_error(path)):
            raise UserError(err)
        return str(path) if path is not None else None

    path = on_main(choose, error=UserError, share=True)
    return Path(path) if path else None
