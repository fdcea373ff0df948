"""`make demo`'s lambda = 0 reference (llama_jreg/train/reference.py, demo_reference.json): it is the demo's
recipe, and the run summary shows it only for a run of that recipe at the reference's step."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from llama_jreg.config import load_config as _compose
from llama_jreg.train.command import _print_summary
from llama_jreg.train.reference import (
    REFERENCE_PATH,
    load_reference,
    make_reference,
    matching_reference,
    recipe,
)
from llama_jreg.train.setup import resolve_run
from tests.test_train_helpers import REPO, run_inprocess, tiny


def load_config(overrides: list[str]):
    """The config a run of ``overrides`` trains with (``init_from`` resolved, as ``llama-jreg train`` does)."""
    return resolve_run(_compose(overrides), overrides)


def _demo_overrides() -> list[str]:
    """The overrides of the `llama-jreg train` line of the Makefile's demo target."""
    text = (REPO / "Makefile").read_text()
    body = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    line = next(ln for ln in body.splitlines() if "llama-jreg train" in ln)
    return shlex.split(line.split("llama-jreg train", 1)[1])


def test_reference_is_the_demo_recipe():
    ref = load_reference()
    assert ref is not None, f"{REFERENCE_PATH} is missing; run python scripts/demo_reference.py"
    cfg = load_config(_demo_overrides())
    assert recipe(cfg) == ref["recipe"], "the demo recipe changed: rerun python scripts/demo_reference.py"
    assert ref["step"] == cfg.trainer.max_steps and cfg.trainer.max_steps % cfg.trainer.jump_every == 0
    assert all(isinstance(ref[k], float) for k in ("zeta_L", "val_zeta_L", "val_loss"))


def test_matching_reference_only_for_the_same_recipe_and_step():
    cfg = load_config(_demo_overrides())
    ref = load_reference()
    done = {"steps": cfg.trainer.max_steps, "device": "cpu"}
    assert matching_reference(cfg, done) == ref
    # JREG is what a user varies: another lambda or mode still compares with the lambda = 0 reference
    assert matching_reference(load_config(_demo_overrides() + ["jreg=final", "jreg.weight=1"]), done) == ref
    for other in (["optim.lr=3e-4"], ["seed=7"], ["trainer.max_steps=40"], ["data.micro_batch_size=2"],
                  ["data.seq_len=64"], ["trainer.eval_batches=2"]):
        assert matching_reference(load_config(_demo_overrides() + other), done) is None, other
    assert matching_reference(cfg, {**done, "steps": cfg.trainer.max_steps - 10}) is None  # stopped early
    assert matching_reference(cfg, {**done, "device": "cuda"}) is None  # bf16 on a GPU: not comparable


def test_summary_prints_the_reference_and_a_made_reference_matches(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = tiny(run, "trainer.max_steps=3", "trainer.jump_every=3", "trainer.eval_every=3", "jreg.weight=0")
    summary = run_inprocess(overrides)
    ref = make_reference(run, "test machine", "llama-jreg train ...")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_jump = [r for r in rows if r["kind"] == "jump"][-1]
    assert (ref["step"], ref["val_zeta_L"], ref["zeta_L"]) == (3, last_jump["val_zeta_L"], last_jump["zeta_L"])
    assert ref["val_loss"] == [r for r in rows if r["kind"] == "eval"][-1]["val_loss"]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    with_jreg = load_config(overrides[:-1] + ["jreg.weight=0.5"])
    assert matching_reference(with_jreg, summary, path) == ref
    assert matching_reference(load_config(overrides + ["optim.lr=1e-2"]), summary, path) is None
    _print_summary(summary, with_jreg)  # the committed reference is not for this recipe
    assert "lambda=0" not in capsys.readouterr().out
    demo = load_reference()
    _print_summary({"steps": demo["step"], "device": "cpu", "run_dir": "runs/demo"}, load_config(_demo_overrides()))
    out = capsys.readouterr().out
    assert f"val zeta_L {demo['val_zeta_L']:.4f}" in out and f"val loss {demo['val_loss']:.4f}" in out
    with pytest.raises(ValueError, match="lambda = 0"):
        make_reference(_run_with_weight(tmp_path / "jreg"), "m", "c")


def _run_with_weight(run):
    run_inprocess(tiny(run, "trainer.max_steps=3", "trainer.jump_every=3", "jreg.weight=0.5"))
    return run
