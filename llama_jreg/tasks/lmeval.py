"""``lm-eval:NAME``: an lm-eval-harness task, scored by our sharded runner.

lm-eval builds each document's requests (its own prompt: ``fewshot_context`` with the task's configured
number of shots, ``construct_requests``) and turns our log-likelihoods into per-document metrics
(``process_results``); we only score the (context, continuation) pairs, tokenised as our lm-eval adapter does.
So a task gives the numbers ``llama-jreg lm-eval`` gives, on the same documents. Only log-likelihood tasks
(``multiple_choice``, ``loglikelihood``) with an ``acc`` metric can run here; use ``llama-jreg lm-eval`` for
generation and perplexity tasks. ``accuracy`` is lm-eval's ``acc``; every other metric that lm-eval averages
over documents (``acc_norm``, ...) is reported under its own name. A few-shot task draws each document's
examples from a seed of the document's index, so every rank count builds the same prompts (lm-eval's own runs
draw them from one stream: few-shot numbers can differ from ``llama-jreg lm-eval``'s; zero-shot ones agree).

``lm-eval:NAME`` needs the task's dataset (the HF hub, or the HF datasets cache). Offline, point at a local
copy: a task YAML whose ``dataset_path: json`` reads a local file (``dataset_kwargs: {data_files: {test:
FILE}}``), given as ``lm-eval:path/to/task.yaml``; or convert the rows to ``choice:FILE``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llama_jreg import UserError
from llama_jreg.task_spec import TaskSpec
from llama_jreg.tasks.base import SELECT_SEED, Task, TaskContext, select
from llama_jreg.tasks.scoring import Request, Score, encode_pair, pair_request, prefix_token

LOCAL_COPY = ("point at a local copy: a task YAML over a local file (dataset_path: json, dataset_kwargs: "
              "{data_files: {test: FILE}}) as lm-eval:path/to/task.yaml, or the rows as choice:FILE")


def _load_task(spec: TaskSpec):
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise UserError(f"task {spec.text} needs lm-eval: pip install 'llama-jreg[eval]'") from None
    arg = spec.arg
    if arg.endswith((".yaml", ".yml")):
        path = Path(arg).expanduser()
        if not path.is_file():
            raise UserError(f"task {spec.text}: no such task YAML; give an lm-eval task name or a task .yaml file")
        try:
            name = (yaml.safe_load(path.read_text()) or {}).get("task")
        except (yaml.YAMLError, AttributeError):
            name = None
        if not isinstance(name, str):
            raise UserError(f"task {spec.text}: {arg} is not an lm-eval task YAML (no `task:` name)")
        manager = TaskManager(include_path=str(path.parent.resolve()), include_defaults=False)
    else:
        name = arg
        manager = TaskManager()
    if name not in manager.all_tasks:
        raise UserError(f"task {spec.text}: lm-eval has no task {name!r}; see `lm_eval --tasks list`, or give a "
                        "task YAML: lm-eval:path/to/task.yaml")
    try:
        task_dict = get_task_dict([name], manager)
    except Exception as e:  # noqa: BLE001 - datasets / hub raise many kinds when the data is out of reach
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"task {spec.text}: lm-eval could not load the data of {name!r} ({type(e).__name__}: "
                        f"{detail}); offline, {LOCAL_COPY}") from None
    task = task_dict.get(name)
    if task is None or not hasattr(task, "process_results"):
        raise UserError(f"task {spec.text}: {name!r} is a group of lm-eval tasks; list its tasks one by one")
    return name, task


class LmEvalTask(Task):
    def __init__(self, spec: TaskSpec, task, docs: list, tok, max_length: int, n: int, metrics: list[str]):
        self.task, self.tok, self.max_length, self.prefix = task, tok, max_length, prefix_token(tok)
        self.metrics = metrics
        self.sum_keys = tuple(metrics)
        super().__init__(spec, [docs[i] for i in select(len(docs), n)])

    def _instances(self, doc_id: int, doc) -> list:
        t = self.task
        shots = t.config.num_fewshot or 0
        if shots:  # few-shot examples drawn from a seed of the document's index: the same prompt on any rank
            t.set_fewshot_seed(seed=SELECT_SEED + doc_id)
        ctx = t.fewshot_context(doc, num_fewshot=shots, gen_prefix=t.doc_to_prefix(doc))
        inst = t.construct_requests(doc=doc, ctx=ctx, metadata=(t.config.task, doc_id, 1))
        return inst if isinstance(inst, list) else [inst]

    def requests(self, example) -> list[Request]:
        doc_id, doc = example
        return [pair_request(*encode_pair(self.tok.encode, self.prefix, *inst.args), self.max_length)
                for inst in self._instances(doc_id, doc)]

    def reduce(self, example, scores: list[Score]) -> dict[str, float]:
        res = self.task.process_results(example[1], [(s.loglik, s.greedy) for s in scores])
        return {k: float(res[k]) for k in self.metrics}

    def row(self, sums):
        n = max(sums["n"], 1.0)
        out = {"accuracy": sums["acc"] / n if sums["n"] else None, "n": int(sums["n"])}
        out.update({k: sums[k] / n for k in self.metrics if k != "acc"})
        return out


def build(spec: TaskSpec, ctx: TaskContext) -> LmEvalTask:
    tok = ctx.need_tokenizer(spec)
    name, task = _load_task(spec)
    kind = task.OUTPUT_TYPE
    if kind not in ("multiple_choice", "loglikelihood"):
        raise UserError(f"task {spec.text}: {name!r} is a {kind} task; tasks here score log-likelihoods "
                        "(multiple_choice, loglikelihood): run it with `llama-jreg lm-eval`")
    from lm_eval.api.metrics import mean  # deferred: ~0.9 s to import (scripts/bench_imports.py)

    metrics = [k for k, agg in task.aggregation().items() if agg is mean]
    if "acc" not in metrics:
        raise UserError(f"task {spec.text}: {name!r} reports no mean `acc` metric; run it with `llama-jreg lm-eval`")
    docs = list(enumerate(task.eval_docs))
    return LmEvalTask(spec, task, docs, tok, ctx.max_length, spec.n or ctx.default_n, metrics)
