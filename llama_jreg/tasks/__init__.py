"""Task evaluation: accuracy on tasks, inside the trainer (``tasks=[...]``) and on any model (``llama-jreg
eval-tasks``).

Tasks (spec syntax in ``llama_jreg.task_spec``): ``induction`` (in-context recall on the run's synthetic
induction data), ``cloze`` / ``cloze:FILE`` (last-word prediction), ``choice:FILE`` (multiple choice from a
jsonl, lm-eval-harness's ``acc`` / ``acc_norm``), ``lm-eval:NAME`` (an lm-eval-harness log-likelihood task).

``build_tasks(specs, ctx)`` reads and checks every task's data (a malformed row, a gold index out of range, a
task that needs a source the run lacks: ``UserError``) - the trainer calls it during set-up, before any step.
``evaluate_tasks(model, tasks, ...)`` evaluates them: every task's examples are fixed at build time (the same
examples every call, on every rank count); rank r scores examples r, r + W, r + 2W, ... and the per-task sums
(correct, count, log-likelihoods) are all-reduced, so W ranks give the numbers of one. Each task gives one row
``{"task": NAME, "accuracy": ..., "n": ..., "seconds": ..., ...task-specific keys}``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from llama_jreg.task_spec import TaskSpec, parse_specs
from llama_jreg.tasks import choice, cloze, induction, lmeval
from llama_jreg.tasks.base import Task, TaskContext
from llama_jreg.tasks.scoring import n_batches, score_requests

__all__ = ["Task", "TaskContext", "TaskSpec", "build_tasks", "evaluate_tasks", "format_rows", "parse_specs",
           "context_for_run"]


def build_tasks(specs, ctx: TaskContext) -> list[Task]:
    """The tasks of ``specs`` (strings or TaskSpecs), their data read and checked."""
    builders = {"induction": induction.build, "cloze": cloze.build, "choice": choice.build, "lm-eval": lmeval.build}
    parsed = [s if isinstance(s, TaskSpec) else None for s in specs]
    if any(p is None for p in parsed):
        parsed = parse_specs(list(specs))
    return [builders[s.kind](s, ctx) for s in parsed]


def context_for_run(bundle, data_cfg, *, max_length: int, default_n: int, where: str = "this run") -> TaskContext:
    """The TaskContext of a training run (its ``DataBundle`` already built)."""
    return TaskContext(tokenizer=bundle.tokenizer, max_length=max_length, default_n=default_n,
                       data_source=data_cfg.source, where=where, bundle_fn=lambda: bundle)


def _all_reduce_max(v: int, device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return v
    t = torch.tensor([v], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


@torch.no_grad()
def evaluate_tasks(model: torch.nn.Module, tasks: list[Task], *, rank: int = 0, world: int = 1,
                   device: torch.device | str = "cpu", batch_size: int = 8,
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> list[dict]:
    """One row per task (see the module docstring). Collective when ``world > 1``: every rank calls it."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for task in tasks:
            start = time.perf_counter()
            mine = task.examples[rank::world]
            per_example = [task.requests(ex) for ex in mine]
            flat = [r for rs in per_example for r in rs]
            forwards = _all_reduce_max(n_batches(flat, batch_size), device) if world > 1 else 0
            scores = score_requests(model, flat, batch_size=batch_size, device=device, autocast=autocast,
                                    pad_to_batches=forwards)
            keys = ("n",) + tuple(task.sum_keys)
            sums = dict.fromkeys(keys, 0.0)
            k = 0
            for ex, rs in zip(mine, per_example):
                part = task.reduce(ex, scores[k:k + len(rs)])
                k += len(rs)
                sums["n"] += 1.0
                for key, v in part.items():
                    sums[key] += v
            vec = torch.tensor([sums[key] for key in keys], dtype=torch.float64, device=device)
            if world > 1 and dist.is_initialized():  # the per-task sums of all ranks
                dist.all_reduce(vec, op=dist.ReduceOp.SUM)
            sums = dict(zip(keys, vec.tolist()))
            rows.append({"task": task.name, **task.row(sums), "seconds": time.perf_counter() - start})
    finally:
        model.train(was_training)
    return rows


def format_rows(rows: list[dict]) -> str:
    """One line per task: ``NAME  accuracy 0.1234  (n=200, ...)``."""
    lines = []
    for r in rows:
        extra = "  ".join(f"{k} {v:.4f}" for k, v in r.items()
                          if k not in ("task", "accuracy", "n", "seconds", "kind", "step", "tokens")
                          and isinstance(v, float))
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        lines.append(f"{r['task']:<24} accuracy {acc}  {extra}  (n={r['n']}, {r['seconds']:.1f} s)".rstrip())
    return "\n".join(lines)
