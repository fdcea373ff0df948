"""``induction``: in-context recall on the run's synthetic induction data (``llama_jreg.data.synthetic``).

In a bigram-with-trigger sequence, every occurrence of a trigger q_k is followed by that sequence's output o_k.
The second and later occurrences of o_k (``eval_mask``) can only be predicted by copying from the context (an
induction head); the accuracy is the fraction of those labels that are the model's top-1 prediction, over all
such labels of the evaluated sequences (token-level). The sequences are the first ``n`` of the run's own
validation split, generated from ``data.induction.*`` and ``seed`` (from a run dir's config.yaml for
``eval-tasks``), so a run is evaluated on its own distribution. ``scoring.induction_hits`` is the one definition,
used by this task and by ``llama-jreg eval`` (``analysis/logit_lens.py``, every logit-lens layer).
"""

from __future__ import annotations

from llama_jreg import UserError
from llama_jreg.data.synthetic import InductionSequences
from llama_jreg.task_spec import TaskSpec
from llama_jreg.tasks.base import Task, TaskContext
from llama_jreg.tasks.scoring import Request, Score


class InductionTask(Task):
    def __init__(self, spec: TaskSpec, sequences, n: int):
        self.sequences = sequences
        super().__init__(spec, list(range(min(n, len(sequences)))))

    def requests(self, index: int) -> list[Request]:
        tokens, mask, _, _ = self.sequences.sequence(index)
        return [Request(tokens.tolist(), 0, mask.tolist())]

    def reduce(self, index: int, scores: list[Score]) -> dict[str, float]:
        return {"correct": scores[0].hits, "count": scores[0].count}

    def row(self, sums):
        return {**super().row(sums), "n_tokens": int(sums["count"])}


def build(spec: TaskSpec, ctx: TaskContext) -> InductionTask:
    bundle = ctx.bundle() if ctx.data_source == "induction" else None
    if bundle is None or not isinstance(bundle.validation, InductionSequences):
        src = f"data={ctx.data_source}" if ctx.data_source else "no run config"
        raise UserError(f"task {spec.text} needs the synthetic induction source, but {ctx.where} has {src}; train "
                        "with data=induction (for eval-tasks on another model add data=induction "
                        "data.induction.vocab_size=V), or drop the task")
    return InductionTask(spec, bundle.validation, spec.n or ctx.default_n)
