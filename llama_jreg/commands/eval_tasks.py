"""`llama-jreg eval-tasks MODEL --tasks SPEC,... [DATA OVERRIDES] [--json OUT]`: the trainer's tasks on any
model - one of our checkpoints or run dirs, an HF Llama dir or a GGUF file - to compare a trained model with an
open one on the same examples.

Task specs: ``induction``, ``cloze``, ``cloze:FILE``, ``choice:FILE``, ``lm-eval:NAME`` (or
``lm-eval:path/to/task.yaml``), each optionally ``@N`` examples (default ``--n``, else the run's
``trainer.task_n``, else 200); see README "Task evaluation".

For our checkpoints and run dirs the run's own config.yaml gives the data of ``induction`` (its
``data.induction.*`` and seed) and ``cloze`` (its validation split); data overrides change it, Hydra style
(``data=induction data.induction.num_triggers=3 seed=1``). Other models have no run config: ``induction``
needs ``data=induction`` (and ``data.induction.vocab_size=V``, at most 16384), ``cloze`` a file.
"""

from __future__ import annotations

import argparse

from llama_jreg import UserError, help_text
from llama_jreg.config import TrainConfig, apply_data_overrides
from llama_jreg.data import build_data
from llama_jreg.files import write_json_result
from llama_jreg.load import load_model, pick_device
from llama_jreg.task_spec import parse_specs
from llama_jreg.tasks import TaskContext, build_tasks, evaluate_tasks, format_rows

DEFAULT_N = 200


def task_context(model, tok, info: dict, overrides: list[str], n: int | None):
    """The TaskContext of a loaded model: the run's (or the overrides') data config, built on first use."""
    if info["kind"] == "checkpoint":
        train_cfg = apply_data_overrides(info["train_config"], overrides)
        source, default_n = train_cfg.data.source, n or train_cfg.trainer.task_n
    elif overrides:
        base = TrainConfig()
        base.model = model.cfg  # the model's vocabulary sizes the data (data.vocab_size, data.induction.vocab_size)
        train_cfg = apply_data_overrides(base, overrides)
        source, default_n = train_cfg.data.source, n or DEFAULT_N
    else:
        train_cfg, source, default_n = None, None, n or DEFAULT_N

    def bundle():
        if train_cfg is None:
            return None

        if train_cfg.data.seq_len > model.cfg.max_seq_len:
            raise UserError(f"data.seq_len={train_cfg.data.seq_len} exceeds the model context {model.cfg.max_seq_len}; "
                            "add data.seq_len=N")
        return build_data(train_cfg.data, seed=train_cfg.seed, model_vocab=model.cfg.vocab_size)

    return TaskContext(tokenizer=tok, max_length=model.cfg.max_seq_len, default_n=default_n, data_source=source,
                       where=info["path"], bundle_fn=bundle)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg eval-tasks", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="task accuracy (induction, cloze, choice, lm-eval) of any model",
                                epilog=help_text(__doc__))
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("overrides", nargs="*", help="data overrides, e.g. data=induction data.seq_len=64")
    p.add_argument("--tasks", required=True, help="comma-separated task specs, e.g. induction,cloze@100,choice:x.jsonl")
    p.add_argument("--n", type=int, help="examples per task without @N (default: the run's trainer.task_n, or 200)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", help="write the result as JSON here")
    args = p.parse_args(argv)
    specs = parse_specs(args.tasks)  # syntax first: nothing is loaded for a misspelt task
    if not specs:
        raise UserError("--tasks is empty; give task specs, e.g. --tasks cloze,choice:items.jsonl")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n {args.n} must be >= 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    device = pick_device(args.device)
    model, tok, info = load_model(args.model)
    tasks = build_tasks(specs, task_context(model, tok, info, args.overrides, args.n))
    model.to(device)
    rows = evaluate_tasks(model, tasks, device=device, batch_size=args.batch_size)
    print(f"{info['name']} ({info['kind']}{'' if info['step'] is None else ', step ' + str(info['step'])})")
    print(format_rows(rows))
    if args.json_out:
        res = {"model": info["path"], "kind": info["kind"], "step": info["step"], "tasks": rows}
        write_json_result(args.json_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
