"""``choice:FILE``: multiple choice from a local jsonl, one item a line:

    {"context": "A man is sitting on a roof. He", "choices": ["starts pulling up roofing.", "..."], "gold": 0}

(the shape HellaSwag, PIQA and ARC take in lm-eval-harness). Each choice is scored by the log-likelihood of
``" " + choice`` after the context (lm-eval's default ``target_delimiter``), tokenised as lm-eval does
(``scoring.encode_pair``). ``accuracy``: the gold choice has the highest log-likelihood; ``acc_norm``: the
highest log-likelihood divided by the choice's length in characters (without the delimiter). Both are
lm-eval-harness's ``acc`` / ``acc_norm`` of a ``multiple_choice`` task, ties going to the first choice
(numpy's argmax), as there. ``n`` items are picked by ``base.select`` (seeded).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llama_jreg import UserError
from llama_jreg.task_spec import TaskSpec
from llama_jreg.tasks.base import Task, TaskContext, _ratio, select
from llama_jreg.tasks.scoring import Request, Score, encode_pair, pair_request, prefix_token

SHAPE = '{"context": str, "choices": [str, ...], "gold": int}'
TARGET_DELIMITER = " "


def read_items(path: str) -> list[dict]:
    """The items of a choice jsonl; a malformed line is refused with its number."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"task choice:{path}: no such file; give a jsonl with one {SHAPE} a line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"task choice:{path} is not UTF-8 text; convert it to UTF-8") from None
    items = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"task choice:{path} line {i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not JSON ({e.msg}); each line must be {SHAPE}") from None
        if not isinstance(row, dict):
            raise UserError(f"{where} is not a JSON object; each line must be {SHAPE}")
        ctx, choices, gold = row.get("context"), row.get("choices"), row.get("gold")
        if not isinstance(ctx, str):
            raise UserError(f"{where}: \"context\" must be a string; each line must be {SHAPE}")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings; each line must "
                            f"be {SHAPE}")
        if not isinstance(gold, int) or isinstance(gold, bool):
            raise UserError(f"{where}: \"gold\" must be an integer index into \"choices\"; each line must be {SHAPE}")
        if not 0 <= gold < len(choices):
            raise UserError(f"{where}: gold={gold} is out of range for {len(choices)} choices (0..{len(choices) - 1}); "
                            "fix the index")
        items.append({"context": ctx, "choices": choices, "gold": gold})
    return items


class ChoiceTask(Task):
    sum_keys = ("correct", "count", "correct_norm")

    def __init__(self, spec: TaskSpec, items: list[dict], tok, max_length: int, n: int):
        self.tok, self.max_length, self.prefix = tok, max_length, prefix_token(tok)
        super().__init__(spec, [items[i] for i in select(len(items), n)])

    def requests(self, item: dict) -> list[Request]:
        return [pair_request(*encode_pair(self.tok.encode, self.prefix, item["context"], TARGET_DELIMITER + c),
                             self.max_length) for c in item["choices"]]

    def reduce(self, item: dict, scores: list[Score]) -> dict[str, float]:
        lls = np.array([s.loglik for s in scores])
        lengths = np.array([float(len(c)) for c in item["choices"]])
        return {"correct": float(np.argmax(lls) == item["gold"]), "count": 1.0,
                "correct_norm": float(np.argmax(lls / lengths) == item["gold"])}

    def row(self, sums):
        return {**super().row(sums), "acc_norm": _ratio(sums["correct_norm"], sums["count"])}


def build(spec: TaskSpec, ctx: TaskContext) -> ChoiceTask:
    tok = ctx.need_tokenizer(spec)
    return ChoiceTask(spec, read_items(spec.arg), tok, ctx.max_length, spec.n or ctx.default_n)
