"""Where a run is built from the command line: ``build_config(overrides)`` is ``load_config`` plus what needs
more than the configs, all before anything is written.

* ``init_from`` is resolved (``init_from=smollm2`` may fetch SmolLM2-135M once into the cache): the model
  architecture and, without ``data.tokenizer``, the tokenizer become the source's (``train/init_from.py``).
* The data's files are checked (a mixture's files exist and hold text).
* Relative paths (``data.files``, ``data.tokenizer``, a mixture's files, a task's FILE) become absolute, so the
  run's config.yaml reads the same data from any directory (``eval``, ``eval-tasks``, ``jump`` ... on the run
  dir).
* ``resume=auto`` on a run dir that holds checkpoints starts from the run's own config.yaml: ``llama-jreg train
  run.dir=R resume=auto`` is enough. The command line's overrides still win (a ``GROUP=NAME`` replaces that
  group, ``experiment=NAME`` the parts it sets, ``KEY=VALUE`` the key), but one that changes what the checkpoint
  was trained on (the model's shape, the data) is refused in one line.

``load_config`` alone (``train --print-config``) reads configs only and touches neither the data nor the network.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from llama_jreg import UserError
from llama_jreg.config import CONFIG_DIR, TrainConfig, from_yaml, load_config, to_train_config, validate
from llama_jreg.data.mixture import check_mixture
from llama_jreg.task_spec import parse_spec
from llama_jreg.train.init_from import ARCH_KEYS, apply_init_from

#: data keys that decide which tokens a run trains on (a resume with other values would read other data); not
#: data.files: a corpus moved to another path resumes, its files checked by content (llama_jreg/data/identity.py)
DATA_IDENTITY = ("source", "text_field", "text_sample_by", "hf_path", "hf_name", "hf_split", "tokenizer",
                 "vocab_size", "tokenizer_train_chars", "seq_len", "val_fraction", "val_sequences", "max_documents",
                 "induction", "mixture")


def build_config(overrides: list[str] | None = None, run_dir: str | Path | None = None) -> TrainConfig:
    """The config of a run: composed, validated, ``init_from`` resolved, data files checked, paths absolute; on
    ``resume=auto`` of a run with checkpoints, the run's own config.yaml with the overrides applied. ``run_dir``
    (a sweep job's directory) replaces ``run.dir``."""
    overrides = list(overrides or [])
    fresh = load_config(overrides)
    if run_dir is not None:
        fresh.run.dir = str(run_dir)
    saved = saved_config(fresh)
    if saved is None:
        return resolve_run(fresh, overrides)
    cfg = resolve_run(merge_overrides(saved, absolute_paths(fresh), overrides), overrides)
    check_same_training(saved, cfg, Path(fresh.run.dir) / "config.yaml")
    return cfg


def saved_config(fresh: TrainConfig) -> TrainConfig | None:
    """The run's own config.yaml when ``fresh`` resumes (``resume=auto``) a run dir that holds checkpoints."""
    run_dir = Path(fresh.run.dir).expanduser()
    path = run_dir / "config.yaml"
    if fresh.resume != "auto" or not path.is_file() or not any((run_dir / "checkpoints").glob("step_*")):
        return None
    return from_yaml(path)


def _override_parts(overrides: list[str]) -> list[str]:
    """The config keys the overrides set: ``KEY=VALUE`` -> KEY, ``GROUP=NAME`` -> GROUP, ``experiment=NAME`` ->
    every group and key that experiment sets."""
    parts: list[str] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key == "experiment" and isinstance(o.value(), str):
            preset = yaml.safe_load((CONFIG_DIR / "experiment" / f"{o.value()}.yaml").read_text()) or {}
            for d in preset.get("defaults") or []:
                if isinstance(d, dict):
                    parts += [k.split("/")[-1].strip() for k in d]
            parts += [k for k in preset if k != "defaults"]
        elif not o.is_delete():
            parts.append(key)
    return parts


def merge_overrides(saved: TrainConfig, fresh: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``saved`` with the parts the overrides set taken from ``fresh`` (the overrides composed on the defaults)."""
    merged, new = OmegaConf.structured(saved), OmegaConf.structured(fresh)
    parts = _override_parts(overrides)
    for key in [*parts, "resume", "run"]:
        OmegaConf.update(merged, key, OmegaConf.select(new, key), merge=False)
    # vocabularies the overrides did not set follow the (saved) model, as they would have when it was composed
    for key, default in (("data.vocab_size", fresh.data.vocab_size), ("data.induction.vocab_size",
                                                                      fresh.data.induction.vocab_size)):
        if key not in parts and default == fresh.model.vocab_size and OmegaConf.select(merged, key) == default:
            OmegaConf.update(merged, key, saved.data.vocab_size if key == "data.vocab_size"
                             else saved.data.induction.vocab_size)
    return to_train_config(merged)


def _differences(a, b, keys, prefix: str):
    for key in keys:
        old, new = getattr(a, key), getattr(b, key)
        if hasattr(old, "__dataclass_fields__"):  # data.induction: name the key inside
            yield from _differences(old, new, [f.name for f in fields(old)], f"{prefix}.{key}")
        elif old != new:
            show = [[asdict(x) for x in v] if isinstance(v, list) and v and is_dataclass(v[0]) else v
                    for v in (old, new)]
            yield f"{prefix}.{key}", *show


def check_same_training(saved: TrainConfig, cfg: TrainConfig, where: Path) -> None:
    """Refuse a resume whose overrides change the model's shape or the data the checkpoint was trained on."""
    for key, old, new in _differences(saved.model, cfg.model, ARCH_KEYS, "model"):
        raise UserError(f"{key}={new} differs from the run's {where} ({key}={old}): the checkpoint was trained with "
                        "another model shape; drop the override, or start a new run.dir")
    for key, old, new in _differences(saved.data, cfg.data, DATA_IDENTITY, "data"):
        raise UserError(f"{key}={new} differs from the run's {where} ({key}={old}): the checkpoint was "
                        "trained on other data; drop the override, or start a new run.dir")


def resolve_run(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``cfg`` (from ``load_config(overrides)``) made ready to train; see the module docstring."""
    if cfg.init_from is not None:
        cfg = apply_init_from(cfg, overrides)
    validate(cfg)
    if cfg.data.mixture:
        check_mixture(cfg.data)
    return absolute_paths(cfg)


def _absolute(path: str | None) -> str | None:
    """A relative path that exists here (or a glob) as an absolute one; anything else unchanged."""
    if not path or "://" in path:
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return path
    return os.path.abspath(expanded)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Data and task file paths relative to the current directory, made absolute (in place)."""
    d = cfg.data
    if d.source != "hf":  # an hf source's files are the builder's data_files, kept as written
        d.files = [_absolute(f) for f in d.files]
    d.tokenizer = _absolute(d.tokenizer)
    d.prepared_dir, d.cache_dir = _absolute(d.prepared_dir), _absolute(d.cache_dir)
    for src in d.mixture:
        if src.hf_path is None:
            src.files = [_absolute(f) for f in src.files]
    if d.induction.bigram not in ("random", "shakespeare") and Path(d.induction.bigram).exists():
        d.induction.bigram = _absolute(d.induction.bigram)
    tasks = []
    for text in cfg.tasks:
        spec = parse_spec(text)
        if spec.arg and spec.kind in ("cloze", "choice") or (spec.kind == "lm-eval" and spec.arg
                                                             and spec.arg.endswith((".yaml", ".yml"))):
            text = text.replace(spec.arg, _absolute(spec.arg), 1)
        tasks.append(text)
    cfg.tasks = tasks
    return cfg
