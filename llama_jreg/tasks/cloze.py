"""``cloze`` / ``cloze:FILE``: LAMBADA-style last-word prediction on held-out passages.

A passage's target is its last whitespace-separated word, trailing punctuation removed; the context is all
text before it. The example is correct when the greedy continuation of the context reproduces every token of
the word (each of its tokens is the top-1 prediction given the context and the word's earlier tokens). Also
reported: the word's log-likelihood (``loglik``, summed over its tokens, mean over passages) and per token
(``loglik_per_token``). Context and word are tokenised as lm-eval-harness does (``scoring.encode_pair``).

Passages: ``cloze`` takes the run's validation split (its first ``data.val_sequences`` windows, each decoded
back to text; a window holding several documents gives its longest one); ``cloze:FILE`` a ``.txt`` file
(passages separated by blank lines) or a ``.jsonl`` file (one ``{"text": ...}`` object a line). ``n`` passages
are picked by ``base.select`` (seeded).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llama_jreg import UserError
from llama_jreg.task_spec import TaskSpec
from llama_jreg.tasks.base import Task, TaskContext, _ratio, select
from llama_jreg.tasks.scoring import Request, Score, encode_pair, pair_request, prefix_token


def split_last_word(text: str) -> tuple[str, str] | None:
    """(context, word) of a passage, or None when it has no context before its last word."""
    body = re.sub(r"[\W_]+$", "", text.rstrip())
    words = body.split()
    if len(words) < 2:
        return None
    word = words[-1]
    return body[:len(body) - len(word)], word


class ClozeTask(Task):
    sum_keys = ("correct", "count", "loglik", "word_tokens")

    def __init__(self, spec: TaskSpec, passages: list[tuple[str, str]], tok, max_length: int, n: int):
        self.tok, self.max_length, self.prefix = tok, max_length, prefix_token(tok)
        super().__init__(spec, [passages[i] for i in select(len(passages), n)])

    def requests(self, example: tuple[str, str]) -> list[Request]:
        ctx, word = encode_pair(self.tok.encode, self.prefix, *example)
        return [pair_request(ctx, word, self.max_length)]

    def reduce(self, example, scores: list[Score]) -> dict[str, float]:
        s = scores[0]
        return {"correct": float(s.greedy), "count": 1.0, "loglik": s.loglik, "word_tokens": float(s.count)}

    def row(self, sums):
        return {**super().row(sums), "loglik": _ratio(sums["loglik"], sums["count"]),
                "loglik_per_token": _ratio(sums["loglik"], sums["word_tokens"])}


def read_passages(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"task cloze:{path}: no such file; give a .txt (passages separated by blank lines) or a "
                        ".jsonl ({{\"text\": ...}} a line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"task cloze:{path} is not UTF-8 text; convert it to UTF-8") from None
    if p.suffix != ".jsonl":
        return [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"task cloze:{path} line {i} is not JSON ({e.msg}); each line must be "
                            "{\"text\": \"...\"}") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"task cloze:{path} line {i} has no string \"text\" field; each line must be "
                            "{\"text\": \"...\"}")
        out.append(row["text"])
    return out


def validation_passages(ctx: TaskContext, tok) -> list[str]:
    """The run's validation windows decoded to text (the longest document piece of each window)."""
    bundle = ctx.bundle()
    if bundle is None or bundle.validation is None:
        raise UserError(f"task cloze needs held-out text, but {ctx.where} is not one of our runs (no validation "
                        "split); give a file: cloze:FILE")
    val = bundle.validation
    size = len(val) if bundle.val_limit is None else min(len(val), bundle.val_limit)
    special = {i for i in (getattr(tok, "bos_id", -1), getattr(tok, "eos_id", -1)) if i is not None and i >= 0}
    out = []
    for i in range(size):
        pieces, cur = [], []
        for t in val.window(i).tolist():
            if t in special:
                pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        pieces.append(cur)
        out.append(tok.decode(max(pieces, key=len)))
    return out


def build(spec: TaskSpec, ctx: TaskContext) -> ClozeTask:
    tok = ctx.need_tokenizer(spec)
    texts = read_passages(spec.arg) if spec.arg else validation_passages(ctx, tok)
    passages = [pw for pw in map(split_last_word, texts) if pw is not None]
    if not passages:
        where = spec.arg or f"the validation split of {ctx.where}"
        raise UserError(f"task {spec.text}: no passage of {where} has a word after some context; give passages "
                        "of several words")
    return ClozeTask(spec, passages, tok, ctx.max_length, spec.n or ctx.default_n)
