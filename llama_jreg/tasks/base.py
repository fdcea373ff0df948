"""What every task shares: the context it is built from, deterministic example selection, the Task interface."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llama_jreg import UserError
from llama_jreg.task_spec import TaskSpec
from llama_jreg.tasks.scoring import Request, Score

#: the seed of example selection: fixed, so every run and every step evaluates the same examples of a file
SELECT_SEED = 0


def select(count: int, n: int) -> list[int]:
    """``n`` of ``count`` example indices, the same every time (seeded, independent of rank, world size,
    step and run seed), in increasing order; all of them when ``n >= count``."""
    if n >= count:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng(SELECT_SEED).choice(count, size=n, replace=False))


@dataclass
class TaskContext:
    """What a task may need from the model's run. ``bundle`` returns the run's ``DataBundle`` (its tokenizer
    and validation split), built on first use; it is None for a model that is not one of our runs."""

    tokenizer: Any  # encode(text) -> ids, decode(ids); None for token-id data (induction)
    max_length: int  # model context
    default_n: int  # examples per task without @N
    data_source: str | None  # the run's data.source (None: not one of our runs, no data overrides)
    where: str  # for messages: "this run" / the model path
    bundle_fn: Callable[[], Any] | None = None
    _bundle: Any = field(default=None, repr=False)

    def bundle(self):
        if self._bundle is None and self.bundle_fn is not None:
            self._bundle = self.bundle_fn()
        return self._bundle

    def need_tokenizer(self, spec: TaskSpec):
        if self.tokenizer is None:
            why = ("its data is token ids (data=induction), not text" if self.data_source == "induction"
                   else "it has no tokenizer")
            raise UserError(f"task {spec.text} needs text and a tokenizer, but {self.where} has none: {why}; drop "
                            "the task or use a model with a tokenizer")
        return self.tokenizer


class Task:
    """One task, its examples already selected. The runner (``llama_jreg.tasks.evaluate_tasks``) scores
    ``requests(example)`` of this rank's examples, adds up ``reduce(example, scores)`` (keys ``sum_keys``; it
    also counts examples as ``n``), all-reduces the sums over ranks and turns them into a row with ``row``."""

    sum_keys: tuple[str, ...] = ("correct", "count")

    def __init__(self, spec: TaskSpec, examples: list):
        if not examples:
            raise UserError(f"task {spec.text} has no examples to evaluate; give it data")
        self.spec, self.name, self.examples = spec, spec.name, examples

    def requests(self, example) -> list[Request]:
        raise NotImplementedError

    def reduce(self, example, scores: list[Score]) -> dict[str, float]:
        raise NotImplementedError

    def row(self, sums: dict[str, float]) -> dict[str, Any]:
        """``accuracy`` = correct / count, ``n`` = examples evaluated."""
        return {"accuracy": _ratio(sums["correct"], sums["count"]), "n": int(sums["n"])}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None
