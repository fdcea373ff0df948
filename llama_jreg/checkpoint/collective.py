"""Collective error agreement for checkpoint writes and reads: every rank ends a step the same way.

A checkpoint save or load is a sequence of collective steps; a step that fails on one rank must fail on all of
them, or the others hang in the next collective. ``on_every_rank(fn)`` runs ``fn`` on every rank, ``on_main(fn)``
on rank 0 only; both then agree (one all-gather of the error strings) and raise the first rank's error on every
rank, as ``CheckpointError`` (a failed write) or ``UserError`` (``error=UserError``, a refused load). No-ops
around ``fn`` in one process.
"""

from __future__ import annotations

import torch.distributed as dist

from llama_jreg import UserError
from llama_jreg.distributed import broadcast_object, is_distributed


class CheckpointError(Exception):
    """A checkpoint step failed on some rank; raised on every rank with that rank's one-line reason."""


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main() -> bool:
    return rank_world()[0] == 0


def all_gather(obj, group=None) -> list:
    """Every rank's ``obj`` (in rank order) on every rank. Collective (over ``group`` when given)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def write_errors() -> tuple:
    """What a failed write raises: any Exception, and DCP's CheckpointException (a BaseException, which a
    plain ``except Exception`` lets through as a traceback)."""
    from torch.distributed.checkpoint.api import (
        CheckpointException,  # deferred: ~0.8 s to import (scripts/bench_imports.py)
    )

    return (Exception, CheckpointException)


def describe(e: BaseException) -> str:
    """One line for a failure: an OSError with its file; for DCP's CheckpointException (whose message holds
    every rank's traceback) the innermost cause."""
    if isinstance(e, (UserError, CheckpointError)):
        return str(e)
    text = str(e)
    if "Traceback" in text:
        last = [line.strip() for line in text.splitlines() if line.strip()]
        return last[-1][:300] if last else type(e).__name__
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        text = f"{e.strerror or e}{where}"
    return (text.splitlines() or [type(e).__name__])[0][:300]


def agree(err: str | None, *, error: type[Exception] = CheckpointError, group=None) -> None:
    """Raise ``error`` with the first rank's error on every rank when any rank has one. Collective."""
    first = next((e for e in all_gather(err, group) if e), None)
    if first:
        raise error(first)


def _run(fn, args, kw) -> tuple:
    try:
        return fn(*args, **kw), None
    except Exception as e:  # noqa: BLE001 - any failure to write or read (OSError, SafetensorError, UserError, ...)
        return None, describe(e)
    except BaseException as e:  # DCP's CheckpointException; KeyboardInterrupt and the like go on
        if isinstance(e, write_errors()[1]):
            return None, describe(e)
        raise


def on_every_rank(fn, *args, error: type[Exception] = CheckpointError, **kw):
    """``fn(*args, **kw)`` on every rank, then agree: its result, or ``error`` raised on every rank."""
    result, err = _run(fn, args, kw)
    agree(err, error=error)
    return result


def gather_on_every_rank(fn, *args, group=None, **kw) -> list:
    """``fn(*args, **kw)`` on every rank; every rank's result (in rank order) on every rank, or CheckpointError
    raised on every rank when any failed. One collective (over ``group`` when given)."""
    parts = all_gather(_run(fn, args, kw), group)
    first = next((e for _, e in parts if e), None)
    if first:
        raise CheckpointError(first)
    return [r for r, _ in parts]


def on_main(fn, *args, error: type[Exception] = CheckpointError, share: bool = False, **kw):
    """``fn(*args, **kw)`` on rank 0 only, then agree: its result (on rank 0; on every rank with ``share``), or
    ``error`` raised on every rank."""
    result, err = _run(fn, args, kw) if is_main() else (None, None)
    agree(err, error=error)
    return broadcast_object(result) if share else result
