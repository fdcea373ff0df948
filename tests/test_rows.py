"""The typed rows of metrics.jsonl (llama_jreg/rows.py): the committed study archives read back and
write out byte for byte, the optional keys (data.mixture, step-0 jump rows, task scores) keep their place, and
the readers' rules (torn last line, rows without a kind)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from llama_jreg import UserError
from llama_jreg.rows import (
    ROW_TYPES,
    EvalRow,
    JumpRow,
    TaskRow,
    TrainRow,
    kind_of,
    latest_by_step,
    read_metrics,
    read_rows,
    typed_rows,
)

ARCHIVE = Path(__file__).resolve().parent.parent / "docs" / "study"


def test_the_archived_rows_round_trip_byte_for_byte():
    """Every row of every metrics.jsonl under docs/study/ (written by earlier versions of the trainer) reads into
    its typed row, and that row writes the very same line (keys, order, values)."""
    files = sorted(ARCHIVE.rglob("metrics.jsonl"))
    assert files
    kinds: Counter = Counter()
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            d = json.loads(line)
            row = ROW_TYPES[d["kind"]].from_dict(d)
            assert json.dumps(row.to_dict(), allow_nan=False) == line, path
            kinds[d["kind"]] += 1
        assert len(typed_rows(read_metrics(path))) == len(lines)
    assert set(kinds) == {"train", "jump", "eval", "task"}, kinds
    step0 = [r for p in files for r in read_rows(p, JumpRow) if r.psi_batch == "validation"]
    assert step0 and all(r.step == 0 and r.psi == r.val_psi for r in step0)  # init_from runs' step-0 rows


def test_optional_keys_keep_their_place():
    names = [f.name for f in fields(TrainRow)]
    assert names[-1] == "tokens_by_source"
    train = {"kind": "train", **{name: i for i, name in enumerate(names[:-1])}, "tokens_by_source": {"web": 10}}
    assert list(TrainRow.from_dict(train).to_dict().items()) == list(train.items())
    assert "tokens_by_source" not in TrainRow(step=1).to_dict()  # absent without data.mixture

    ev = {"kind": "eval", "step": 5, "tokens": 40, "val_loss": 2.5, "val_ppl": 12.2, "val_loss/web": 2.0,
          "val_loss/code": 3.0}
    row = EvalRow.from_dict(ev)
    assert row.val_loss_by_source == {"web": 2.0, "code": 3.0} and list(row.to_dict().items()) == list(ev.items())
    assert list(EvalRow(step=1, val_loss=2.0, val_ppl=7.4).to_dict()) == ["kind", "step", "tokens", "val_loss",
                                                                          "val_ppl"]

    # a task result as tasks.evaluate_tasks returns it: the task's own keys sit between n and seconds
    result = {"task": "choice:x", "accuracy": 0.5, "n": 8, "acc_norm": 0.25, "seconds": 1.5}
    task = TaskRow.of_result(7, 56, result)
    assert task.scores == {"acc_norm": 0.25}
    assert list(task.to_dict().items()) == [("kind", "task"), ("step", 7), ("tokens", 56), *result.items()]
    jump = JumpRow(step=3, psi=[0.1, 0.3], zeta_L=20.0)  # as earlier versions wrote it: neither optional key
    assert not {"psi_batch", "val_psi_post_norm_L"} & set(jump.to_dict()) and JumpRow.from_dict(jump.to_dict()) == jump
    step0 = JumpRow(step=0, psi=[0.1], zeta_L=0.0, val_psi=[0.1], val_zeta_L=0.0, val_psi_post_norm_L=0.2,
                    psi_batch="validation")
    assert list(step0.to_dict())[-3:] == ["val_zeta_L", "val_psi_post_norm_L", "psi_batch"]


def test_read_rows_types_by_kind_and_by_marker(tmp_path):
    """Rows are typed by ``kind``; a hand-written row without one by the field it carries; a torn last line
    is skipped, a bad line elsewhere is a UserError."""
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "psi": [0.1, 0.2],
             "zeta_L": 10.0}, {"kind": "eval", "step": 2, "val_loss": 2.7}, {"step": 2, "task": "t", "accuracy": 1.0},
             {"kind": "jump", "step": 2, "psi": [0.2, 0.2], "zeta_L": 0.0}, {"step": 3, "note": "?"}]
    path.write_text("".join(json.dumps(d) + "\n" for d in lines) + '{"kind": "train", "st')
    assert [kind_of(d) for d in lines] == ["train", "train", "jump", "eval", "task", "jump", None]
    assert [r.loss for r in read_rows(path, TrainRow)] == [3.0, 2.5]
    jumps = read_rows(path, JumpRow)
    assert [r.zeta_L for r in jumps] == [10.0, 0.0] and [r.zeta_L for r in latest_by_step(jumps)] == [0.0]
    assert [type(r).__name__ for r in typed_rows(read_metrics(path))] == [
        "TrainRow", "TrainRow", "JumpRow", "EvalRow", "TaskRow", "JumpRow"]
    path.write_text('{"kind": "train"\n' + json.dumps(lines[0]) + "\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        read_rows(path, TrainRow)
