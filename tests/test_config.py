"""Hydra config tree + typed schema: composition, user-facing keys, and one clear error per bad value."""

import pytest

from llama_jreg import UserError
from llama_jreg.config import CONFIG_DIR, TrainConfig, from_yaml, load_config, to_yaml
from llama_jreg.train.command import expand_sweep


def test_defaults_compose_to_typed_config():
    cfg = load_config([])
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name == "tiny" and cfg.data.source == "shakespeare" and cfg.jreg.mode == "jump"
    assert cfg.data.vocab_size == cfg.model.vocab_size  # tokenizer vocab defaults to the model's


@pytest.mark.parametrize("group,options", [
    ("model", ["tiny", "small", "medium", "large"]),
    ("jreg", ["off", "jump", "jump_last", "final", "paper", "weighted"]),
    ("data", ["shakespeare", "local", "hf", "induction"]),
    ("schedule", ["cosine", "wsd", "constant"]),
    ("logger", ["none", "wandb"]),
    ("parallel", ["ddp", "fsdp"]),
])
def test_every_group_option_composes(group, options):
    assert sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")) == sorted(options)
    for opt in options:
        extra = ["data.files=[x.txt]"] if (group, opt) == ("data", "local") else []
        cfg = load_config([f"{group}={opt}", *extra])
        assert getattr(cfg, group).name == opt if group in ("model", "logger", "parallel", "schedule") else True


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
    (["trainer.bogus=1"], "Could not override 'trainer.bogus'"),
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
