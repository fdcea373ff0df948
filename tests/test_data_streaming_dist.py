"""Streaming data (``data.streaming=true``) under real multi-process training (torchrun, gloo on CPU): a
checkpoint resumes at another world size (2 -> 1 -> 2) with exactly the sequences an uninterrupted run trains on."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.test_data import make_docs, write_jsonl
from tests.test_train_helpers import by_step, rows, run_inprocess, run_torchrun, tiny

STEPS = 6


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    """Overrides of a streaming run on a local jsonl corpus (its tokenizer trained once, here)."""
    from llama_jreg.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("streaming")
    docs = make_docs(n=60, words=120, seed=3)
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    tok = train_tokenizer(docs, root / "tok.model", vocab_size=384, max_chars=200_000)
    return ["model.vocab_size=384", "data=local", f"data.files=[{corpus}]", "data.streaming=true",
            f"data.tokenizer={tok.path}", "data.seq_len=32", "data.micro_batch_size=2", "data.val_sequences=4",
            "trainer.global_batch_size=8", f"trainer.max_steps={STEPS}", "trainer.ckpt_every=2",
            f"data.cache_dir={root / 'cache'}"]


def loader_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step_{STEPS:08d}" / "loader_rank0.json").read_text())


def inprocess(run_dir: Path, *extra: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "resuming a 2-process checkpoint with 1 processes"
        return run_inprocess(tiny(run_dir, *extra))


@pytest.fixture(scope="module")
def one_txt_file(streaming, tmp_path_factory):
    """The same run on one plain .txt file: one document, validation = its first tokens, training the rest."""
    root = tmp_path_factory.mktemp("one_txt")
    one = root / "one.txt"
    one.write_text(" ".join(make_docs(n=30, words=120, seed=5)), encoding="utf-8")
    return [f"data.files=[{one}]" if o.startswith("data.files=") else o for o in streaming]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_streaming_resume_at_another_world_size(streaming, tmp_path):
    """2 processes (steps 1-2) -> 1 process (steps 3-4) -> 2 processes (steps 5-6) train on exactly the
    sequences of one uninterrupted process: same losses, and the same place in the stream at the end."""
    _resume_at_another_world_size(streaming, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_streaming_one_txt_file_at_another_world_size(one_txt_file, tmp_path):
    """The same with one .txt file, where training starts inside the document that validation begins."""
    _resume_at_another_world_size(one_txt_file, tmp_path)
    evals = rows(tmp_path / "run", "eval")
    assert evals and all(r["val_loss"] > 0 for r in evals)


def _resume_at_another_world_size(streaming: list[str], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    inprocess(ref, *streaming)

    run = tmp_path / "run"
    run_torchrun(2, tiny(run, *streaming, "trainer.steps_per_run=2"))
    s = inprocess(run, *streaming, "trainer.steps_per_run=2", "resume=auto")
    assert s["steps"] == 4 and s["resumed_from"].endswith("step_00000002")
    proc = run_torchrun(2, tiny(run, *streaming, "resume=auto"))
    assert "step_00000004" in proc.stdout + proc.stderr

    want, got = by_step(ref, "loss"), by_step(run, "loss")
    assert sorted(want) == list(range(1, STEPS + 1)) and got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5  # DDP matches 1 process to 1e-5 on the same data
    end = loader_state(run)
    assert end["world_size"] == 2 and end == {**loader_state(ref), "world_size": 2}
    assert end["cursor"] == STEPS * 8  # 8 sequences a step (trainer.global_batch_size)
