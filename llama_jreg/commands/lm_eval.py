"""`llama-jreg lm-eval CHECKPOINT --tasks ...`: evaluate a model with EleutherAI's lm-evaluation-harness.

Needs the ``eval`` extra: ``pip install 'llama-jreg[eval]'`` (lm-eval >= 0.4.5). ``LlamaJregLM`` is an
lm-eval ``LM`` adapter for our model (any model ``load_model`` accepts: our checkpoints, HF Llama dirs, GGUF):

* ``loglikelihood``: log p(continuation | context), and whether the continuation is the greedy one;
* ``loglikelihood_rolling``: the whole-document log-likelihood in disjoint windows of the model context
  (lm-eval's rolling scheme, first token conditioned on BOS or, without one, EOS);
* ``generate_until``: greedy decoding until a stop string, EOS or ``max_gen_toks``.

Tasks are lm-eval task names; ``--include-path DIR`` adds your own task YAMLs (e.g. over a local jsonl).
The adapter is registered with lm-eval as ``llama-jreg`` (``lm_eval --model llama-jreg
--model_args path=CHECKPOINT`` works once this module is imported).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from llama_jreg import UserError, help_text
from llama_jreg.files import write_json_result
from llama_jreg.load import load_model, need_tokenizer, pick_device
from llama_jreg.tasks.scoring import encode_pair, pair_request, score_requests

try:  # optional extra
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model

    HAS_LM_EVAL = True
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    _LMBase = object
    HAS_LM_EVAL = False

    def register_model(*_names):
        return lambda cls: cls


def require_lm_eval() -> None:
    if not HAS_LM_EVAL:
        raise UserError("lm-eval is not installed; install the extra with `pip install 'llama-jreg[eval]'`")


@register_model("llama-jreg")
class LlamaJregLM(_LMBase):
    """lm-eval adapter for our Llama (``path`` = anything ``load_model`` accepts, or pass ``model``+``tokenizer``)."""

    def __init__(self, path: str | None = None, *, model=None, tokenizer=None, batch_size: int | str = 8,
                 device: str = "auto", max_length: int | None = None, max_gen_toks: int = 256, **_ignored):
        require_lm_eval()
        super().__init__()

        if model is None:
            if path is None:
                raise UserError("LlamaJregLM needs path=CHECKPOINT (or model= and tokenizer=)")
            model, tokenizer, info = load_model(path)
            tokenizer = need_tokenizer(tokenizer, info)
        if tokenizer is None:
            raise UserError("lm-eval needs a tokenizer; this model has none")
        self._device = pick_device(device)
        self.model = model.to(self._device).eval()
        self.tok = tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or model.cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        prefix = None
        if tokenizer.sp is not None:
            prefix = tokenizer.sp.bos_id() if tokenizer.sp.bos_id() >= 0 else tokenizer.sp.eos_id()
        else:
            prefix = tokenizer.hf.bos_token_id if tokenizer.hf.bos_token_id is not None else tokenizer.hf.eos_token_id
        if prefix is None or prefix < 0:
            raise UserError("the tokenizer has neither a BOS nor an EOS token to start an empty context with")
        self.prefix_token_id = int(prefix)
        self.eos_token_id = tokenizer.eos_id

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def device(self):
        return self._device

    def tok_encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokens of context and continuation, split the way lm-eval's HF model does
        (``llama_jreg.tasks.scoring.encode_pair``, shared with the trainer's tasks)."""
        return encode_pair(self.tok_encode, self.prefix_token_id, context, continuation)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(cont | ctx), cont == greedy) for token pairs, batched with right padding
        (``llama_jreg.tasks.scoring``, shared with the trainer's tasks)."""
        if any(not cont for _, cont in pairs):
            raise UserError("an lm-eval request has an empty continuation")
        scores = score_requests(self.model, [pair_request(ctx, cont, self.max_length) for ctx, cont in pairs],
                                batch_size=self.batch_size, device=self._device)
        return [(s.loglik, s.greedy) for s in scores]

    # ------------------------------------------------------------------------------------------ lm-eval API

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        out = self._score(pairs)
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import (  # deferred: ~0.9 s to import (scripts/bench_imports.py)
            get_rolling_token_windows,
            make_disjoint_window,
        )

        out = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(ll for ll, _ in self._score(windows)) if windows else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    @torch.no_grad()
    def greedy(self, context: str, until: list[str], max_gen_toks: int) -> str:
        """Greedy continuation with the model's KV cache (``Llama.kv_cache``): the context is cut from the left so
        that it and ``max_gen_toks`` fit in ``max_length`` (as lm-eval's HF model does)."""
        max_gen = max(1, min(max_gen_toks, self.max_length - 1))
        ids = self.tok_encode(context) if context else [self.prefix_token_id]
        ids = ids[-(self.max_length - max_gen):]
        with self.model.kv_cache(1, len(ids) + max_gen):
            logits = self.model(torch.tensor([ids], device=self._device)).logits[0, -1]
            gen: list[int] = []
            text = ""
            for _ in range(max_gen):
                nxt = int(logits.argmax())
                if self.eos_token_id is not None and nxt == self.eos_token_id:
                    break
                gen.append(nxt)
                text = self.tok.decode(gen)
                if any(u and u in text for u in until) or len(gen) == max_gen:
                    break
                logits = self.model(torch.tensor([[nxt]], device=self._device)).logits[0, -1]
        for u in until:
            if u:
                text = text.split(u)[0]
        return text

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            if kwargs.get("do_sample"):
                raise UserError("llama-jreg's lm-eval adapter decodes greedily only (do_sample=false)")
            max_gen = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            text = self.greedy(context, list(until), max_gen)
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out


def choice_task_yaml(name: str, data: str | Path, *, context: str = "context", choices: str = "choices",
                     gold: str = "gold", metrics: tuple[str, ...] = ("acc", "acc_norm")) -> str:
    """An lm-eval-harness task YAML for multiple choice over a local jsonl (one ``{context, choices, gold}`` object a
    line, the shape ``choice:FILE`` reads; other field names by keyword): what ``lm-eval:path/to/task.yaml`` needs
    where the hub is out of reach."""
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data}",
             "test_split: test", "output_type: multiple_choice", f'doc_to_text: "{{{{{context}}}}}"',
             f'doc_to_choice: "{{{{{choices}}}}}"', f'doc_to_target: "{{{{{gold}}}}}"', "metric_list:"]
    return "\n".join(lines + [f"  - metric: {m}" for m in metrics]) + "\n"


def run_lm_eval(model_path: str, tasks: list[str], *, include_path: str | None = None, num_fewshot: int | None = None,
                limit: float | None = None, batch_size: int = 8, device: str = "auto") -> dict:
    require_lm_eval()
    import lm_eval  # deferred: ~0.9 s to import (scripts/bench_imports.py)
    from lm_eval.tasks import TaskManager

    if include_path and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: no such directory")
    manager = None
    if include_path:  # indexing lm-eval's own ~thousands of task YAMLs is slow: skip it when not needed
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm_eval --tasks list` or --include-path")
    lm = LlamaJregLM(model_path, batch_size=batch_size, device=device)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                   task_manager=manager, log_samples=False, bootstrap_iters=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg lm-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="evaluate a checkpoint with lm-eval-harness tasks", epilog=help_text(__doc__))
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", help="a directory of extra task YAMLs")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float, help="examples per task (or a fraction < 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", help="write lm-eval's results dict here")
    args = p.parse_args(argv)
    require_lm_eval()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks is empty")
    res = run_lm_eval(args.model, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                      limit=args.limit, batch_size=args.batch_size, device=args.device)
    from lm_eval.utils import make_table  # deferred: ~0.9 s to import (scripts/bench_imports.py)

    print(make_table(res))
    if args.json_out:
        write_json_result(args.json_out, {k: res[k] for k in ("results", "versions", "n-shot", "config") if k in res},
                          default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
