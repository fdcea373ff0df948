"""Task evaluation (llama_jreg/tasks/): specs, the four task kinds, agreement with lm-eval-harness, the
trainer's kind=task rows, `llama-jreg eval-tasks`, and sharding over two real processes (torchrun, gloo)."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from llama_jreg import UserError
from llama_jreg.cli import main as cli
from llama_jreg.commands.lm_eval import choice_task_yaml
from llama_jreg.task_spec import parse_spec, parse_specs
from llama_jreg.tasks import build_tasks, evaluate_tasks
from llama_jreg.tasks.base import select
from llama_jreg.tasks.cloze import split_last_word
from tests.test_analysis import CORPUS, make_checkpoint
from tests.test_train_helpers import rows, run_inprocess, run_torchrun

WORDS = ["the", "king", "queen", "lord", "lady", "night", "day", "sword", "crown", "love", "death", "heart",
         "blood", "fair", "foul", "speak", "hear", "see", "thou", "thee", "thy", "hath", "doth", "shall", "will"]
# a 2-layer, 64-wide model on a small jsonl corpus (a SentencePiece tokenizer of 512 pieces trained on it)
TEXT = ["model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
        "model.ffn_dim=128", "model.vocab_size=512", "model.max_seq_len=64", "data=local", "data.seq_len=32",
        "data.micro_batch_size=2", "data.val_sequences=6", "data.val_fraction=0.1", "data.vocab_size=512",
        "data.tokenizer_train_chars=200000", "data.num_proc=1", "trainer.eval_every=3", "trainer.eval_batches=1",
        "trainer.jump_every=3", "trainer.log_every=1", "trainer.progress=false", "trainer.plots=false",
        "schedule.warmup_steps=1", "trainer.task_n=5"]


def choice_items(n: int, seed: int) -> list[dict]:
    """Multiple-choice items over CORPUS sentences: the true next words against shuffled other words (choices
    of different lengths, so acc and acc_norm can differ)."""
    rng = random.Random(seed)
    words = CORPUS.split()
    items = []
    for _ in range(n):
        i = rng.randrange(5, len(words) - 3)
        k = rng.randint(1, 3)
        true = " ".join(words[i:i + k])
        others = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        choices = others + [true]
        rng.shuffle(choices)
        items.append({"context": " ".join(words[i - 5:i]), "choices": choices, "gold": choices.index(true)})
    return items


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint of our format with a SentencePiece tokenizer, plus task files."""
    tmp = tmp_path_factory.mktemp("tasks")
    d, model = make_checkpoint(tmp / "run", 3, seed=5, tmp=tmp)
    items = write_jsonl(tmp / "items.jsonl", choice_items(24, 1))
    (tmp / "yaml").mkdir()
    (tmp / "yaml" / "mc.yaml").write_text(choice_task_yaml("jreg_tasks_mc", items))
    passages = [" ".join(CORPUS.split()[i:i + 8]) for i in range(0, 200, 13)]
    (tmp / "passages.txt").write_text("\n\n".join(passages) + "\n")
    return {"dir": d, "model": model, "tmp": tmp, "items": items, "yaml": tmp / "yaml" / "mc.yaml",
            "passages": tmp / "passages.txt"}


# ---------------------------------------------------------------------------------------------- specs


def test_specs():
    s = parse_spec("cloze:data/held_out.txt@50")
    assert (s.kind, s.arg, s.n, s.name) == ("cloze", "data/held_out.txt", 50, "cloze:held_out")
    assert parse_spec("induction").name == "induction" and parse_spec("induction").n is None
    assert parse_spec("lm-eval:hellaswag@10").name == "lm-eval:hellaswag"
    assert parse_spec("lm-eval:tasks/mc.yaml").name == "lm-eval:mc"
    assert [s.name for s in parse_specs("cloze,choice:a.jsonl")] == ["cloze", "choice:a"]
    for bad, msg in (("bogus", "unknown task 'bogus'"), ("cloze@0", "after @"), ("cloze@x", "after @"),
                     ("choice", "needs a jsonl file"), ("induction:x", "takes no argument")):
        with pytest.raises(UserError, match=msg):
            parse_spec(bad)
    with pytest.raises(UserError, match="the same name"):
        parse_specs(["choice:a/x.jsonl", "choice:b/x.jsonl"])


def test_config_keys():
    from llama_jreg.config import load_config

    cfg = load_config(["tasks=[cloze:data/x.txt@5,induction]", "trainer.task_every=7", "trainer.task_n=9"])
    assert cfg.tasks == ["cloze:data/x.txt@5", "induction"] and (cfg.trainer.task_every, cfg.trainer.task_n) == (7, 9)
    assert load_config([]).tasks == [] and load_config([]).trainer.task_every is None  # off by default
    for ov, msg in ((["tasks=[cloze,bogus@3]"], "unknown task 'bogus@3'"), (["trainer.task_every=0"], "task_every=0"),
                    (["trainer.task_n=0"], "task_n=0")):
        with pytest.raises(UserError, match=msg):
            load_config(ov)


def test_selection_is_fixed():
    a = select(1000, 7)
    assert a == select(1000, 7) and len(set(a)) == 7 and a == sorted(a)
    assert select(5, 7) == list(range(5))


def test_split_last_word():
    assert split_last_word("It was the best of times.") == ("It was the best of ", "times")
    assert split_last_word("one") is None


# ---------------------------------------------------------------------------------------------- tasks


def _run(ckpt, specs, *extra):
    out = ckpt["tmp"] / "out.json"
    assert cli(["eval-tasks", str(ckpt["dir"]), "--tasks", ",".join(specs), "--device", "cpu", "--json", str(out),
                *extra]) == 0
    return {r["task"]: r for r in json.loads(out.read_text())["tasks"]}


def _logp_of(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model.eval()(torch.tensor([ids[:-1]])).logits[0].float(), -1)


def test_choice_matches_lm_eval_harness(ckpt):
    """Our choice:FILE and lm-eval:task.yaml give lm-eval-harness's own acc / acc_norm on the same items."""
    pytest.importorskip("lm_eval")
    from llama_jreg.commands.lm_eval import run_lm_eval

    ref = run_lm_eval(str(ckpt["dir"]), ["jreg_tasks_mc"], include_path=str(ckpt["yaml"].parent),
                      device="cpu")["results"]["jreg_tasks_mc"]
    ours = _run(ckpt, [f"choice:{ckpt['items']}@100", f"lm-eval:{ckpt['yaml']}@100"])
    mine, via = ours["choice:items"], ours["lm-eval:mc"]
    assert mine["n"] == via["n"] == 24
    assert mine["accuracy"] == ref["acc,none"] and mine["acc_norm"] == ref["acc_norm,none"]
    assert via["accuracy"] == ref["acc,none"] and via["acc_norm"] == ref["acc_norm,none"]
    assert mine["accuracy"] != mine["acc_norm"]  # the length normalisation changed some answers


def test_choice_by_hand(ckpt):
    """acc / acc_norm recomputed from the model's log-probabilities, item by item."""
    from llama_jreg.load import TextTokenizer

    tok = TextTokenizer.from_sentencepiece(ckpt["dir"] / "tokenizer.model")
    items = [json.loads(x) for x in ckpt["items"].read_text().splitlines()][:10]
    write_jsonl(ckpt["tmp"] / "ten.jsonl", items)
    acc = acc_norm = 0
    for it in items:
        lls = []
        for ch in it["choices"]:
            ctx, whole = tok.encode(it["context"]), tok.encode(it["context"] + " " + ch)
            logp = _logp_of(ckpt["model"], whole)
            lls.append(sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
        acc += max(range(len(lls)), key=lambda i: (lls[i], -i)) == it["gold"]
        norm = [ll / len(ch) for ll, ch in zip(lls, it["choices"])]
        acc_norm += max(range(len(norm)), key=lambda i: (norm[i], -i)) == it["gold"]
    row = _run(ckpt, [f"choice:{ckpt['tmp'] / 'ten.jsonl'}"])["choice:ten"]
    assert row["n"] == 10 and row["accuracy"] == acc / 10 and row["acc_norm"] == acc_norm / 10


def test_cloze_file_by_hand(ckpt):
    from llama_jreg.load import TextTokenizer

    tok = TextTokenizer.from_sentencepiece(ckpt["dir"] / "tokenizer.model")
    passages = [p for p in ckpt["passages"].read_text().split("\n\n") if p.strip()]
    correct, ll_sum = 0, 0.0
    for p in passages:
        ctx, word = split_last_word(p)
        c_ids, whole = tok.encode(ctx.rstrip()), tok.encode(ctx + word)
        logp = _logp_of(ckpt["model"], whole)
        span = range(len(c_ids), len(whole))
        correct += all(int(logp[t - 1].argmax()) == whole[t] for t in span)
        ll_sum += sum(logp[t - 1, whole[t]].item() for t in span)
    row = _run(ckpt, [f"cloze:{ckpt['passages']}@100"])["cloze:passages"]
    assert row["n"] == len(passages)
    assert row["accuracy"] == correct / len(passages)
    assert row["loglik"] == pytest.approx(ll_sum / len(passages), rel=1e-5)
    # @N bounds it, the same N passages every time
    a, b = (_run(ckpt, [f"cloze:{ckpt['passages']}@4"])["cloze:passages"] for _ in range(2))
    assert a["n"] == 4 and {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items()
                                                                               if k != "seconds"}


def test_induction_task_is_the_eval_definition(tmp_path):
    """eval-tasks induction on an induction checkpoint reads the run's data.induction settings and gives
    `llama-jreg eval`'s induction accuracy on the same validation sequences."""
    d, _ = make_checkpoint(tmp_path / "run", 1, tokenizer=False,
                           overrides=["data=induction", "data.seq_len=64", "data.induction.num_val=8",
                                      "data.induction.vocab_size=24", "data.micro_batch_size=4"])
    ev, tk = tmp_path / "eval.json", tmp_path / "tasks.json"
    assert cli(["eval", str(d), "--json", str(ev)]) == 0
    assert cli(["eval-tasks", str(d), "--tasks", "induction", "--json", str(tk)]) == 0
    ind = json.loads(ev.read_text())["induction"]
    (row,) = json.loads(tk.read_text())["tasks"]
    assert row["n"] == 8 and row["n_tokens"] == ind["tokens"] > 0
    assert row["accuracy"] == pytest.approx(ind["accuracy"], abs=1e-12)
    # data overrides apply to both the same way (here: other sequences and another bigram, from seed 7)
    assert cli(["eval", str(d), "seed=7", "--json", str(ev)]) == 0
    assert cli(["eval-tasks", str(d), "seed=7", "--tasks", "induction@8", "--json", str(tk)]) == 0
    ind7, (row7,) = json.loads(ev.read_text())["induction"], json.loads(tk.read_text())["tasks"]
    assert row7["n_tokens"] == ind7["tokens"] and row7["accuracy"] == pytest.approx(ind7["accuracy"], abs=1e-12)
    # a text-only task on token-id data is refused
    with pytest.raises(UserError, match="needs text and a tokenizer"):
        cli_raise(["eval-tasks", str(d), "--tasks", "cloze"])


def cli_raise(argv):
    from llama_jreg.commands.eval_tasks import main

    return main(argv[1:])


def test_eval_tasks_on_an_hf_dir(tmp_path):
    """An open model (an HF Llama dir) on the same choice items."""
    from tests.hf_assets import make_tiny_hf_llama

    hf = make_tiny_hf_llama(tmp_path / "hf")
    items = write_jsonl(tmp_path / "items.jsonl", choice_items(6, 1))
    out = tmp_path / "o.json"
    assert cli(["eval-tasks", str(hf), "--tasks", f"choice:{items}", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "hf" and res["tasks"][0]["n"] == 6
    with pytest.raises(UserError, match="not one of our runs"):
        cli_raise(["eval-tasks", str(hf), "--tasks", "cloze"])


# ---------------------------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, ckpt):
    """7 steps of a tiny text model with tasks [cloze (validation split), choice:FILE] every 3 steps."""
    tmp = tmp_path_factory.mktemp("text_run")
    rng = random.Random(0)
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "."
                                                            for _ in range(20))}) + "\n" for _ in range(30)))
    data = [f"data.files=[{corpus}]", f"data.prepared_dir={tmp / 'prepared'}"]
    run = tmp / "run"
    tasks = f"tasks=[cloze,choice:{ckpt['items']}@6]"
    summary = run_inprocess([*TEXT, *data, tasks, "trainer.max_steps=7", "trainer.task_every=3", f"run.dir={run}"])
    return {"run": run, "summary": summary, "data": data, "tasks": tasks}


def test_trainer_logs_task_rows(text_run):
    run, s = text_run["run"], text_run["summary"]
    task_rows = rows(run, "task")
    assert [(r["step"], r["task"]) for r in task_rows] == [(st, t) for st in (3, 6, 7) for t in ("cloze", "choice:items")]
    for r in task_rows:
        assert r["n"] == (5 if r["task"] == "cloze" else 6)  # trainer.task_n=5, @6
        assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 and r["tokens"] == r["step"] * 2 * 32
    assert all("acc_norm" in r for r in task_rows if r["task"] == "choice:items")
    assert all(r["loglik"] < 0 for r in task_rows if r["task"] == "cloze")
    assert s["tasks"]["cloze"] == task_rows[-2] and s["tasks"]["choice:items"]["step"] == 7


def test_summary_and_report_show_tasks(text_run, tmp_path, capsys):
    from llama_jreg.train.command import _print_summary

    _print_summary(text_run["summary"])
    out = capsys.readouterr().out
    acc = text_run["summary"]["tasks"]["choice:items"]["accuracy"]
    assert f"task: choice:items accuracy {acc:.4f} (n=6, step 7)" in out
    sweep = tmp_path / "sweep"
    shutil.copytree(text_run["run"], sweep / "0_run", ignore=shutil.ignore_patterns("checkpoints"))
    assert cli(["sweep-report", str(sweep), "--no-plots"]) == 0
    table = (sweep / "report.md").read_text()
    assert "| choice:items acc |" in table.splitlines()[0] and f"{acc:.4f}" in table.splitlines()[2]
    assert cli(["plot", str(sweep / "0_run")]) == 0
    assert (sweep / "0_run" / "plots" / "tasks.png").is_file()


def test_wandb_keys(tmp_path):
    from llama_jreg.rows import TaskRow
    from llama_jreg.train.metrics import MetricsLogger

    logged = []

    class Sink:  # a wandb run's log() (the key layout is what is under test)
        def log(self, data, step):
            logged.append((step, data))

    m = MetricsLogger(tmp_path, enabled=True)
    m.wandb = Sink()
    m.log(TaskRow(step=5, tokens=10, task="cloze", accuracy=0.5, n=4, seconds=0.1))
    assert logged == [(5, {"task/cloze/tokens": 10, "task/cloze/accuracy": 0.5, "task/cloze/n": 4,
                           "task/cloze/seconds": 0.1})]


def test_task_errors_stop_before_training(text_run, ckpt, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b", "c"], "gold": 0}\n{"context": "a", "choices": ["b"], '
                   '"gold": 0}\n')
    base = [*TEXT, *text_run["data"], "trainer.max_steps=2", f"run.dir={tmp_path / 'r'}"]
    for tasks, msg in ((f"tasks=[choice:{bad}]", "line 2: \"choices\" must be a list of at least 2"),
                       ("tasks=[induction]", "needs the synthetic induction source")):
        with pytest.raises(UserError, match=msg):
            run_inprocess([*base, tasks])
        assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one(text_run, tmp_path):
    """Step 0 of an init_from run (identical weights): FSDP2 on 2 processes equals one process, task by task
    (odd example counts, so the ranks run different numbers of examples and the padding forwards matter)."""
    src = text_run["run"] / "checkpoints" / "step_00000007"
    common = [*TEXT, *text_run["data"], text_run["tasks"].replace("@6", "@7"), f"init_from={src}",
              "trainer.max_steps=1", "trainer.global_batch_size=4"]
    run_inprocess([*common, f"run.dir={tmp_path / 'one'}"])
    run_torchrun(2, [*common, "parallel=fsdp", f"run.dir={tmp_path / 'two'}"])
    one = [r for r in rows(tmp_path / "one", "task") if r["step"] == 0]
    two = [r for r in rows(tmp_path / "two", "task") if r["step"] == 0]
    assert [r["task"] for r in one] == ["cloze", "choice:items"] and len(two) == 2
    for a, b in zip(one, two):
        assert (a["task"], a["n"], a["accuracy"]) == (b["task"], b["n"], b["accuracy"])
        for k in ("acc_norm", "loglik", "loglik_per_token"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)


def test_shards_cover_every_example_once(ckpt):
    """Rank r of W takes examples r, r + W, ...: the shards of 2 ranks partition the examples, and evaluating
    twice gives the same numbers (no state, no randomness)."""
    from llama_jreg.commands.eval_tasks import task_context
    from llama_jreg.load import load_model

    model, tok, info = load_model(ckpt["dir"])
    tasks = build_tasks([f"choice:{ckpt['items']}@9", f"cloze:{ckpt['passages']}"], task_context(model, tok, info, [], 5))
    full = evaluate_tasks(model, tasks)
    assert [r["n"] for r in full] == [9, 5]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in evaluate_tasks(model, tasks)] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    halves = [evaluate_tasks(model, tasks, rank=r, world=2) for r in (0, 1)]  # one process: no all-reduce
    for i, row in enumerate(full):
        a, b = halves[0][i], halves[1][i]
        assert (a["n"], b["n"]) == ((row["n"] + 1) // 2, row["n"] // 2)
        assert a["accuracy"] * a["n"] + b["accuracy"] * b["n"] == pytest.approx(row["accuracy"] * row["n"])
