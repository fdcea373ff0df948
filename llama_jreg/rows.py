"""The rows of ``<run.dir>/metrics.jsonl``, typed: one dataclass per ``kind`` (``TrainRow``, ``JumpRow``,
``EvalRow``, ``TaskRow``) with its fields, ``to_dict()`` (the JSON object the trainer writes, keys in the order
users see them) and ``from_dict()``; ``read_metrics`` reads a file's JSON objects and ``read_rows(path, kind)``
the rows of one kind, typed.

What each kind carries (units, when it is written) is described in ``train/metrics.py``; the README's "What a
run writes" is the user-facing summary. Everything here is plain JSON: no torch, so readers (plots, reports)
stay light.

A row without a ``kind`` (a hand-written file) counts as the kind whose marker field it carries: ``psi`` (a
list) for jump, ``loss`` for train, ``task`` for task, ``val_loss`` for eval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from llama_jreg import UserError


def _named(row, *skip: str) -> dict[str, Any]:
    """The row's dataclass fields in order, as a dict (without ``skip``)."""
    return {f.name: getattr(row, f.name) for f in fields(row) if f.name not in skip}


def _with_optional(row, *optional: str) -> dict[str, Any]:
    """``kind``, the row's fields in order, then the ``optional`` ones that are set (absent when None)."""
    d = {"kind": row.KIND, **_named(row, *optional)}
    d.update({key: getattr(row, key) for key in optional if getattr(row, key) is not None})
    return d


def _known(cls, d: dict, *skip: str) -> dict[str, Any]:
    """``cls``'s fields read from ``d`` (a missing key reads as None)."""
    return {f.name: d.get(f.name) for f in fields(cls) if f.name not in skip}


@dataclass
class TrainRow:
    """``kind=train``, every ``trainer.log_every`` steps."""

    KIND: ClassVar[str] = "train"
    step: int | None = None
    tokens: int | None = None
    loss: float | None = None  # lm_loss + z_loss + jreg_weight * jreg_loss; null on a skipped non-finite step
    lm_loss: float | None = None
    z_loss: float | None = None
    jreg_loss: float | None = None
    jreg_weight: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    memory: float | None = None
    memory_kind: str | None = None
    data_wait_frac: float | None = None
    nonfinite_skipped: int | None = None
    tokens_by_source: dict[str, int] | None = None  # data.mixture only (absent otherwise)

    def to_dict(self) -> dict:
        return _with_optional(self, "tokens_by_source")

    @classmethod
    def from_dict(cls, d: dict) -> TrainRow:
        return cls(**_known(cls, d))


@dataclass
class JumpRow:
    """``kind=jump``, every ``trainer.jump_every`` steps (and at step 0 of an ``init_from`` run)."""

    KIND: ClassVar[str] = "jump"
    step: int | None = None
    tokens: int | None = None
    psi: list[float] | None = None  # one per layer, on the step's training batch
    zeta_L: float | None = None
    psi_post_norm_L: float | None = None
    val_psi: list[float] | None = None  # on the first fixed validation batch
    val_zeta_L: float | None = None
    val_psi_post_norm_L: float | None = None  # absent in rows of earlier versions
    psi_batch: str | None = None  # "validation" when psi was measured there (step 0); absent otherwise

    def to_dict(self) -> dict:
        return _with_optional(self, "val_psi_post_norm_L", "psi_batch")

    @classmethod
    def from_dict(cls, d: dict) -> JumpRow:
        return cls(**_known(cls, d))


@dataclass
class EvalRow:
    """``kind=eval``, every ``trainer.eval_every`` steps and at the end. With ``data.mixture``, ``val_loss`` is
    the weighted mean of the sources' losses, written as ``val_loss/<name>`` keys."""

    KIND: ClassVar[str] = "eval"
    SOURCE_PREFIX: ClassVar[str] = "val_loss/"
    step: int | None = None
    tokens: int | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    val_loss_by_source: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"kind": self.KIND, **_named(self, "val_loss_by_source")}
        d.update({self.SOURCE_PREFIX + name: v for name, v in self.val_loss_by_source.items()})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalRow:
        by_source = {k[len(cls.SOURCE_PREFIX):]: v for k, v in d.items() if k.startswith(cls.SOURCE_PREFIX)}
        return cls(**_known(cls, d, "val_loss_by_source"), val_loss_by_source=by_source)


@dataclass
class TaskRow:
    """``kind=task``, one per task, every ``trainer.task_every`` steps, at the end, and at step 0 of an
    ``init_from`` run. ``scores`` holds the task's own keys (``acc_norm``, ``loglik``, ...; llama_jreg/tasks/),
    written between ``n`` and ``seconds``."""

    KIND: ClassVar[str] = "task"
    step: int | None = None
    tokens: int | None = None
    task: str | None = None
    accuracy: float | None = None
    n: int | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict:
        return {"kind": self.KIND, **_named(self, "scores", "seconds"), **self.scores, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> TaskRow:
        named = {f.name for f in fields(cls)} | {"kind"}
        return cls(**_known(cls, d, "scores"), scores={k: v for k, v in d.items() if k not in named})

    @classmethod
    def of_result(cls, step: int, tokens: int, result: dict) -> TaskRow:
        """The row of one entry of ``tasks.evaluate_tasks`` (``{"task", "accuracy", "n", ..., "seconds"}``)."""
        return cls.from_dict({**result, "step": step, "tokens": tokens})


Row = TrainRow | JumpRow | EvalRow | TaskRow
ROW_TYPES: dict[str, type] = {cls.KIND: cls for cls in (TrainRow, JumpRow, EvalRow, TaskRow)}
R = TypeVar("R", TrainRow, JumpRow, EvalRow, TaskRow)


def kind_of(d: dict) -> str | None:
    """A row's kind: its ``kind`` key, else the kind whose marker field it carries (see the module docstring)."""
    if "kind" in d:
        return d["kind"]
    if isinstance(d.get("psi"), list):
        return JumpRow.KIND
    for key, kind in (("loss", TrainRow.KIND), ("task", TaskRow.KIND), ("val_loss", EvalRow.KIND)):
        if key in d:
            return kind
    return None


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON rows of a metrics.jsonl. A run killed mid-write leaves at most one torn last line, which is
    skipped; a bad line anywhere else means the file is corrupt (UserError)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; the metrics file is corrupt") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def rows_of(rows: list[dict], row_type: type[R]) -> list[R]:
    """The rows of ``row_type``'s kind among JSON rows, typed, in file order."""
    return [row_type.from_dict(r) for r in rows if kind_of(r) == row_type.KIND]


def typed_rows(rows: list[dict]) -> list[Row]:
    """Every row of a known kind, typed, in file order."""
    return [ROW_TYPES[kind_of(r)].from_dict(r) for r in rows if kind_of(r) in ROW_TYPES]


def read_rows(path: str | Path, row_type: type[R]) -> list[R]:
    """The rows of one kind of a metrics.jsonl, typed, in file order (``read_metrics``' torn-line rule)."""
    return rows_of(read_metrics(path), row_type)


def latest_by_step(rows: list[R]) -> list[R]:
    """The last row of each step (a resumed run may log a step twice), sorted by step."""
    return sorted({r.step: r for r in rows}.values(), key=lambda r: r.step)
