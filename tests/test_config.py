"""Hydra config tree + typed schema: composition, user-facing keys, and one clear error per bad value."""

import pytest

from llama_jreg import UserError
from llama_jreg.config import (
    CONFIG_DIR,
    SCHEDULES,
    TrainConfig,
    describe,
    from_yaml,
    group_options,
    load_config,
    schema_keys,
    to_yaml,
    warnings_for,
)
from llama_jreg.data.schema import SOURCES
from llama_jreg.train.command import expand_sweep


def test_defaults_compose_to_typed_config():
    cfg = load_config([])
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name == "tiny" and cfg.data.source == "shakespeare" and cfg.jreg.mode == "jump"
    assert cfg.data.vocab_size == cfg.model.vocab_size  # tokenizer vocab defaults to the model's


@pytest.mark.parametrize("group", sorted(set(group_options()) - {"experiment"}))
def test_every_group_option_composes(group):
    """Every option found under configs/GROUP/ composes (``train --help`` lists the same files)."""
    options = group_options()[group]
    assert options
    for opt in options:
        extra = ["data.files=[x.txt]"] if (group, opt) == ("data", "local") else []
        extra += ["data.hf_path=x/y"] if (group, opt) == ("data", "hf") else []
        cfg = load_config([f"{group}={opt}", *extra])
        if group in ("model", "logger", "parallel", "schedule", "optim"):
            assert getattr(cfg, group).name == opt
        if group == "data":
            assert cfg.data.source == opt


def test_user_facing_keys():
    cfg = load_config([
        "model=small", "data=local", "data.files=[a.jsonl,b.txt]", "jreg=final", "jreg.weight=0.05",
        "jreg.mode=weighted", "seed=7", "trainer.max_steps=11", "trainer.log_every=2", "trainer.jump_every=3",
        "trainer.eval_every=4", "trainer.ckpt_every=5", "trainer.keep_last=6", "logger=wandb", "run.dir=runs/x",
        "resume=auto",
    ])
    assert cfg.model.dim == 768 and cfg.data.files == ["a.jsonl", "b.txt"]
    assert (cfg.jreg.weight, cfg.jreg.mode, cfg.seed) == (0.05, "weighted", 7)
    assert (cfg.trainer.max_steps, cfg.trainer.log_every, cfg.trainer.jump_every) == (11, 2, 3)
    assert (cfg.trainer.eval_every, cfg.trainer.ckpt_every, cfg.trainer.keep_last) == (4, 5, 6)
    assert cfg.logger.name == "wandb" and cfg.run.dir == "runs/x" and cfg.resume == "auto"


def test_yaml_round_trip(tmp_path):
    cfg = load_config(["jreg.weight=0.3", "model.n_layers=3"])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("overrides,match", [
    (["jreg.weight=-1"], "jreg.weight=-1.0 must be >= 0"),
    (["model=huge"], "unknown model 'huge'; choose model=large.medium.small.tiny"),
    (["trainer.bogus=1"], "unknown config key trainer.bogus"),
    (["trainer.max_steps=abc"], "trainer.max_steps"),
    (["data.seq_len=4096"], "longer than the model context"),
    (["jreg.mode=sideways"], "unknown jreg.mode"),
    (["model.n_heads=7"], "does not divide model.dim"),
    (["model.n_kv_heads=3"], "does not divide model.n_heads"),
    (["data=local"], "data=local needs files"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be >= 1"),
    (["resume=/no/such/ckpt"], "no such checkpoint"),
    (["run.root=/tmp/root", "run.dir=/etc/x"], "outside run.root"),
    (["data.vocab_size=99999"], "larger than model.vocab_size"),
    (["model.attn_backend=flash"], "flash-attn is not installed"),
    (["optim.z_loss=nan"], "optim.z_loss=nan must be >= 0"),
    (["optim.z_loss=-1e-4"], "optim.z_loss=-0.0001 must be >= 0"),
    (["data=induction", "data.document_mask=true"], "data=induction has one sequence per row and no EOS"),
    (["data.document_positions=true"], "needs data.document_mask=true"),
])
def test_bad_values_fail_with_one_clear_line(overrides, match):
    with pytest.raises(UserError, match=match) as e:
        load_config(overrides)
    assert "\n" not in str(e.value)


def test_sweep_expansion_matches_hydra_order():
    jobs = expand_sweep(["jreg.weight=0,0.01,0.1", "model=tiny"])
    assert [o for o, _ in jobs] == [["model=tiny", f"jreg.weight={w}"] for w in ("0", "0.01", "0.1")]
    assert [n for _, n in jobs] == ["0_jreg.weight=0", "1_jreg.weight=0.01", "2_jreg.weight=0.1"]
    assert len(expand_sweep(["seed=1,2", "jreg.weight=range(0,3)"])) == 6


@pytest.mark.parametrize("override,suggestion", [
    ("jreg.wieght=5", "did you mean jreg.weight?"),
    ("+jreg.wieght=5", "did you mean jreg.weight?"),
    ("+trainer.max_step=3", "did you mean trainer.max_steps?"),
    ("jerg.weight=1", "did you mean jreg.weight?"),
    ("+foo=1", "unknown config key foo; see `llama-jreg train --help`"),
    ("data.mixture=[{name: a, wieght: 1, files: [x.txt]}]", "unknown config key data.mixture.wieght; did you "
                                                             "mean data.mixture.weight?"),
])
def test_unknown_keys_are_refused_with_the_closest_valid_one(override, suggestion):
    """A mistyped key stops the run, with or without ``+`` (which Hydra would add silently)."""
    with pytest.raises(UserError) as e:
        load_config([override])
    assert suggestion in str(e.value) and "\n" not in str(e.value)


def test_schema_keys_are_the_dataclass_fields():
    keys = schema_keys()
    assert {"jreg.weight", "trainer.max_steps", "data.induction.bigram", "data.mixture", "run.dir", "seed"} <= set(keys)
    assert not any(k.startswith("data.mixture.") for k in keys)


def test_data_files_without_a_data_group_read_the_files():
    """``data.files`` with the default data=shakespeare selects the local source (the files are read) ..."""
    cfg = load_config(["data.files=[k.txt]"])
    assert cfg.data.source == "local" and cfg.data.files == ["k.txt"]
    assert describe(cfg)[0].startswith("data: local k.txt")
    # ... and next to an explicit data=shakespeare it is refused, naming the group that reads it
    with pytest.raises(UserError, match="data.files is read by data=local .* not by data=shakespeare"):
        load_config(["data=shakespeare", "data.files=[k.txt]"])


@pytest.mark.parametrize("overrides,needle", [
    (["data.induction.num_triggers=3"], "data.induction.num_triggers is read by data=induction only (this run uses "
                                        "data=shakespeare); add data=induction"),
    (["data=local", "data.files=[a.txt]", "data.induction.bigram=shakespeare"], "add data=induction"),
    (["data=induction", "data.files=[a.txt]"], "data.files is read by the text sources, not by data=induction"),
    (["data=induction", "data.tokenizer=t.model"], "pick data=shakespeare|local|hf, or drop data.tokenizer"),
    (["data.hf_path=x/y"], "data.hf_path is read by data=hf, not by data=shakespeare; add data=hf"),
])
def test_keys_the_chosen_source_does_not_read_are_refused(overrides, needle):
    with pytest.raises(UserError) as e:
        load_config(overrides)
    assert needle in str(e.value)


def test_allowed_values_come_from_the_constants():
    """Group options on disk are the values the schemas allow."""
    assert sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")) == sorted(SOURCES)
    assert sorted(p.stem for p in (CONFIG_DIR / "schedule").glob("*.yaml")) == sorted(SCHEDULES)
    with pytest.raises(UserError, match=f"choose schedule={'[|]'.join(SCHEDULES)}"):
        load_config(["schedule.name=linear"])


def test_describe_and_the_warmup_warning():
    cfg = load_config(["experiment=text", "jreg.weight=0.1", "schedule.warmup_steps=100", "trainer.max_steps=20"])
    lines = describe(cfg)
    assert [line.split(":")[0] for line in lines] == ["data", "model", "jreg", "schedule"]
    assert "shakespeare" in lines[0] and "jump weight 0.1" in lines[2] and "warm-up 100 of 20 steps" in lines[3]
    (warning,) = warnings_for(cfg)
    assert "schedule.warmup_steps=100 is longer than trainer.max_steps=20" in warning and "peaks at 0.0002 instead of optim.lr=0.001" in warning
    assert warnings_for(load_config(["trainer.max_steps=200"])) == []


def test_global_batch_must_be_a_multiple_of_the_micro_batch():
    with pytest.raises(UserError, match="trainer.global_batch_size=6 is not a multiple of data.micro_batch_size=4"):
        load_config(["data.micro_batch_size=4", "trainer.global_batch_size=6"])
    with pytest.raises(UserError, match="trainer.steps_per_run=0 must be >= 1"):
        load_config(["trainer.steps_per_run=0"])


def test_readme_config_table_is_generated_from_the_schemas():
    """README.md's Config reference is what ``python -m llama_jreg.config_doc --write README.md`` writes: every
    schema key and every group option of configs/, with the composed defaults."""
    from llama_jreg.config_doc import markdown, readme_table

    readme = CONFIG_DIR.parent / "README.md"
    assert readme_table(readme) == markdown(), "README drifted: run python -m llama_jreg.config_doc --write README.md"
    table = markdown()
    for key in schema_keys():
        assert f"| `{key}` |" in table
    for group, options in group_options().items():
        assert f"| `{group}=` |" in table and all(o in table for o in options)


def test_train_help_lists_the_groups_and_presets_of_configs():
    from llama_jreg.train.command import _parser

    text = _parser().format_help()
    for group, options in group_options().items():
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{group}="))
        assert line.strip().replace("[", "").replace("]", "") == f"{group}={'|'.join(options)}"
    assert "experiment=" in text and "jump_emergence" in text and "trainer=[default]" in text
    assert "demo" not in text.replace("llama-jreg", "")  # no option that configs/ lacks
    assert all(key in text for key in schema_keys())


def test_eval_data_overrides_follow_the_same_rule():
    """``eval`` / ``eval-tasks`` data overrides: data.files reads the files, next to data=shakespeare it is refused."""
    from llama_jreg.config import apply_data_overrides

    assert apply_data_overrides(TrainConfig(), ["data.files=[a.txt]"]).data.source == "local"
    with pytest.raises(UserError, match="not by data=shakespeare"):
        apply_data_overrides(TrainConfig(), ["data=shakespeare", "data.files=[a.txt]"])
