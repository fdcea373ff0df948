"""Task specs: the strings of ``tasks=[...]`` and ``llama-jreg eval-tasks --tasks``, parsed and checked.

Syntax: ``KIND[:ARG][@N]``

* ``induction``        in-context recall on the run's synthetic induction data (``data=induction``)
* ``cloze`` / ``cloze:FILE``   last-word prediction on the run's validation split / on a ``.txt`` (passages
  separated by blank lines) or ``.jsonl`` (a ``text`` field per line) file
* ``choice:FILE``      multiple choice from a jsonl, ``{"context": str, "choices": [str, ...], "gold": int}``
* ``lm-eval:NAME``     an lm-eval-harness task by name, or ``lm-eval:path/to/task.yaml`` (a local task YAML)
* ``@N``               at most N examples (default ``trainer.task_n``; ``--n`` for eval-tasks)

Parsing touches no file: it runs in config validation, before anything heavy. A task's display ``name`` is the
key of its metrics (``task/NAME/accuracy``): the kind, plus the file's stem or the lm-eval task name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llama_jreg import UserError

KINDS = ("induction", "cloze", "choice", "lm-eval")
SYNTAX = "induction, cloze, cloze:FILE, choice:FILE or lm-eval:NAME, each optionally @N (examples), e.g. cloze@200"


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    arg: str | None  # FILE or lm-eval task name / yaml path
    n: int | None  # examples at most; None = the default
    text: str  # as written

    @property
    def name(self) -> str:
        if self.arg is None:
            return self.kind
        if self.kind == "lm-eval" and not self.arg.endswith((".yaml", ".yml")):
            return f"lm-eval:{self.arg}"
        return f"{self.kind}:{Path(self.arg).stem}"


def parse_spec(text: str) -> TaskSpec:
    s = str(text).strip()
    n = None
    m = re.fullmatch(r"(.*)@([^@/]*)", s)
    if m:
        s, count = m.group(1), m.group(2)
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"task {text!r}: the part after @ must be a number of examples >= 1, e.g. cloze@200")
        n = int(count)
    kind, sep, arg = s.partition(":")
    kind = kind.strip()
    arg = arg.strip() if sep else None
    if kind not in KINDS:
        raise UserError(f"unknown task {text!r}; choose {SYNTAX}")
    if kind == "induction" and arg is not None:
        raise UserError(f"task {text!r}: induction takes no argument (it uses the run's data.induction settings); "
                        "write induction or induction@N")
    if kind in ("choice", "lm-eval") and not arg:
        what = "a jsonl file: choice:FILE" if kind == "choice" else "a task name or YAML: lm-eval:NAME"
        raise UserError(f"task {text!r} needs {what}")
    if kind == "cloze" and sep and not arg:
        raise UserError(f"task {text!r}: give a file after the colon (cloze:FILE) or none (cloze: the run's "
                        "validation split)")
    return TaskSpec(kind, arg, n, str(text).strip())


def parse_specs(texts) -> list[TaskSpec]:
    """Parse a list of task specs; two tasks with the same name are refused (their metrics would collide)."""
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    specs = [parse_spec(t) for t in texts]
    seen: dict[str, str] = {}
    for sp in specs:
        if sp.name in seen:
            raise UserError(f"tasks {seen[sp.name]!r} and {sp.text!r} have the same name {sp.name!r}; list each "
                            "task once (rename one of the files)")
        seen[sp.name] = sp.text
    return specs
