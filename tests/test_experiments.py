"""``experiment=NAME`` presets (configs/experiment/): each composes to its recipe with real Hydra, command-line
overrides win over it wherever they stand, and an unknown name is one error line."""

from __future__ import annotations

import pytest

from llama_jreg import UserError
from llama_jreg.cli import main as cli
from llama_jreg.config import CONFIG_DIR, compose, group_options, load_config, to_train_config

# the induction recipe written out key by key (docs/recipes.md gives the same list)
INDUCTION = ["model=tiny", "model.vocab_size=65", "model.dim=64", "model.n_layers=2", "model.n_heads=2",
             "model.n_kv_heads=2", "model.ffn_dim=128", "model.max_seq_len=256", "data=induction",
             "data.seq_len=256", "data.micro_batch_size=32", "data.induction.bigram=shakespeare",
             "data.induction.triggers=top", "data.induction.num_triggers=3", "optim.lr=3e-3",
             "schedule.warmup_steps=50", "trainer.max_steps=1000", "trainer.jump_every=50", "trainer.eval_every=100",
             "trainer.eval_batches=8", "trainer.ckpt_every=100", "trainer.keep_last=5"]


def test_every_preset_composes_and_is_documented():
    """The presets are the files of configs/experiment/ (``train --help`` lists them from there): each one
    composes, follows Hydra's experiment convention and is described in docs/recipes.md."""
    recipes = (CONFIG_DIR.parent / "docs" / "recipes.md").read_text()
    presets = group_options()["experiment"]
    assert len(presets) >= 4
    for name in presets:
        assert (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_\n")
        assert load_config([f"experiment={name}"]) is not None
        assert f"experiment={name}" in recipes, name


def test_induction_preset_composes_to_the_recipe():
    cfg = load_config(["experiment=induction"])
    assert cfg == load_config(INDUCTION)
    assert cfg != load_config([])  # the preset changed something: the comparison above is not vacuous
    assert (cfg.data.source, cfg.data.induction.bigram, cfg.data.induction.triggers) == (
        "induction", "shakespeare", "top")
    assert cfg.data.induction.vocab_size == cfg.model.vocab_size == 65 and cfg.model.n_layers == 2


@pytest.mark.parametrize("first", [True, False])
def test_command_line_overrides_win_over_the_preset(first):
    """Before or after ``experiment=``, a key (and a group choice) from the command line beats the preset's."""
    mine = ["model.dim=32", "trainer.max_steps=7", "data.induction.num_triggers=5", "optim.lr=1e-3",
            "schedule=constant"]
    cfg = load_config([*mine, "experiment=induction"] if first else ["experiment=induction", *mine])
    assert (cfg.model.dim, cfg.trainer.max_steps, cfg.data.induction.num_triggers) == (32, 7, 5)
    assert cfg.optim.lr == 1e-3 and cfg.schedule.name == "constant"
    assert cfg.model.n_layers == 2 and cfg.data.micro_batch_size == 32  # the rest is still the preset's
    text = load_config(["experiment=text", "model=small", "data.seq_len=64"])
    assert text.model.name == "small" and text.model.dim == 768 and text.data.seq_len == 64
    assert text.trainer.max_steps == 500


def test_continued_preset_starts_from_smollm2():
    """``experiment=continued`` sets ``init_from=smollm2`` (the cached SmolLM2-135M dir, resolved by
    ``load_config``; not resolved here, which would download it) and the E4 recipe; a path overrides it."""
    raw = to_train_config(compose(["experiment=continued"]))
    assert raw.init_from == "smollm2" and raw.data.source == "shakespeare" and raw.data.seq_len == 128
    assert (raw.optim.lr, raw.schedule.warmup_steps, raw.trainer.max_steps) == (1e-4, 0, 30)
    assert to_train_config(compose(["experiment=continued", "init_from=/x/y"])).init_from == "/x/y"


def test_unknown_experiment_is_one_error_line(capsys):
    with pytest.raises(UserError, match="unknown experiment 'nope'; choose experiment=continued.induction.jump_emergence.text$"):
        load_config(["experiment=nope"])
    assert cli(["train", "experiment=nope", "--print-config"]) == 2  # the CLI in-process (test_bad_inputs: a subprocess)
    out = capsys.readouterr()
    assert out.out == "" and out.err.strip().splitlines() == [
        "error: unknown experiment 'nope'; choose experiment=continued|induction|jump_emergence|text"]
