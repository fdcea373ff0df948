"""lm-eval-harness adapter: offline custom tasks over a local jsonl, and the adapter's numbers checked directly."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from llama_jreg.cli import main as cli
from llama_jreg.commands.lm_eval import choice_task_yaml
from tests.test_analysis import make_checkpoint

ROLLING = """\
task: jreg_tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list:
  - metric: word_perplexity
"""
GEN = """\
task: jreg_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmeval")
    d, model = make_checkpoint(tmp / "run", 3, seed=3, tmp=tmp)
    data = tmp / "data.jsonl"
    docs = [
        {"question": "It was the best of", "choices": [" times", " worst", " age"], "answer": 0},
        {"question": "it was the age of", "choices": [" wisdom", " France", " hope"], "answer": 0},
        {"question": "a king with a large", "choices": [" face", " jaw"], "answer": 1},
        {"question": "In the year", "choices": [" 1775", " 12"], "answer": 0},
    ]
    data.write_text("\n".join(json.dumps(x) for x in docs) + "\n")
    tasks = tmp / "tasks"
    tasks.mkdir()
    for name, body in (("ppl", ROLLING), ("gen", GEN)):
        (tasks / f"{name}.yaml").write_text(body.format(data=data))
    (tasks / "mc.yaml").write_text(choice_task_yaml("jreg_tiny_mc", data, context="question", gold="answer",
                                                    metrics=("acc",)))
    return d, model, tasks, docs


def test_lm_eval_command_runs_custom_tasks(setup, tmp_path):
    d, model, tasks, docs = setup
    out = tmp_path / "res.json"
    rc = cli(["lm-eval", str(d), "--tasks", "jreg_tiny_mc,jreg_tiny_ppl,jreg_tiny_gen", "--include-path", str(tasks),
              "--json", str(out), "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    acc = res["jreg_tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert res["jreg_tiny_ppl"]["word_perplexity,none"] > 1.0
    assert 0.0 <= res["jreg_tiny_gen"]["exact_match,none"] <= 1.0
    # multiple choice accuracy recomputed from the model directly
    from llama_jreg.load import TextTokenizer

    sp = TextTokenizer.from_sentencepiece(d / "tokenizer.model")
    correct = 0
    with torch.no_grad():
        for doc in docs:
            scores = []
            for ch in doc["choices"]:
                ctx, whole = sp.encode(doc["question"]), sp.encode(doc["question"] + ch)
                logp = torch.log_softmax(model.eval()(torch.tensor([whole[:-1]])).logits[0], -1)
                scores.append(sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
            correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert acc == pytest.approx(correct / len(docs))


def test_adapter_numbers(setup):
    from lm_eval.api.instance import Instance

    from llama_jreg.commands.lm_eval import LlamaJregLM

    d, model, _, _ = setup
    lm = LlamaJregLM(str(d), device="cpu", max_length=16, batch_size=2)
    text = "It was the best of times, it was the worst of times, it was the age of wisdom."
    ids = lm.tok_encode(text)
    assert len(ids) > 16  # spans several rolling windows
    (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolled < 0
    # a text that fits in one window: exactly the sum of token log-probs after the prefix token
    short = "It was the best of times"
    (one,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)])
    s = [lm.prefix_token_id] + lm.tok_encode(short)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([s[:-1]])).logits[0], -1)
    assert one == pytest.approx(sum(logp[t - 1, s[t]].item() for t in range(1, len(s))), abs=1e-4)
    # greedy generation equals argmax decoding done by hand
    gen = lm.generate_until([Instance("generate_until", {}, ("It was the", {"until": ["\n"], "max_gen_toks": 3}), 0)])
    ctx = lm.tok_encode("It was the")
    with torch.no_grad():
        for _ in range(3):
            ctx.append(int(model(torch.tensor([ctx[-16:]])).logits[0, -1].argmax()))
    expected = lm.tok.decode(ctx[len(lm.tok_encode("It was the")):]).split("\n")[0]
    assert gen == [expected]


def test_lm_eval_errors(setup):
    d, _, tasks, _ = setup
    assert cli(["lm-eval", str(d), "--tasks", "no_such_task_xyz", "--include-path", str(tasks)]) == 2
